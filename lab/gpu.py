"""The lab's GPU-shaped host, a STAND-IN (never a real fleet): a lab container that looks
like the H100 host recorded in issue 16 (variant ``h100``) or an 8-GPU HGX with NVSwitches
(``hgx8``) to every fact gpufleet reads, driven by the JSON description of
tests/standins/gpu (its README gives the shape):

- PCI ids: a read-only tree bind-mounted over ``/sys/bus/pci/devices`` (vendor, class and
  device of each GPU and NVSwitch);
- the loaded module: a read-only tree over ``/sys/module`` (``nvidia/version`` only: no
  nouveau), and ``/proc/driver/nvidia/version``, bind-mounted over ``/proc/driver`` at boot
  by the unit ``gpufleet-standin.service`` (Docker refuses mounts inside /proc);
- NVML: the STAND-IN ``libnvidia-ml.so.<driver>`` (+ ``.so.1``) under /usr/local/nvidia/lib64,
  found through /etc/ld.so.conf.d and ldconfig, as on the recorded cloud image (installed
  outside the package manager);
- the STAND-IN ``nvidia-smi`` (/usr/local/nvidia/bin, linked from /usr/local/bin) and
  ``dmesg`` (/usr/local/bin, ahead of util-linux's on PATH: the container shares the real
  machine's kernel, whose log it must not show, and nothing may write to the real /dev/kmsg);
- the description itself at /etc/gpufleet-standin/gpus.json, which the library, nvidia-smi
  and dmesg read at every start: most faults are injected by rewriting that file (over SSH or
  docker exec). ``inject`` does it and also follows the derived state (the sysfs and /proc
  trees, the library's versioned name), which only ``driver_branch`` changes.

The hosts sit beside lab-1..N without touching them: containers ``gpufleet-lab-gpu-<variant>``
(a name ``lab up``'s listing never matches), SSH on 127.0.0.1 from port 3221, the lab's
controller key, their own host keys, known_hosts and state under ``.lab/gpu/``.

    host = ensure_gpu_host("h100")          # GpuHost: name, port, ssh_key, known_hosts...
    inject("h100", "pcie_x8"); heal("h100")
    python -m lab gpu up h100 | python -m lab gpu fault h100 pcie_x8 | python -m lab gpu down

Callers serialize with the other lab users (``flock /tmp/gpufleet-lab.lock``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import LABEL, LabError, lab_dir, repo_root
from lab.engine import Log, cgroup_version, docker, ensure_engine, ip_of
from lab.hosts import KEYS_LABEL, container_args, pick_port, port_is_free
from lab.image import ensure_image
from lab.keys import (
    CONTROLLER_KEY,
    ensure_keypair,
    injection_tar,
    known_hosts_line,
    public_key,
    ssh_command,
    write_known_hosts,
)
from lab.ready import Paths, probe

VARIANTS = ("h100", "hgx8")
PORT_BASE = 3221
PORT_SPAN = 100
RECIPE_VERSION = 1  # bump when the container's mounts or payload layout change
VARIANT_LABEL = f"{LABEL}.gpu"
RECIPE_LABEL = f"{LABEL}.gpu-recipe"
READY_TIMEOUT = 90.0

STANDIN_ETC = "etc/gpufleet-standin"
DESCRIPTION = f"/{STANDIN_ETC}/gpus.json"
NVIDIA_DIR = "usr/local/nvidia"
LIB_DIR = f"{NVIDIA_DIR}/lib64"
PROC_SOURCE = "/opt/gpufleet-standin/proc-driver"  # docker's read-only mount, moved at boot
UNIT = "gpufleet-standin.service"

LD_CONF = f"""\
# gpufleet lab STAND-IN GPU host (lab/gpu.py), never on a real fleet: the stand-in NVML,
# installed outside the package manager as on the recorded cloud image.
/{LIB_DIR}
"""
README = """\
gpufleet lab STAND-IN GPU host (lab/gpu.py), never on a real fleet.
gpus.json describes the GPUs that the stand-in libnvidia-ml.so.1, nvidia-smi and dmesg
report (shape: tests/standins/gpu/README.md in the gpufleet checkout). Rewrite it to
inject a fault; /sys/bus/pci/devices, /sys/module and /proc/driver are read-only trees
kept by the controller (.lab/gpu/<variant>/).
"""
UNIT_TEXT = f"""\
[Unit]
Description=gpufleet lab STAND-IN GPU host: /proc/driver/nvidia and the NVML library cache
DefaultDependencies=no
After=local-fs.target
Before=ssh.service multi-user.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount --bind {PROC_SOURCE} /proc/driver
ExecStart=/bin/mount -o remount,bind,ro /proc/driver
ExecStart=/sbin/ldconfig

