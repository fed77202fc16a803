"""Facts of the NVIDIA driver layer, gathered in one round trip per host.

``DriverState`` runs one POSIX shell script printing ``key=value`` lines:
- the driver wherever userspace finds it: ``libnvidia-ml.so.1`` as the dynamic loader's cache
  resolves it (``ldconfig -p``, so a cloud image's ``/usr/local/nvidia`` counts), its version
  and the package that owns it (none: a runfile or image driver no package manager manages),
  the loaded kernel module (``/sys/module/nvidia/version``, ``/proc/driver/nvidia/version``
  with its flavour) and the module on disk for the running kernel (``modinfo``);
- nouveau loaded or blacklisted, the NVIDIA packages and which are held (dpkg/apt-mark or
  rpm/dnf versionlock), whether systemd runs the host and, where it does, the persistence and
  fabric manager units; the distribution's reboot-required flag; the fabric manager's own
  version (``nv-fabricmanager --version``) where its binary is installed;
- where a driver is present, the NVML probe (operations/driver/nvml.py: pynvml run by the
  host's python3) as one JSON line, or, on a host without python3, ``nvidia-smi --query-gpu``
  CSV lines for what it can give;
- the kernel log's ``NVRM: Xid`` lines since boot (journal and ring buffer).

The deploy's driver layer and the verify checks read the same script.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from typing import Any

from pyinfra.api import FactBase

from operations.driver.nvml import parse as parse_probe
from operations.driver.nvml import probe_command
from operations.kit import scripts

GPU_QUERY = (
    "index,pci.bus_id,name,driver_version,persistence_mode,"
    "ecc.errors.uncorrected.volatile.total,retired_pages.pending"
)
UNITS = ("nvidia-persistenced", "nvidia-fabricmanager")
# Packages of the driver stack that must move together (held, unheld, upgraded as one).
APT_DRIVER_GLOBS = (
    "nvidia-*", "libnvidia-*", "firmware-nvidia-*", "linux-modules-nvidia-*", "cuda-drivers*",
)  # fmt: skip
EL_DRIVER_GLOBS = ("nvidia-*", "kmod-nvidia*", "libnvidia-*", "cuda-drivers*")
# ...but not the container toolkit's (libnvidia-container1, nvidia-container-toolkit…): the
# toolkit layer pins and moves those on its own.
NOT_DRIVER_RE = "^(lib)?nvidia-container"
# Sets $lib and $installed: the libnvidia-ml.so.1 userspace loads and its driver version.
INSTALLED_VERSION_SH = scripts.render("driver_library").strip()
# An Xid line of the kernel log: "NVRM: Xid (PCI:0000:18:00): 79, pid=…, GPU has fallen off…"
XID_RE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+)")


def is_driver_package(name: str) -> bool:
    """A package of the driver stack (held and moved with the driver)."""
    globs = (*APT_DRIVER_GLOBS, *EL_DRIVER_GLOBS)
    return any(fnmatch.fnmatch(name, g) for g in globs) and not re.match(NOT_DRIVER_RE, name)


def shell_globs(globs: tuple[str, ...]) -> str:
    """The globs quoted for a shell command line."""
    return " ".join(shlex.quote(glob) for glob in globs)


def installed_apt_packages(awk_print: str) -> str:
    """Shell listing installed driver packages (dpkg status "ii" or "hi", held: the second
    letter says installed); ``awk_print`` picks the output from $2 (name) and $3 (version)."""
    return (
        f"dpkg-query -W -f='${{db:Status-Abbrev}} ${{Package}} ${{Version}}\\n' "
        f"{shell_globs(APT_DRIVER_GLOBS)} 2>/dev/null "
        f"| awk 'substr($1, 2, 1) == \"i\" && $2 !~ /{NOT_DRIVER_RE}/ {{ print {awk_print} }}'"
    )


def driver_command() -> str:
    """The shell script behind DriverState (operations/kit/scripts/driver_state.sh)."""
    return scripts.render(
        "driver_state",
        NOT_DRIVER_PACKAGE="^package=" + NOT_DRIVER_RE[1:],
        QUERY=GPU_QUERY,
        raw_values={
            "LIBRARY": INSTALLED_VERSION_SH,
            "PROBE": probe_command(),
            "DPKG": installed_apt_packages('"package=" $2 " " $3'),
            "EL_GLOBS": shell_globs(EL_DRIVER_GLOBS),
            "UNITS": shell_globs(UNITS),
        },
    ).strip()


def _csv_value(value: str) -> Any:
    """One nvidia-smi CSV value as the probe would give it: a number, a flag, or unsupported."""
    if value.startswith("["):  # [N/A], [Not Supported]
        return {"unsupported": True}
    if value in ("Enabled", "Yes"):
        return 1
    if value in ("Disabled", "No"):
        return 0
    return int(value) if value.isdigit() else value


def _csv_gpu(line: str) -> dict[str, Any]:
    """One nvidia-smi CSV line as the probe's GPU shape (the fields nvidia-smi gives)."""
    index, bus, name, driver, persistence, ecc, pending = (v.strip() for v in line.split(","))
    return {
        "index": int(index), "pci_bus_id": bus, "name": name, "driver": driver,
        "persistence": _csv_value(persistence), "ecc_uncorrected_volatile": _csv_value(ecc),
        "retired_pages_pending": _csv_value(pending),
    }  # fmt: skip


