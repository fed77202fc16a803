"""Layer 0, preflight: read the host, change nothing, stop hosts that cannot be served.

One fact (``HostProfile``, one round trip) feeds every check. A host that fails gets one
operation that fails it at execution with the reasons, so ``--dry`` shows the failure in the
plan and a real run marks that host failed while the others go on.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy

from operations.config.model import FleetConfig
from operations.kit.common import fail_host
from operations.platform import SUPPORTED_ARCH, os_supported, supported_os_words
from operations.preflight.facts import REQUIRED as REQUIRED_WORDS
from operations.preflight.facts import HostProfile, missing


def problems(config: FleetConfig, profile: dict[str, Any]) -> list[str]:
    """Why this host cannot go on to the next layers; empty when it can."""
    found = []
    if not os_supported(profile["os_id"], profile["os_version"]):
        found.append(
            f"unsupported OS {profile['os_id']} {profile['os_version']} "
            f"(supported: {supported_os_words()})"
        )
    if profile["arch"] not in SUPPORTED_ARCH:
        found.append(f"unsupported CPU architecture {profile['arch']} (supported: x86_64, aarch64)")
    found += gpu_problems(config, len(profile["nvidia_gpus"]))
    free, needed = profile.get("disk_free_gib"), config.preflight.min_free_disk_gib
    if free is None:
        found.append(f"the free space on {config.preflight.disk_path} could not be read")
    elif free < needed:
        found.append(
            f"only {free} GiB free on {config.preflight.disk_path}, "
            f"preflight_min_free_disk_gib is {needed}"
        )
    return found


def gpu_problems(config: FleetConfig, gpus: int) -> list[str]:
    expected = config.host.gpu_count
    if config.host.has_gpus and gpus == 0:
        return [
            "no NVIDIA GPU (PCI vendor 10de) on the PCI bus; "
            "set host_has_gpus = False for a host without GPUs"
        ]
    if not config.host.has_gpus and gpus:
        return [f"host_has_gpus is False but {gpus} NVIDIA GPU(s) are on the PCI bus"]
    if config.host.has_gpus and expected is not None and gpus != expected:
        return [f"{gpus} NVIDIA GPU(s) on the PCI bus, host_gpu_count expects {expected}"]
    return []


def summary(profile: dict[str, Any]) -> str:
    """One line describing the host, printed for every host."""
    gpus = len(profile["nvidia_gpus"])
    switches = f", {len(profile['nvswitches'])} NVSwitch(es)" if profile["nvswitches"] else ""
    return (
        f"{profile['os_id']} {profile['os_version']} {profile['arch']}, "
        f"kernel {profile['kernel']}, {gpus} NVIDIA GPU(s){switches}, "
        f"Secure Boot {profile.get('secure_boot', '?')}, "
        f"{profile.get('disk_free_gib', '?')} GiB free"
    )


def unreadable(lacking: list[str]) -> str:
    """Why a host whose profile script answered too little cannot go on."""
    if len(lacking) == len(REQUIRED_WORDS):
        return "the host could not be read: the profile script printed nothing"
    return f"the host could not be read: the profile script printed no {', '.join(lacking)}"


@deploy("Preflight")
def run(config: FleetConfig) -> dict[str, Any] | None:
    """Check the host; return its profile when the next layers may run, else None."""
    profile = host.get_fact(HostProfile, path=config.preflight.disk_path)
    lacking = missing(profile)
    if lacking:
        found = [unreadable(lacking)]
    else:
        logger.info(f"{host.print_prefix}preflight: {summary(profile)}")
        found = problems(config, profile)
        if not found:
            return profile
    for problem in found:
        logger.warning(f"{host.print_prefix}preflight: {problem}")
    fail_host("Preflight failed", "preflight failed: " + "; ".join(found))
    return None
