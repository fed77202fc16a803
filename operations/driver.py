"""Layer 1: the NVIDIA driver, pinned to a branch and held so upgrades cannot move it.

Built so far (issue #3, step 1): the distribution's own packages on Debian 12 (non-free
``nvidia-driver``, branch 535) and Ubuntu 22.04/24.04 (``nvidia-driver-<branch>-server``,
``-open``), with the apt components Debian needs added to the host's own sources, kernel
headers for the running kernel, nouveau blacklisted (initramfs regenerated when that
changed), the driver packages held, nvidia-persistenced enabled (running where GPUs are),
Secure Boot refused where the modules would be unsigned, and a reboot when the loaded module
is not the installed driver. NVIDIA's CUDA repository and Rocky/RHEL 9 say "not implemented
yet" and change nothing.

Every OS difference lives in ``PLATFORMS``; the operations below read it and branch nowhere
else on the OS.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from operations.apt_sources import AptSourceFiles, with_components
from operations.common import fail_host
from operations.config import DriverConfig, FleetConfig
from operations.driver_facts import APT_DRIVER_GLOBS, INSTALLED_VERSION_SH, DriverState
from operations.preflight import EL_IDS

NOUVEAU_CONF = "/etc/modprobe.d/gpufleet-blacklist-nouveau.conf"
NOUVEAU_TEXT = "# Written by gpufleet: the NVIDIA driver needs nouveau out of the way.\n" + (
    "blacklist nouveau\noptions nouveau modeset=0\n"
)
LOADED_IS_INSTALLED = (
    f"loaded=$(cat /sys/module/nvidia/version 2>/dev/null); {INSTALLED_VERSION_SH}; "
    'test -n "$loaded" && test "$loaded" = "$installed" || '
    '{ echo "loaded nvidia module ${loaded:-none}, installed driver $installed" >&2; exit 1; }'
)
# First PCI device id of Turing (open modules supported from here) and of Blackwell (required).
TURING_FIRST, BLACKWELL_FIRST = 0x1E00, 0x2900


@dataclass(frozen=True)
class DistroDriver:
    """How a distribution ships the driver itself (driver_source = distro)."""

    packages: Callable[[DriverConfig, str], list[str]]  # (config, module flavour) -> names
    branches: tuple[str, ...] | None = None  # the only branches it has; None: any
    flavours: tuple[str, ...] = ("open", "proprietary")
    components: tuple[str, ...] = ()  # apt components the packages live in
    signed_modules: bool = False  # modules load under Secure Boot without a MOK


@dataclass(frozen=True)
class Platform:
    """The driver layer's view of one OS release."""

    cuda_repo_dir: str  # NVIDIA's name of the OS in its CUDA repository paths
    distro: DistroDriver | None


def _debian_packages(config: DriverConfig, flavour: str) -> list[str]:
    return ["nvidia-driver", "nvidia-smi", "nvidia-persistenced"]


def _ubuntu_packages(config: DriverConfig, flavour: str) -> list[str]:
    suffix = "-open" if flavour == "open" else ""
    return [f"nvidia-driver-{config.branch}-server{suffix}"]


_UBUNTU = DistroDriver(_ubuntu_packages)
PLATFORMS: dict[tuple[str, str], Platform] = {
    ("ubuntu", "22.04"): Platform("ubuntu2204", _UBUNTU),
    ("ubuntu", "24.04"): Platform("ubuntu2404", _UBUNTU),
    ("debian", "12"): Platform(
        "debian12",
        DistroDriver(
            _debian_packages,
            branches=("535",),
            # bookworm's open module package lags its driver (535.261 vs 535.309)
            flavours=("proprietary",),
            components=("contrib", "non-free", "non-free-firmware"),
        ),
    ),
    ("rocky", "9"): Platform("rhel9", None),
    ("rhel", "9"): Platform("rhel9", None),
}


def platform_of(profile: dict[str, Any]) -> Platform:
    """The PLATFORMS row of a host (preflight guarantees there is one)."""
    version = profile["os_version"]
    if profile["os_id"] in EL_IDS:
        version = version.split(".")[0]
    return PLATFORMS[(profile["os_id"], version)]


def module_flavour(
    config: DriverConfig, gpus: list[dict], available: tuple[str, ...]
) -> tuple[str, str | None]:
    """(flavour, problem): the kernel modules to install for these GPUs from this source.

    auto = open when every GPU is Turing or newer and the source has open modules (NVIDIA's
    default since R560), else proprietary. Blackwell needs open modules: proprietary is
    refused when one is present.
    """
    ids = [int(gpu["device"], 16) for gpu in gpus]
    needs_open = any(i >= BLACKWELL_FIRST for i in ids)
    flavour = config.kernel_modules
    if flavour == "auto":
        turing_on = ids and min(ids) >= TURING_FIRST
        flavour = "open" if needs_open or (turing_on and "open" in available) else "proprietary"
    if flavour == "proprietary" and needs_open:
        return flavour, "proprietary kernel modules cannot drive Blackwell GPUs: use open"
    if flavour not in available:
        return flavour, f"{flavour} kernel modules are not available from this source"
    return flavour, None


def problems(config: FleetConfig, profile: dict[str, Any]) -> list[str]:
    """Why the driver cannot be installed on this host as configured; empty when it can."""
    driver, distro = config.driver, platform_of(profile).distro
    found = _source_problems(driver, distro, f"{profile['os_id']} {profile['os_version']}")
    _, problem = module_flavour(driver, profile["nvidia_gpus"], _flavours(driver, distro))
    found += [problem] if problem else []
    if profile["secure_boot"] == "enabled" and not (distro and distro.signed_modules):
        found.append(
            "Secure Boot is enabled and these kernel modules are built by DKMS, unsigned: "
            "enroll a Machine Owner Key for DKMS (mokutil --import) or disable Secure Boot"
        )
    return found