def _xid(line: str) -> dict[str, Any]:
    match = XID_RE.search(line)
    pci, code = (match.group(1), int(match.group(2))) if match else ("", -1)
    return {"pci": pci, "code": code, "line": line.strip()}


def _line(state: dict[str, Any], key: str, value: str) -> None:
    """Fold one ``key=value`` line into the state."""
    if key == "package":
        name, _, version = value.partition(" ")
        state["packages"][name] = version
    elif key == "held":
        state["held"].append(value.strip())
    elif key == "unit":
        name, enabled, active = value.split()
        state["units"][name] = {"enabled": enabled, "active": active}
    elif key == "gpu":
        csv = value.count(",") == len(GPU_QUERY.split(",")) - 1
        state["csv_gpus" if csv else "gpu_errors"].append(_csv_gpu(value) if csv else value)
    elif key == "nvml":
        state["nvml"] = parse_probe([value])
    elif key == "xid":
        state["xids"].append(_xid(value))
    elif key == "nouveau_blacklist":
        state["nouveau_blacklist"].append(value)
    elif key in ("nouveau_loaded", "reboot_required"):
        state[key] = value == "yes"
    elif key:
        state[key] = value


def _gpus(state: dict[str, Any]) -> None:
    """``gpus`` and ``probe``: what NVML said, else nvidia-smi's CSV, else nothing; ``probe``
    names the path that gave them (nvml, nvidia-smi, none) or is None where no driver is."""
    doc = state.get("nvml")
    if doc is None:
        state["probe"] = None
    elif isinstance(doc.get("gpus"), list):
        state["probe"], state["gpus"] = "nvml", doc["gpus"]
    elif doc.get("probe") == "none" and "nvidia_smi_rc" in state:
        state["probe"], state["gpus"] = "nvidia-smi", state["csv_gpus"]
    else:
        state["probe"] = doc.get("probe", "nvml")
    state.pop("csv_gpus")


def parse_driver_state(lines: list[str]) -> dict[str, Any]:
    """Turn the script's ``key=value`` lines into the driver state dict."""
    state: dict[str, Any] = {
        "packages": {}, "held": [], "units": {}, "gpus": [], "csv_gpus": [], "gpu_errors": [],
        "nouveau_blacklist": [], "nouveau_loaded": False, "reboot_required": False, "xids": [],
    }  # fmt: skip
    for line in lines:
        key, _, value = line.partition("=")
        _line(state, key, value)
    _gpus(state)
    return state


def probe_problem(state: dict[str, Any]) -> str | None:
    """Why the GPUs could not be read (the probe's error, nvidia-smi's), None when they were."""
    doc = state.get("nvml") or {}
    if state["probe"] == "nvml" and doc.get("error"):
        return f"NVML: {doc['error']}"
    if state["probe"] == "none":
        why = doc.get("why", "no NVML probe")
        return f"{why}, and nvidia-smi is not installed"
    if state["probe"] == "nvidia-smi" and state.get("nvidia_smi_rc") != "0":
        return "nvidia-smi: " + "; ".join(state["gpu_errors"] or ["failed"])
    return None


def unmanaged(state: dict[str, Any]) -> bool:
    """The host's NVIDIA library belongs to no package: a runfile or cloud-image driver that a
    package install would go on top of."""
    return state.get("library_owner") == "none"


def cuda_driver(state: dict[str, Any]) -> tuple[int, int] | None:
    """The CUDA version the driver supports, (major, minor), from NVML; None if not read."""
    value = (state.get("nvml") or {}).get("cuda_driver")
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    major, rest = divmod(value, 1000)
    return major, rest // 10


def loaded_driver(state: dict[str, Any]) -> str | None:
    """The version of the NVIDIA driver the host runs: NVML's answer, else the loaded kernel
    module's, else the library userspace would load; None where there is no driver."""
    probe = state.get("nvml") or {}
    driver = probe.get("driver")
    if isinstance(driver, str) and driver:
        return driver
    return state.get("proc_version") or state.get("module_loaded") or state.get("nvml_version")


class DriverState(FactBase):
    """Installed, loaded and held state of the NVIDIA driver on a host (see module doc)."""

    def command(self) -> str:
        return driver_command()

    @staticmethod
    def default() -> dict[str, Any]:
        return parse_driver_state([])

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_driver_state(output)
