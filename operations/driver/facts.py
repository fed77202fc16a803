"""Facts of the NVIDIA driver layer, gathered in one round trip per host.

``DriverState`` runs one POSIX shell script printing ``key=value`` lines: the version of the
NVML library installed (``libnvidia-ml.so.1``'s target, what userspace loads), the version
of the loaded kernel module (``/sys/module/nvidia/version``) and of the module on disk for
the running kernel (``modinfo``), nouveau loaded or blacklisted, the NVIDIA packages and
which are held (dpkg/apt-mark or rpm/dnf versionlock), the persistence and fabric manager
units, the distribution's reboot-required flag, and, when the module is loaded, one
``nvidia-smi --query-gpu`` CSV line per GPU. The verify checks run the same script.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from typing import Any

from pyinfra.api import FactBase

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
# Sets $installed to the driver version userspace loads: libnvidia-ml.so.1's target.
INSTALLED_VERSION_SH = (
    "installed=$(readlink -f /usr/lib/*/libnvidia-ml.so.1 /usr/lib64/libnvidia-ml.so.1 "
    "2>/dev/null | head -n 1); installed=${installed##*libnvidia-ml.so.}"
)


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
            "INSTALLED": INSTALLED_VERSION_SH,
            "DPKG": installed_apt_packages('"package=" $2 " " $3'),
            "EL_GLOBS": shell_globs(EL_DRIVER_GLOBS),
            "UNITS": shell_globs(UNITS),
        },
    ).strip()


def _gpu(line: str) -> dict[str, str]:
    keys = GPU_QUERY.split(",")
    values = [value.strip() for value in line.split(",")]
    return dict(zip(keys, values, strict=False))


def parse_driver_state(lines: list[str]) -> dict[str, Any]:
    """Turn the script's ``key=value`` lines into the driver state dict."""
    state: dict[str, Any] = {
        "packages": {}, "held": [], "units": {}, "gpus": [], "gpu_errors": [],
        "nouveau_blacklist": [], "nouveau_loaded": False, "reboot_required": False,
    }  # fmt: skip
    for line in lines:
        key, _, value = line.partition("=")
        if key == "package":
            name, _, version = value.partition(" ")
            state["packages"][name] = version
        elif key == "held":
            state["held"].append(value.strip())
        elif key == "unit":
            name, enabled, active = value.split()
            state["units"][name] = {"enabled": enabled, "active": active}
        elif key == "gpu":
            target = "gpus" if value.count(",") >= 6 else "gpu_errors"
            state[target].append(_gpu(value) if target == "gpus" else value)
        elif key == "nouveau_blacklist":
            state["nouveau_blacklist"].append(value)
        elif key in ("nouveau_loaded", "reboot_required"):
            state[key] = value == "yes"
        elif key:
            state[key] = value
    return state


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
