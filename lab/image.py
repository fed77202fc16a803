"""The lab host image `gpufleet-lab:debian12`, built from scratch (no registry needed).

`debootstrap --variant=minbase` makes a Debian 12 root filesystem from the controller's own
mirror, a few files make systemd and sshd behave in a container, and the tree is streamed
into `docker import`. The image carries a label with a hash of the recipe below: `up` only
builds when no image with the current hash exists, so changing the recipe forces a rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from lab import IMAGE, LABEL, SUITE, LabError, lab_dir
from lab.engine import Log, docker, import_tree
from lab.mirror import ARCHIVE_KEYRING, read_apt_sources, render_image_sources, resolve_mirror

RECIPE_VERSION = 1  # bump when build code changes in a way the data below does not show
HASH_LABEL = f"{LABEL}.recipe"
MIRROR_LABEL = f"{LABEL}.mirror"
BUILD_LOG = "image-build.log"  # under .lab/
DEBOOTSTRAP_TIMEOUT = 1800

PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",  # logind sessions for SSH logins, like a real server
    "openssh-server",
    "python3",  # pyinfra facts and operations use it
    "ca-certificates",
    "curl",
    "gnupg",
    "iproute2",
    "iputils-ping",
    "netbase",
    "procps",
    "kmod",
    "pciutils",
    "sudo",
    "lsb-release",
    "less",
)

# Units that have nothing to do in a container, or that would get in a deploy's way.
MASKED_UNITS = (
    "getty.target",  # no consoles to log in on
    "console-getty.service",
    "systemd-remount-fs.service",  # / is the container's overlay: nothing to remount
    "sys-kernel-config.mount",  # kernel pseudo filesystems belong to the real host
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-pstore.service",
    "apt-daily.timer",  # no background apt holding the dpkg lock during a deploy
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",  # no file systems of its own to scrub or trim
    "e2scrub_reap.service",
    "fstrim.timer",
)

SSHD_DROPIN = """\
# gpufleet lab: key-only root login. The host key is put in by `python -m lab up`
# (one per host, pinned in the controller's .lab/known_hosts).
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
"""

# Safety net for a container started without `python -m lab up`: it gets a fresh host key
# instead of an sshd that cannot start. Lab hosts already have theirs, so this is skipped.
HOSTKEY_UNIT = """\
[Unit]
Description=Generate an SSH host key when none was provided (gpufleet lab)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
"""

# path in the image -> (mode, content)
FILES = {
    "etc/ssh/sshd_config.d/gpufleet-lab.conf": (0o644, SSHD_DROPIN),
    "etc/systemd/system/gpufleet-lab-ssh-hostkey.service": (0o644, HOSTKEY_UNIT),
    # Empty: systemd gives every container its own machine id at boot.
    "etc/machine-id": (0o444, ""),
    # Docker bind-mounts its own; do not leak the build machine's.
    "etc/resolv.conf": (0o644, ""),
    "etc/hostname": (0o644, "localhost\n"),
}
SYMLINKS = {
    "var/lib/dbus/machine-id": "/etc/machine-id",
    "etc/systemd/system/multi-user.target.wants/gpufleet-lab-ssh-hostkey.service": (
        "/etc/systemd/system/gpufleet-lab-ssh-hostkey.service"
    ),
    **{f"etc/systemd/system/{unit}": "/dev/null" for unit in MASKED_UNITS},
}
# debootstrap's leftovers: its one-line sources (replaced by deb822 debian.sources), the
# build machine's SSH host keys (every host gets its own), downloaded packages.
REMOVED_GLOBS = (
    "etc/apt/sources.list",
    "etc/ssh/ssh_host_*",
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
    "var/log/*.log",
    "var/log/apt/*",
)
IMAGE_CHANGES = ('CMD ["/sbin/init"]', "ENV container=docker")
STOP_SIGNAL = "SIGRTMIN+3"  # what systemd takes as "shut down cleanly"


def recipe_hash() -> str:
    """A hash of everything that defines the image; its label says which recipe built it."""
    recipe = {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "packages": PACKAGES,
        "files": FILES,
        "symlinks": SYMLINKS,
        "removed": REMOVED_GLOBS,
        "changes": IMAGE_CHANGES,
        "stop_signal": STOP_SIGNAL,
    }
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def image_labels(image: str = IMAGE) -> dict[str, str] | None:
    """The labels of `image`, or None when the engine has no such image."""
    proc = docker("image", "inspect", image, "--format", "{{json .Config.Labels}}", check=False)
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout.strip() or "null") or {}
    except json.JSONDecodeError:
        return {}


def image_is_current(labels: dict[str, str] | None) -> bool:
    return labels is not None and labels.get(HASH_LABEL) == recipe_hash()


def image_id(image: str = IMAGE) -> str | None:
    proc = docker("image", "inspect", image, "--format", "{{.Id}}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def remove_leftovers(rootfs: Path) -> None:
    for pattern in REMOVED_GLOBS:
        for path in rootfs.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()


def configure_rootfs(rootfs: Path, sources: str) -> None:
    """Apply the recipe's files, links and removals to a debootstrapped tree."""
    remove_leftovers(rootfs)
    files = dict(FILES)
    files["etc/apt/sources.list.d/debian.sources"] = (0o644, sources)
    for rel, (mode, content) in files.items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_text(content)
        path.chmod(mode)
    for rel, target in SYMLINKS.items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)
    # Units that debootstrap enabled but we mask: drop their now-dangling wants links.
    for unit in MASKED_UNITS:
        for link in rootfs.glob(f"etc/systemd/system/*.wants/{unit}"):
            link.unlink()
    for home in (rootfs / "root", rootfs / "root/.ssh"):
        home.mkdir(mode=0o700, exist_ok=True)
        home.chmod(0o700)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1] for line in lines if len(line.split()) > 1]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