[Install]
WantedBy=multi-user.target
"""
# On NVSwitch systems (hgx8) the image ships NVIDIA's fabric manager as a unit, installed but
# not enabled: the deploy enables it (driver_fabric_manager = auto). The STAND-IN only sleeps.
FABRIC_MANAGER = "nvidia-fabricmanager.service"
FABRIC_MANAGER_TEXT = """\
[Unit]
Description=gpufleet lab STAND-IN NVIDIA Fabric Manager (sleeps; never on a real fleet)

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""
NVSWITCH_CLASS = "0x068000"


def has_nvswitches(description: dict[str, Any]) -> bool:
    return any(d.get("class") == NVSWITCH_CLASS for d in description.get("pci_devices", []))


# Removes NVML libraries of another version than the one just copied, then refreshes the
# loader's cache ($1: that library's file name).
RELINK_SH = (
    f'cd /{LIB_DIR} && for f in libnvidia-ml.so.*.*; do [ "$f" = "$1" ] || rm -f "$f"; done '
    '&& ln -sf "$1" libnvidia-ml.so.1 && ldconfig'
)


def _standin():
    """tests/standins/gpu (the lab runs from a checkout, which has tests/)."""
    try:
        from tests.standins import gpu
        from tests.standins.gpu import build
    except ImportError as exc:
        raise LabError(f"cannot load the STAND-IN GPUs (tests/standins/gpu): {exc}") from None
    return gpu, build


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise LabError(f"no GPU lab host {variant!r}: one of {', '.join(VARIANTS)}")


def host_name(variant: str) -> str:
    return f"lab-gpu-{variant}"


def container_name(variant: str) -> str:
    return f"gpufleet-lab-gpu-{variant}"


def volume_name(variant: str) -> str:
    return f"gpufleet-lab-gpu-{variant}-docker"


def gpu_dir(root: Path) -> Path:
    return lab_dir(root) / "gpu"


def tree_dir(root: Path, variant: str) -> Path:
    """The controller-side trees the container mounts: sys/bus/pci/devices, sys/module,
    proc/driver."""
    return gpu_dir(root) / variant


def state_path(root: Path) -> Path:
    return gpu_dir(root) / "state.json"


def known_hosts_path(root: Path) -> Path:
    return gpu_dir(root) / "known_hosts"


def hostkey_path(root: Path, variant: str) -> Path:
    return gpu_dir(root) / "hostkeys" / host_name(variant)


@dataclass(frozen=True)
class GpuHost:
    """A running GPU lab host and how to reach it over SSH."""

    variant: str
    name: str
    container: str
    port: int
    address: str  # on the Docker bridge
    ssh_key: Path
    known_hosts: Path

    def ssh(self, command: str) -> list[str]:
        """The ssh command line running ``command`` on the host (host key checked)."""
        return ssh_command(self.ssh_key, self.known_hosts, self.port, command)


# --- the description and what derives from it