def _source_problems(driver: DriverConfig, distro: DistroDriver | None, os_words: str) -> list:
    if driver.source != "distro":
        return []
    if distro is None:
        return [
            f"{os_words} has no NVIDIA driver packages of its own: use driver_source = cuda-repo"
        ]
    found = []
    if distro.branches and driver.branch not in distro.branches:
        found.append(
            f"driver_branch {driver.branch} is not in {os_words}'s archive "
            f"(it has {', '.join(distro.branches)}); use driver_source = cuda-repo"
        )
    if driver.version and distro.branches:
        found.append(f"driver_version cannot be pinned with {os_words}'s own packages")
    return found


def _flavours(driver: DriverConfig, distro: DistroDriver | None) -> tuple[str, ...]:
    """Module flavours the configured source offers on this OS."""
    if driver.source == "distro" and distro is not None:
        return distro.flavours
    return ("open", "proprietary")


def _unless(needed_now: bool, op) -> dict:
    """Run now when the facts already say so, else only if ``op`` changes something."""
    return {} if needed_now else {"_if": op.did_change}


@deploy("NVIDIA driver")
def apply(config: FleetConfig, profile: dict[str, Any]) -> None:
    """Install, hold and activate the configured driver (see the module doc for what is built)."""
    platform = platform_of(profile)
    if config.driver.source != "distro":
        logger.info(
            f"{host.print_prefix}driver: source {config.driver.source} on {profile['os_id']} "
            f"{profile['os_version']}: not implemented yet (issue #3)"
        )
        return
    state = host.get_fact(DriverState)
    found = problems(config, profile)
    if found:
        fail_host("Driver failed", "driver: " + "; ".join(found))
        return
    available = _flavours(config.driver, platform.distro)
    flavour, _ = module_flavour(config.driver, profile["nvidia_gpus"], available)
    install = _install_apt(config, profile, platform.distro, flavour)
    _hold_apt(config, state, install)
    _blacklist_nouveau(config, state)
    _persistence(config)
    _reboot_if_needed(config, state, install)


def _install_apt(config, profile, distro: DistroDriver, flavour: str):
    """Sources (components), headers and the driver packages; returns the install op."""
    changed = []
    if distro.components:
        for path, text in host.get_fact(AptSourceFiles).items():
            new = with_components(text, path, profile["os_codename"], distro.components)
            if new != text:
                changed.append(files.put(name=f"Enable {' '.join(distro.components)} in {path}",
                                         src=StringIO(new), dest=path, mode="644"))  # fmt: skip
    if changed:
        apt.update(name="Update apt lists for the new components", _if=changed[0].did_change)
    packages = distro.packages(config.driver, flavour)
    if config.driver.kernel_headers:
        packages = [f"linux-headers-{profile['kernel']}", *packages]
    return apt.packages(name="Install the NVIDIA driver", packages=packages, no_recommends=True)


def _hold_apt(config, state: dict[str, Any], install) -> None:
    """apt-mark hold every installed driver package, so upgrades cannot move the driver."""
    if not config.driver.hold_packages:
        return
    unheld = set(state["packages"]) - set(state["held"])
    globs = " ".join(shlex.quote(g) for g in APT_DRIVER_GLOBS)
    listing = f"dpkg-query -W -f='${{db:Status-Abbrev}} ${{Package}}\\n' {globs} 2>/dev/null"
    server.shell(
        name="Hold the NVIDIA driver packages",
        commands=[f"apt-mark hold $({listing} | awk 'substr($1, 2, 1) == \"i\" {{ print $2 }}')"],
        **_unless(bool(unheld), install),
    )


def _blacklist_nouveau(config, state: dict[str, Any]) -> None:
    """Keep nouveau off the GPUs; regenerate the initramfs when the blacklist is new."""
    if not config.driver.blacklist_nouveau:
        return
    put = files.put(name="Blacklist nouveau", src=StringIO(NOUVEAU_TEXT), dest=NOUVEAU_CONF)
    if state.get("initramfs"):
        server.shell(name="Regenerate the initramfs", commands=[state["initramfs"]],
                     _if=put.did_change)  # fmt: skip


def _persistence(config: FleetConfig) -> None:
    """nvidia-persistenced enabled; running only where there are GPUs for it to hold."""
    if config.driver.persistence:
        systemd.service(name="nvidia-persistenced", service="nvidia-persistenced",
                        enabled=True, running=config.host.has_gpus)  # fmt: skip


def _reboot_if_needed(config: FleetConfig, state: dict[str, Any], install) -> None:
    """Reboot when no module, or not the installed one, is loaded (and the config allows)."""
    if not config.host.has_gpus:
        return
    loaded = state.get("module_loaded")
    mismatch = not loaded or loaded != state.get("nvml_version")
    if not config.driver.allow_reboot or (host.name == "@local" and not config.driver.reboot_local):
        if mismatch:
            logger.warning(f"{host.print_prefix}driver: reboot needed, not allowed by config")
        return
    when = _unless(mismatch, install)
    server.reboot(name="Reboot to load the installed driver",
                  reboot_timeout=config.driver.reboot_timeout_s, **when)  # fmt: skip
    server.shell(name="Check the loaded driver is the installed one",
                 commands=[LOADED_IS_INSTALLED], **when)  # fmt: skip
