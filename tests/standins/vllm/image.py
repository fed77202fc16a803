"""The STAND-IN vLLM image `gpufleet-standin/vllm-openai:0.11.0-standin`, built with no registry.

The real `vllm/vllm-openai` image needs a registry and a GPU; the lab has neither. This image
runs server.py (beside this file) on Debian 12's own Python, and nothing else:

1. `apt-get download` fetches a handful of bookworm packages (libc, Python 3.11 minimal and
   its stdlib, dash for `sh`, busybox for `cat`, `ls`, `wget`...) through a private apt
   configuration whose sources are the controller's own Debian entries (lab.mirror;
   `LAB_DEBIAN_MIRROR` overrides), so any controller with that mirror in its apt configuration
   can build it. Lists are kept under `.lab/standin-vllm/apt/`.
2. Each package's files are unpacked (`dpkg-deb --fsys-tarfile`, no maintainer scripts) into
   a usr-merged tree; docs, man pages and glibc's gconv modules are dropped.
3. The tree is streamed into `docker import` with an ENTRYPOINT running server.py, and labels
   `gpufleet.standin=vllm` and `gpufleet.standin.recipe=<hash>`. The hash covers the recipe
   below and server.py's bytes: `ensure_image` rebuilds only when it changes.
4. `python3 /opt/standin/server.py --help` runs in the new image before it is kept, proving
   every module the server imports is there.

No root is needed (no chroot, no debootstrap), only a Docker engine and Debian's apt tools.
No nvidia-smi is faked: on a real host the NVIDIA runtime injects it.

    python -m tests.standins.vllm.image   # build if needed, save the tarball, print both

The builder is shared: every function takes an optional `Recipe` (default: this vLLM
image's, read from the module's constants at each call), and the STAND-IN dcgm-exporter
image (tests/standins/dcgm/image.py) is the same build with its own recipe.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lab import LabError, lab_dir, repo_root
from lab.engine import docker, import_tree
from lab.mirror import read_apt_sources, render_image_sources, resolve_mirror

IMAGE = "gpufleet-standin/vllm-openai:0.11.0-standin"
STANDIN_LABEL = "gpufleet.standin"  # = "vllm" on this image
HASH_LABEL = f"{STANDIN_LABEL}.recipe"
PACKAGES_LABEL = f"{STANDIN_LABEL}.packages"
SERVER = Path(__file__).resolve().with_name("server.py")
SERVER_IN_IMAGE = "/opt/standin/server.py"
# STAND-IN huggingface_hub (the deploy's pre-fetch imports it, as in a real vLLM image)
HUB = Path(__file__).resolve().with_name("hub.py")
HUB_IN_IMAGE = "usr/lib/python3/dist-packages/huggingface_hub/__init__.py"
PORT = 8000
RECIPE_VERSION = 1  # bump when the build code changes in a way the data below does not show
WORK_DIR = "standin-vllm"  # under .lab/: apt lists and the saved tarball
TAR_PREFIX = "vllm-openai-standin-"
APT_TIMEOUT = 900
LOAD_TIMEOUT = 600

Log = Callable[[str], None]

# What `python3 /opt/standin/server.py` needs, dependencies resolved by hand (apt's full
# closure would add perl, tzdata, ncurses, sqlite...): the stdlib's optional C modules that
# need other libraries (_ssl, _sqlite3, _curses, ...) are present but unusable, and unused.
PACKAGES = (
    "libc6",
    "libgcc-s1",  # glibc loads it for pthread_exit (daemon threads at interpreter exit)
    "zlib1g",
    "libexpat1",
    "libpython3.11-minimal",
    "python3.11-minimal",
    "libpython3.11-stdlib",  # http.server, json, socketserver, hmac ...
    "python3-minimal",  # /usr/bin/python3
    "dash",  # /bin/sh, for `docker exec ... sh -c` in tests
    "busybox",  # the few commands below, for `docker exec` in tests and health checks
)
# Linked to busybox in /usr/bin (a real vLLM image has a full userland; tests need a few).
BUSYBOX_APPLETS = (
    *("cat", "ls", "head", "tail", "wc", "grep", "sed", "awk", "cut", "sort", "uniq", "tr"),
    *("env", "id", "ps", "kill", "sleep", "mkdir", "rm", "rmdir", "cp", "mv", "ln", "touch"),
    *("stat", "find", "du", "df", "test", "[", "true", "false", "echo", "printf", "pwd"),
    *("which", "wget", "nc", "hostname", "uname", "date", "tee", "xargs", "readlink"),
)
USRMERGE = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
PRUNED_GLOBS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/locale",
    "usr/lib/*/gconv",  # iconv charsets: Python has its own codecs
    "usr/lib/python3.11/pydoc_data",
)
FILES = {
    "etc/passwd": (0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"),
    "etc/group": (0o644, "root:x:0:\nnogroup:x:65534:\n"),
    "etc/nsswitch.conf": (0o644, "passwd: files\ngroup: files\nhosts: files dns\n"),
    # STAND-IN for vLLM's CLI: `vllm serve MODEL ...` runs the stand-in server, as the deploy
    # starts the real image (a /bin/sh wrapper loads the secrets file, then execs it).
    "usr/local/bin/vllm": (
        0o755,
        '#!/bin/sh\n# gpufleet STAND-IN for the vllm CLI\n[ "$1" = serve ] && shift\n'
        f'exec python3 {SERVER_IN_IMAGE} "$@"\n',
    ),
    "etc/gpufleet-standin": (
        0o644,
        "gpufleet STAND-IN for vllm/vllm-openai (not vLLM): built by tests/standins/vllm\n",
    ),
}
DIRS = {"tmp": 0o1777, "root": 0o700, "root/.cache/huggingface": 0o755, "opt/standin": 0o755}
IMAGE_CHANGES = (
    f'ENTRYPOINT ["python3", "{SERVER_IN_IMAGE}"]',
    f"EXPOSE {PORT}",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV PYTHONUNBUFFERED=1",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "ENV HF_HOME=/root/.cache/huggingface",
)


# --- recipe and cache ---------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one stand-in image built from Debian packages."""

    image: str  # the tag, e.g. gpufleet-standin/vllm-openai:0.11.0-standin
    standin: str  # the value of the gpufleet.standin label: vllm, dcgm
    server: Path  # the server script on the controller
    server_in_image: str  # ... and in the image
    work_dir: str  # under .lab/: apt lists and the saved tarball
    tar_prefix: str
    files: dict  # path in the image -> (mode, text)
    dirs: dict  # path in the image -> mode
    changes: tuple[str, ...]  # `docker import --change` lines, labels aside
    smoke_args: tuple[str, ...]  # run in the new image: must print smoke_expect
    smoke_expect: str
    version: int = RECIPE_VERSION
    packages: tuple[str, ...] = PACKAGES
    applets: tuple[str, ...] = BUSYBOX_APPLETS
    copies: dict = field(default_factory=dict)  # path in the image -> controller file