def _write_file(path: Path, text: str, mode: int = 0o444) -> None:
    """Atomically, in place: the directories stay (they are bind-mounted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.chmod(partial, mode)
    os.replace(partial, path)


def write_tree(root: Path, variant: str, description: dict[str, Any]) -> Path:
    """The sysfs and /proc files of ``description`` under tree_dir: PCI devices no longer
    described are removed, the mounted directories themselves are never replaced."""
    gpu, _build = _standin()
    base = tree_dir(root, variant)
    files = gpu.sysfs_files(description)
    devices = base / "sys" / "bus" / "pci" / "devices"
    devices.mkdir(parents=True, exist_ok=True)
    wanted = {Path(path).parts[3] for path in files if path.startswith("bus/pci/devices/")}
    for stale in devices.iterdir():
        if stale.name not in wanted:
            shutil.rmtree(stale)
    for path, text in files.items():
        _write_file(base / "sys" / path, text)
    _write_file(base / "proc" / "driver" / "nvidia" / "version", gpu.proc_version(description))
    return base


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644,
         link: str | None = None, directory: bool = False) -> None:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.mtime = int(time.time())
    if directory:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif link is not None:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
    else:
        info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data) if not directory and link is None else None)


def library_name(description: dict[str, Any]) -> str:
    """The versioned file name a driver installs NVML as: libnvidia-ml.so.<driver>."""
    return f"libnvidia-ml.so.{description['driver']}"


def payload(library: Path, description: dict[str, Any]) -> bytes:
    """The tar (for ``docker cp - CONTAINER:/``) of the stand-ins, their description and the
    unit that mounts /proc/driver at boot."""
    gpu, _build = _standin()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("etc", "etc/ld.so.conf.d", "etc/systemd", "etc/systemd/system",
                          "etc/systemd/system/multi-user.target.wants", STANDIN_ETC, "opt",
                          "opt/gpufleet-standin", "usr", "usr/local",
                          "usr/local/bin", NVIDIA_DIR, f"{NVIDIA_DIR}/bin", LIB_DIR):  # fmt: skip
            _add(tar, directory, directory=True)
        name = library_name(description)
        _add(tar, f"{LIB_DIR}/{name}", library.read_bytes(), 0o755)
        _add(tar, f"{LIB_DIR}/libnvidia-ml.so.1", link=name)
        _add(tar, f"{NVIDIA_DIR}/bin/nvidia-smi", gpu.NVIDIA_SMI.read_bytes(), 0o755)
        _add(tar, "usr/local/bin/nvidia-smi", link=f"/{NVIDIA_DIR}/bin/nvidia-smi")
        _add(tar, "usr/local/bin/dmesg", gpu.DMESG.read_bytes(), 0o755)
        _add(tar, "etc/ld.so.conf.d/gpufleet-standin-nvidia.conf", LD_CONF.encode())
        _add(tar, f"{STANDIN_ETC}/gpus.json", gpu.dumps(description).encode())
        _add(tar, f"{STANDIN_ETC}/README", README.encode())
        _add(tar, f"etc/systemd/system/{UNIT}", UNIT_TEXT.encode())
        _add(tar, f"etc/systemd/system/multi-user.target.wants/{UNIT}",
             link=f"/etc/systemd/system/{UNIT}")  # fmt: skip
        if has_nvswitches(description):
            _add(tar, f"etc/systemd/system/{FABRIC_MANAGER}", FABRIC_MANAGER_TEXT.encode())
    return buffer.getvalue()


def _library(root: Path) -> Path:
    _gpu, build = _standin()
    try:
        return build.build_library(gpu_dir(root) / "lib")
    except build.BuildError as exc:
        raise LabError(str(exc).splitlines()[0]) from None


def apply(variant: str, description: dict[str, Any], root: Path | None = None) -> None:
    """Make the running GPU host ``variant`` show ``description``: the trees it mounts, its
    gpus.json, and the library under its driver's version."""
    _check_variant(variant)
    root = Path(root or repo_root())
    write_tree(root, variant, description)
    name = container_name(variant)
    docker("cp", "-", f"{name}:/", input=payload(_library(root), description), text=False)
    docker("exec", name, "sh", "-c", RELINK_SH, "sh", library_name(description))
    if has_nvswitches(description):  # a unit file systemd may not have read yet
        docker("exec", name, "sh", "-c", "systemctl daemon-reload 2>/dev/null || true")


def inject(variant: str, fault: str | None, root: Path | None = None, gpu: int = -1) -> dict:
    """Put one fault of tests/standins/gpu's FAULTS on the host (None: healthy); returns the
    description it now shows."""
    standin, _build = _standin()
    description = standin.load(variant)
    if fault is not None:
        try:
            description = standin.with_fault(description, fault, gpu)
        except ValueError as exc:
            raise LabError(str(exc)) from None
    apply(variant, description, root)
    return description


def heal(variant: str, root: Path | None = None) -> dict:
    """The host healthy again (its shipped description)."""
    return inject(variant, None, root)


# --- the containers


def _recipe(mounts: list[str], keys: str) -> str:
    material = json.dumps([RECIPE_VERSION, mounts, keys, UNIT_TEXT, LD_CONF])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def mounts(root: Path, variant: str) -> list[str]:
    """The read-only bind mounts: over /sys/bus/pci/devices and /sys/module (Docker allows
    mounts over existing sysfs directories, not new ones such as /sys/module/nvidia), and the
    /proc/driver tree beside /proc (Docker refuses mounts inside /proc)."""
    base = tree_dir(root, variant)
    return [
        "-v", f"{base}/sys/bus/pci/devices:/sys/bus/pci/devices:ro",
        "-v", f"{base}/sys/module:/sys/module:ro",
        "-v", f"{base}/proc/driver:{PROC_SOURCE}:ro",
    ]  # fmt: skip