def _remove_workdir(workdir: Path) -> None:
    """Remove the build tree, but never across a mount left behind (e.g. /proc after a
    failed debootstrap): unmount first, and keep the tree if that fails."""
    for point in _mounts_under(workdir):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if _mounts_under(workdir):
        return
    shutil.rmtree(workdir, ignore_errors=True)


def _debootstrap(rootfs: Path, mirror: str, log_path: Path) -> None:
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
    if Path(ARCHIVE_KEYRING).exists():
        cmd.append(f"--keyring={ARCHIVE_KEYRING}")
    cmd += [SUITE, str(rootfs), mirror]
    with open(log_path, "ab") as logfile:
        logfile.write(f"\n$ {' '.join(cmd)}\n".encode())
        logfile.flush()
        try:
            proc = subprocess.run(
                cmd, stdout=logfile, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            raise LabError(
                f"debootstrap did not finish within {DEBOOTSTRAP_TIMEOUT}s (log: {log_path})"
            ) from None
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
        why = tail[0] if tail else f"exit status {proc.returncode}"
        raise LabError(f"debootstrap from {mirror} failed: {why} (log: {log_path})")


def _fill_apt_lists(rootfs: Path, log_path: Path, log: Log) -> None:
    """Keep fresh apt lists in the image (~50 MB) rather than cleaning them: `apt-get install`
    works on a new host before any `apt-get update`, and an offline-ish lab can still install
    what its lists name."""
    with contextlib.suppress(OSError):  # without it, a mirror given by address still works
        shutil.copyfile("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with open(log_path, "ab") as logfile:
        proc = subprocess.run(
            ["chroot", str(rootfs), "apt-get", "update"],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=600,
            check=False,
        )
    (rootfs / "etc/resolv.conf").write_text("")
    remove_leftovers(rootfs)  # apt's binary caches are rebuilt on the host when needed
    if proc.returncode != 0:
        log(f"  warning: apt-get update in the image failed (see {log_path}); continuing")


def _import(rootfs: Path, mirror: str) -> None:
    labels = f'LABEL {LABEL}=1 {HASH_LABEL}={recipe_hash()} {MIRROR_LABEL}="{mirror}"'
    base = [f"--change={change}" for change in (*IMAGE_CHANGES, labels)]
    # Newer engines take STOPSIGNAL at import; older ones refuse it (hosts are also created
    # with --stop-signal, so the image works either way).
    for changes in ([*base, f"--change=STOPSIGNAL {STOP_SIGNAL}"], base):
        proc, _ = import_tree(rootfs, changes, IMAGE)
        if proc.returncode == 0:
            return
        if "stopsignal" not in proc.stderr.lower():
            break
    raise LabError(f"docker import failed: {proc.stderr.strip().splitlines()[-1:] or '?'}")


def build_image(root: Path, mirror: str | None = None, log: Log = print) -> None:
    """Build (or rebuild) the image: debootstrap, configure, docker import."""
    if os.geteuid() != 0:
        raise LabError("building the lab image needs root (debootstrap): run it with sudo")
    if shutil.which("debootstrap") is None:
        raise LabError("debootstrap is missing: apt-get install debootstrap")
    sources = read_apt_sources()
    mirror = resolve_mirror(mirror, sources)
    image_sources = render_image_sources(sources, mirror)
    state_dir = lab_dir(root)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / BUILD_LOG
    log_path.write_text("")
    workdir = Path(tempfile.mkdtemp(prefix="gpufleet-lab-image-", dir="/var/tmp"))
    rootfs = workdir / "rootfs"
    try:
        started = time.monotonic()
        log(f"building {IMAGE}: debootstrap {SUITE} from {mirror} (log: {log_path})...")
        _debootstrap(rootfs, mirror, log_path)
        log(f"  debootstrap done in {time.monotonic() - started:.0f}s")
        configure_rootfs(rootfs, image_sources)
        step = time.monotonic()
        _fill_apt_lists(rootfs, log_path, log)
        log(f"  apt lists in {time.monotonic() - step:.0f}s")
        step = time.monotonic()
        _import(rootfs, mirror)
        log(f"  docker import in {time.monotonic() - step:.0f}s")
    finally:
        _remove_workdir(workdir)
    log(f"built {IMAGE} in {time.monotonic() - started:.0f}s")


def ensure_image(
    root: Path, rebuild: bool = False, mirror: str | None = None, log: Log = print
) -> bool:
    """Build the image unless one with the current recipe hash exists. True if it built."""
    if not rebuild and image_is_current(image_labels()):
        return False
    build_image(root, mirror, log)
    return True