def vllm_recipe() -> Recipe:
    """This module's image, from its constants as they are now (tests patch SERVER)."""
    return Recipe(
        image=IMAGE,
        standin="vllm",
        server=SERVER,
        server_in_image=SERVER_IN_IMAGE,
        work_dir=WORK_DIR,
        tar_prefix=TAR_PREFIX,
        files=FILES,
        dirs=DIRS,
        changes=IMAGE_CHANGES,
        smoke_args=("--help",),
        smoke_expect="gpufleet stand-in",
        version=RECIPE_VERSION,
        packages=PACKAGES,
        applets=BUSYBOX_APPLETS,
        copies={HUB_IN_IMAGE: HUB},
    )


def recipe_hash(recipe: Recipe | None = None) -> str:
    """A hash of everything that defines the image, the server's (and copies') content
    included."""
    spec = recipe or vllm_recipe()
    material = {
        "version": spec.version,
        "packages": spec.packages,
        "usrmerge": USRMERGE,
        "pruned": PRUNED_GLOBS,
        "files": spec.files,
        "dirs": spec.dirs,
        "applets": spec.applets,
        "changes": spec.changes,
        "server": hashlib.sha256(spec.server.read_bytes()).hexdigest(),
    }
    if spec.copies:  # (the STAND-IN huggingface_hub in the vLLM image)
        material["copies"] = {
            dest: hashlib.sha256(Path(src).read_bytes()).hexdigest()
            for dest, src in sorted(spec.copies.items())
        }
    blob = json.dumps(material, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def current_image_id(recipe: Recipe | None = None) -> str | None:
    """The id of the recipe's image on the controller's engine when built from this recipe."""
    spec = recipe or vllm_recipe()
    proc = docker(
        "image", "inspect", spec.image, "--format", "{{.Id}} {{json .Config.Labels}}",
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    image_id, _, labels = proc.stdout.strip().partition(" ")
    try:
        current = (json.loads(labels) or {}).get(HASH_LABEL) == recipe_hash(spec)
    except json.JSONDecodeError:
        current = False
    return image_id if current else None


def work_dir(root: Path, recipe: Recipe | None = None) -> Path:
    """`.lab/standin-vllm/` (the recipe's): apt lists and the saved tarball (git-ignored)."""
    path = lab_dir(root) / (recipe or vllm_recipe()).work_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- apt ----------------------------------------------------------------------------------


def apt_options(apt_dir: Path) -> list[str]:
    """apt-get options for a private configuration under `apt_dir`: its own sources, lists,
    caches and an empty dpkg status (the controller's installed packages and pins play no
    part), while the controller's apt.conf.d (proxies) still applies."""
    settings = {
        "Dir::Etc::sourcelist": apt_dir / "sources.list",
        "Dir::Etc::sourceparts": apt_dir / "sources.list.d",
        "Dir::Etc::preferences": apt_dir / "preferences",
        "Dir::Etc::preferencesparts": apt_dir / "preferences.d",
        "Dir::State::lists": apt_dir / "lists",
        "Dir::State::status": apt_dir / "status",
        "Dir::Cache": apt_dir / "cache",
        "Acquire::Languages": "none",
        # Files are written where the sandbox user `_apt` may not reach (.lab is 0700).
        "APT::Sandbox::User": getpass.getuser(),
    }
    return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]


def prepare_apt(apt_dir: Path, mirror: str | None = None) -> str:
    """Write the private apt configuration: the controller's Debian bookworm entries (its
    mirror, or `mirror`/LAB_DEBIAN_MIRROR). Returns the mirror used."""
    sources = read_apt_sources()
    chosen = resolve_mirror(mirror, sources)
    for sub in ("sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    for empty in ("sources.list", "preferences", "status"):
        (apt_dir / empty).write_text("")
    text = render_image_sources(sources, chosen)
    (apt_dir / "sources.list.d" / "debian.sources").write_text(text)
    return chosen


def _apt(args: list[str], apt_dir: Path, log_path: Path, cwd: Path | None = None) -> None:
    """Run apt-get with the private configuration; LabError with the log's last line."""
    cmd = ["apt-get", "-q", *apt_options(apt_dir), *args]
    with open(log_path, "ab") as logfile:
        logfile.write(f"\n$ apt-get {' '.join(args)}\n".encode())
        logfile.flush()
        try:
            proc = subprocess.run(
                cmd, cwd=cwd, stdout=logfile, stderr=subprocess.STDOUT, timeout=APT_TIMEOUT
            )
        except FileNotFoundError:
            raise LabError("apt-get is missing: the stand-in image is built on Debian") from None
        except subprocess.TimeoutExpired:
            raise LabError(
                f"apt-get {args[0]} took over {APT_TIMEOUT}s (log: {log_path})"
            ) from None
    if proc.returncode != 0:
        lines = log_path.read_text(errors="replace").strip().splitlines()
        raise LabError(f"apt-get {args[0]} failed: {lines[-1] if lines else '?'} ({log_path})")


def download_packages(
    apt_dir: Path, dest: Path, log_path: Path, packages: tuple[str, ...] = PACKAGES
) -> list[Path]:
    """Update the private lists and download the packages' .deb files into `dest`."""
    _apt(["update"], apt_dir, log_path)
    _apt(["download", *packages], apt_dir, log_path, cwd=dest)
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != len(packages):
        raise LabError(f"apt-get download gave {len(debs)} files for {len(packages)} packages")
    return debs


def package_versions(debs: list[Path]) -> str:
    """`name=version,...` from .deb file names (for the packages label)."""
    pairs = []
    for deb in debs:
        name, version, _ = deb.name.split("_", 2)
        pairs.append(f"{name}={version.replace('%3a', ':')}")
    return ",".join(pairs)


# --- root filesystem ----------------------------------------------------------------------


def unpack(debs: list[Path], rootfs: Path) -> None:
    """Unpack each package's files (no maintainer scripts) into a usr-merged tree."""
    for link, target in USRMERGE.items():
        (rootfs / target).mkdir(parents=True, exist_ok=True)
        (rootfs / link).symlink_to(target)
    for deb in debs:
        fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        untar = subprocess.run(
            ["tar", "-x", "--keep-directory-symlink", "--no-same-owner", "-C", str(rootfs)],
            stdin=fsys.stdout,
            capture_output=True,
            check=False,
        )
        fsys.stdout.close()
        if fsys.wait() != 0 or untar.returncode != 0:
            why = untar.stderr.decode(errors="replace").strip()[-200:]
            raise LabError(f"unpacking {deb.name} failed: {why or 'dpkg-deb failed'}")


def configure_rootfs(rootfs: Path, recipe: Recipe | None = None) -> None:
    """Prune what a server never reads, add the recipe's files, copies and server."""
    spec = recipe or vllm_recipe()
    for pattern in PRUNED_GLOBS:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for rel, mode in spec.dirs.items():
        (rootfs / rel).mkdir(parents=True, exist_ok=True)
        (rootfs / rel).chmod(mode)
    for rel, (mode, content) in spec.files.items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
    for rel, source in spec.copies.items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        path.chmod(0o644)
    for applet in spec.applets:
        link = rootfs / "usr/bin" / applet
        if not (link.exists() or link.is_symlink()):
            link.symlink_to("busybox")
    server = rootfs / spec.server_in_image.lstrip("/")
    server.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec.server, server)
    server.chmod(0o755)


def import_rootfs(rootfs: Path, packages: str, recipe: Recipe | None = None) -> str:
    """`docker import` the tree as the image (owned by root whoever built it); the new id."""
    spec = recipe or vllm_recipe()
    labels = (
        f"LABEL {STANDIN_LABEL}={spec.standin} {HASH_LABEL}={recipe_hash(spec)} "
        f"{PACKAGES_LABEL}={packages}"
    )
    changes = [f"--change={change}" for change in (*spec.changes, labels)]
    proc, tar_status = import_tree(rootfs, changes, spec.image, ("--owner=0", "--group=0"))
    if tar_status != 0 or proc.returncode != 0:
        raise LabError(f"docker import failed: {proc.stderr.strip()[-300:] or 'tar failed'}")
    return proc.stdout.strip()


def smoke_test(image_id: str, recipe: Recipe | None = None) -> None:
    """Run the server's --help in the new image: every module it imports must load."""
    spec = recipe or vllm_recipe()
    proc = docker(
        "run", "--rm", "--network=none", image_id, *spec.smoke_args, check=False, timeout=120
    )  # fmt: skip
    if proc.returncode != 0 or spec.smoke_expect not in proc.stdout:
        docker("image", "rm", "-f", image_id, check=False)
        why = (proc.stderr or proc.stdout).strip()[-300:]
        raise LabError(f"the stand-in image does not start its server: {why}")


# --- build --------------------------------------------------------------------------------


def build_image(
    root: Path, mirror: str | None = None, log: Log = print, recipe: Recipe | None = None
) -> str:
    """Build the image from Debian packages; returns its id. Logs to .lab/<work>/build.log."""
    spec = recipe or vllm_recipe()
    started = time.monotonic()
    work = work_dir(root, spec)
    log_path = work / "build.log"
    log_path.write_text("")
    chosen = prepare_apt(work / "apt", mirror)
    log(f"building {spec.image} from Debian packages ({chosen}; log: {log_path})...")
    tmp = Path(tempfile.mkdtemp(prefix=f"gpufleet-standin-{spec.standin}-", dir="/var/tmp"))
    try:
        (tmp / "debs").mkdir()
        debs = download_packages(work / "apt", tmp / "debs", log_path, spec.packages)
        unpack(debs, tmp / "rootfs")
        configure_rootfs(tmp / "rootfs", spec)
        image_id = import_rootfs(tmp / "rootfs", package_versions(debs), spec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    smoke_test(image_id, spec)
    size = image_size(image_id) / 1e6
    log(f"built {spec.image} ({size:.1f} MB) in {time.monotonic() - started:.0f}s")
    return image_id


def image_size(image: str = IMAGE) -> int:
    """The image's uncompressed size in bytes, as the engine reports it (0 if unknown)."""
    proc = docker("image", "inspect", image, "--format", "{{.Size}}", check=False)
    return int(proc.stdout.strip()) if proc.stdout.strip().isdigit() else 0


def any_image_id(recipe: Recipe | None = None) -> str | None:
    """The id of whatever image is tagged as the recipe's now (any recipe)."""
    spec = recipe or vllm_recipe()
    proc = docker("image", "inspect", spec.image, "--format", "{{.Id}}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_image(
    root: Path, rebuild: bool = False, log: Log = print, recipe: Recipe | None = None
) -> str:
    """The image's id on the controller's engine, building it first unless the current
    recipe's image is already there. A replaced image is removed (unless a container still
    uses it)."""
    spec = recipe or vllm_recipe()
    image_id = None if rebuild else current_image_id(spec)
    if image_id:
        return image_id
    previous = any_image_id(spec)
    image_id = build_image(root, log=log, recipe=spec)
    if previous and previous != image_id:
        docker("image", "rm", previous, check=False)
    return image_id


# --- tarball and lab hosts ----------------------------------------------------------------


def _member_json(archive: tarfile.TarFile, name: str) -> object:
    """A JSON member of a tarball; None when it is not there."""
    try:
        member = archive.extractfile(name)
    except KeyError:
        return None
    return json.load(member) if member is not None else None


def tar_identity(tar: Path) -> tuple[set[str], dict[str, str]]:
    """What a `docker save` tarball holds: the ids an engine may give the image after
    `docker load` (the config digest; with the OCI layout also the index.json digests, which
    containerd-backed engines use as .Id) and the image's labels."""
    with tarfile.open(tar) as archive:
        manifest = _member_json(archive, "manifest.json")
        if not manifest:
            raise LabError(f"{tar} has no manifest.json: not a docker save tarball")
        config_path = manifest[0]["Config"]
        config = _member_json(archive, config_path) or {}
        index = _member_json(archive, "index.json") or {}
    ids = {"sha256:" + Path(config_path).name.removesuffix(".json")}
    ids |= {m["digest"] for m in index.get("manifests", []) if "digest" in m}
    labels = (config.get("config") or {}).get("Labels") or {}
    return ids, labels


def same_image(remote: tuple[str, dict] | None, ids: set[str], labels: dict) -> bool:
    """Whether the remote image is the tarball's: the same id, or (an engine that assigns its
    own ids) the same recipe and package versions."""
    if remote is None:
        return False
    remote_id, remote_labels = remote
    if remote_id in ids:
        return True
    keys = (HASH_LABEL, PACKAGES_LABEL)
    return all(labels.get(k) and remote_labels.get(k) == labels.get(k) for k in keys)


def save_tar(root: Path, log: Log = print, recipe: Recipe | None = None) -> Path:
    """A `docker save` tarball of the current image under .lab/<work>/, named after its id
    so it is reused while the image stays the same; older ones are removed."""
    spec = recipe or vllm_recipe()
    image_id = ensure_image(root, log=log, recipe=spec)
    work = work_dir(root, spec)
    tar = work / f"{spec.tar_prefix}{image_id.removeprefix('sha256:')[:16]}.tar"
    if not tar.exists():
        tmp = tar.with_name(f".{tar.name}.tmp")
        docker("save", "-o", str(tmp), spec.image, timeout=LOAD_TIMEOUT)
        os.replace(tmp, tar)
        log(f"saved {spec.image} to {tar}")
    for old in work.glob(f"{spec.tar_prefix}*.tar"):
        if old != tar:
            old.unlink()
    return tar


def remote_image(ssh_argv: list[str], image: str = IMAGE) -> tuple[str, dict] | None:
    """The image's id and labels on the engine at the end of `ssh_argv`; None if absent."""
    fmt = "{{.Id}} {{json .Config.Labels}}"
    command = shlex.join(["docker", "image", "inspect", "--format", fmt, image])
    proc = subprocess.run(
        [*ssh_argv, command], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    image_id, _, labels = proc.stdout.strip().partition(" ")
    try:
        return image_id, json.loads(labels) or {}
    except json.JSONDecodeError:
        return image_id, {}


def load_into(ssh_argv: list[str], tar: Path, log: Log = print, image: str = IMAGE) -> None:
    """Pipe `tar` into `docker load` on a lab host, unless its engine already has that image.

    `ssh_argv` is a complete ssh command line but for the remote command, which is appended
    (e.g. `ssh -i KEY -p PORT -o UserKnownHostsFile=... root@127.0.0.1`)."""
    ids, labels = tar_identity(tar)
    if same_image(remote_image(ssh_argv, image), ids, labels):
        return
    with open(tar, "rb") as stream:
        proc = subprocess.run(
            [*ssh_argv, "docker load"],
            stdin=stream,
            capture_output=True,
            text=True,
            timeout=LOAD_TIMEOUT,
            check=False,
        )
    if proc.returncode != 0:
        raise LabError(f"docker load over ssh failed: {proc.stderr.strip()[-300:] or '?'}")
    remote = remote_image(ssh_argv, image)
    if not same_image(remote, ids, labels):
        raise LabError(f"after docker load the host's {image} is {remote and remote[0]}")
    log(f"loaded {image} ({remote[0][:19]})")


def main() -> int:
    """Build (if needed) and save the image; print its id, size and tarball."""
    try:
        root = repo_root()
        image_id = ensure_image(root)
        tar = save_tar(root)
    except LabError as exc:
        print(f"error: {exc}")
        return 1
    print(f"{IMAGE} {image_id} {image_size(image_id) / 1e6:.1f} MB\n{tar}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