def _inspect(name: str) -> dict | None:
    done = docker("inspect", "--type", "container", name, check=False)
    if done.returncode != 0:
        return None
    found = json.loads(done.stdout or "[]")
    return found[0] if found else None


def load_gpu_state(root: Path) -> dict[str, Any] | None:
    """.lab/gpu/state.json: {"hosts": [{name, container, port, variant, address}],
    "ssh_key", "known_hosts"}, or None when no GPU host was brought up."""
    try:
        data = json.loads(state_path(root).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        why = f"{state_path(root)} is damaged ({exc}): run `python -m lab gpu down`"
        raise LabError(why) from None
    from lab.state import validate_state

    return validate_state(data, str(state_path(root)))


def _save_state(root: Path, hosts: list[dict[str, Any]]) -> None:
    key = lab_dir(root) / CONTROLLER_KEY
    state = {
        "hosts": sorted(hosts, key=lambda h: h["name"]),
        "ssh_key": str(key.resolve()),
        "known_hosts": str(known_hosts_path(root).resolve()),
    }
    lines = [
        known_hosts_line(h["port"], public_key(hostkey_path(root, h["variant"])))
        for h in state["hosts"]
    ]
    write_known_hosts(known_hosts_path(root), lines)
    partial = state_path(root).with_name("state.json.partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, state_path(root))


def _create(root: Path, variant: str, port: int, extra: list[str], keys: str,
            library: Path, description: dict[str, Any]) -> None:  # fmt: skip
    name = container_name(variant)
    docker("rm", "-f", name, check=False)
    # a host made afresh starts with no Docker data: an old volume would bring back containers
    # that mount files this host's /etc no longer has
    docker("volume", "rm", "-f", volume_name(variant), check=False)
    docker("volume", "create", "--label", f"{LABEL}=1", volume_name(variant))
    docker(*container_args(name, host_name(variant), volume_name(variant), port,
                           cgroup_version(), keys=keys, extra=tuple(extra)))  # fmt: skip
    hostkey = hostkey_path(root, variant)
    authorized = public_key(lab_dir(root) / CONTROLLER_KEY) + " gpufleet-lab\n"
    keys_tar = injection_tar(hostkey.read_bytes(), Path(f"{hostkey}.pub").read_bytes(),
                             authorized.encode())  # fmt: skip
    docker("cp", "-", f"{name}:/", input=keys_tar, text=False)
    docker("cp", "-", f"{name}:/", input=payload(library, description), text=False)
    started = docker("start", name, check=False)
    if started.returncode != 0:
        docker("rm", "-f", name, check=False)
        raise LabError(f"cannot start {name}: {started.stderr.strip().splitlines()[-1:]}")


def _wait_ready(root: Path, port: int, name: str, timeout: float = READY_TIMEOUT) -> str:
    paths = Paths(lab_dir(root) / CONTROLLER_KEY, known_hosts_path(root), gpu_dir(root))
    deadline = time.monotonic() + timeout
    why = "?"
    while time.monotonic() < deadline:
        ok, out, err = probe(paths, port)
        state = out.splitlines()[-1] if out else ""
        if ok and state in ("running", "degraded"):
            return state
        why = f"systemd is {state or '?'}" if ok else err
        time.sleep(1.0)
    raise LabError(f"{name} not ready after {timeout:.0f}s: {why}; see `docker logs {name}`")


def ensure_gpu_host(variant: str, root: Path | None = None, log: Log = print) -> GpuHost:
    """The GPU lab host ``variant`` running, healthy and answering SSH (created, recreated
    when its mounts or keys changed, or started as needed). Idempotent."""
    _check_variant(variant)
    root = Path(root or repo_root())
    standin, _build = _standin()
    ensure_engine(log)
    ensure_image(root, log=log)
    library = _library(root)
    description = standin.load(variant)
    gpu_dir(root).mkdir(parents=True, exist_ok=True)
    controller = lab_dir(root) / CONTROLLER_KEY
    ensure_keypair(controller, "gpufleet-lab-controller")
    ensure_keypair(hostkey_path(root, variant), host_name(variant))
    keys = hashlib.sha256(
        (public_key(controller) + public_key(hostkey_path(root, variant))).encode()
    ).hexdigest()[:16]
    write_tree(root, variant, description)
    extra = mounts(root, variant)
    recipe = _recipe(extra, keys)
    extra = ["--label", f"{VARIANT_LABEL}={variant}", "--label", f"{RECIPE_LABEL}={recipe}",
             *extra]  # fmt: skip
    state = load_gpu_state(root) or {"hosts": []}
    others = [h for h in state["hosts"] if h.get("variant") != variant]
    previous = next((h["port"] for h in state["hosts"] if h.get("variant") == variant), None)
    name = container_name(variant)
    info = _inspect(name)
    labels = ((info or {}).get("Config") or {}).get("Labels") or {}
    status = ((info or {}).get("State") or {}).get("Status", "")
    bindings = (((info or {}).get("HostConfig") or {}).get("PortBindings") or {}).get("22/tcp")
    port = int(bindings[0]["HostPort"]) if bindings else None
    fresh = (
        info is None or labels.get(RECIPE_LABEL) != recipe or labels.get(KEYS_LABEL) != keys
        or status in ("created", "dead", "removing") or port is None
    )  # fmt: skip
    if fresh:
        log(f"creating {name} (STAND-IN {variant} GPU host)")
        taken = {h["port"] for h in others}
        port = pick_port(taken, port_is_free, previous, start=PORT_BASE, span=PORT_SPAN)
        _create(root, variant, port, extra, keys, library, description)
    elif status != "running":
        log(f"starting {name}")
        docker("unpause" if status == "paused" else "start", name)
    address = ip_of(_inspect(name) or {})
    entry = {"name": host_name(variant), "container": name, "port": port, "variant": variant,
             "address": address}  # fmt: skip
    _save_state(root, [*others, entry])
    systemd = _wait_ready(root, port, name)
    if not fresh:
        apply(variant, description, root)  # whatever fault it was left with: healthy again
    log(f"{host_name(variant)}: {name} on 127.0.0.1:{port}, systemd {systemd} "
        f"(STAND-IN {variant}: pyinfra inventory/lab_gpu.py)")  # fmt: skip
    return GpuHost(variant, host_name(variant), name, port, address, controller.resolve(),
                   known_hosts_path(root).resolve())  # fmt: skip


def down(root: Path | None = None, log: Log = print) -> int:
    """Remove every GPU lab host, its volume, state and known_hosts; how many were removed."""
    root = Path(root or repo_root())
    names = docker("ps", "-a", "--filter", f"label={VARIANT_LABEL}", "--format",
                   "{{.Names}}").stdout.split()  # fmt: skip
    if names:
        docker("rm", "-f", *names)
    for variant in VARIANTS:
        docker("volume", "rm", "-f", volume_name(variant), check=False)
    for path in (state_path(root), known_hosts_path(root)):
        path.unlink(missing_ok=True)
    if names:
        log(f"removed {len(names)} GPU lab host{'s' if len(names) != 1 else ''}")
    return len(names)


def inventory_hosts(root: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """pyinfra entries for the GPU lab hosts: the lab hosts' data (SSH, the stand-in toolkit
    repository, vLLM image, apt cache) plus what a GPU host with a preinstalled driver says:
    GPUs, their count, ``driver_source = "preinstalled"`` and the described driver's branch."""
    from lab.state import inventory_hosts as lab_inventory
    from lab.state import load_state

    root = Path(root or repo_root())
    state = load_gpu_state(root)
    if state is None:
        raise LabError("no GPU lab host is up: run `python -m lab gpu up h100` (or hgx8)")
    main = load_state(root) or {}
    shared = {k: v for k, v in main.items() if k not in ("hosts", "ssh_key", "known_hosts")}
    standin, _build = _standin()
    entries = []
    variants = {h["name"]: h["variant"] for h in state["hosts"]}
    for name, data in lab_inventory({**shared, **state}):
        description = standin.load(variants[name])
        data |= {
            "host_has_gpus": True,
            "host_gpu_count": len(description["gpus"]),
            "driver_source": "preinstalled",
            "driver_branch": description["driver"].split(".")[0],
        }
        entries.append((name, data))
    return entries
