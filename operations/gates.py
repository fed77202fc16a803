"""Compatibility gates: per host, after preflight and before any change, the pieces that must
fit together are checked, and a host where one does not is failed with the reason while the
others go on (like the driver layer's refusals: one failing operation, nothing else planned).

1. CUDA: the driver supports at least the CUDA version the configured vLLM image needs (the
   GPU health check's own rule, operations.driver.health.cuda_version). A host whose driver
   this run installs or moves to another branch is judged on that branch (BRANCH_CUDA).
2. Toolkit: the NVIDIA Container Toolkit (the ``toolkit_version`` pin, else the installed
   one, on GPU hosts) is at least the fixed version of every NVIDIA security bulletin in
   TOOLKIT_FLOORS, unless ``toolkit_accept_cves`` names that bulletin's CVE.
3. Fabric manager: on NVSwitch hosts, the installed fabric manager (its package, else what
   ``nv-fabricmanager --version`` says) is the driver's exact version (the fabric manager
   refuses to start against another driver).

A gate that cannot judge a host (no driver yet, a version not known) passes it and says why
in the output. Facts only: the driver state and, for an unpinned toolkit, the container stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy

from operations.config.model import FleetConfig
from operations.docker.facts import ContainerStack
from operations.driver import fabric_manager_wanted, upgrade_from
from operations.driver.facts import DriverState, loaded_driver
from operations.driver.health import Host, NotApplicable, Unreadable, cuda_needed, cuda_version
from operations.kit import converged
from operations.kit.common import fail_host
from operations.toolkit.facts import PACKAGES

# NVIDIA's Container Toolkit security bulletins (NVIDIA/product-security, nvidia.custhelp.com
# a_id): (CVE, first fixed version, bulletin). A toolkit below a fixed version is refused unless
# toolkit_accept_cves names the CVE. Each bulletin's "Updated Version" column:
TOOLKIT_FLOORS: tuple[tuple[str, tuple[int, int, int], str], ...] = (
    ("CVE-2024-0132", (1, 16, 2), "bulletin 5582, September 2024"),  # also CVE-2024-0133
    ("CVE-2025-23266", (1, 17, 8), "bulletin 5659, July 2025"),  # also CVE-2025-23267
)
# A later bulletin, not enforced yet: 5850 (June 2026), CVE-2026-24260, affected up to 1.19.0,
# fixed in 1.19.1. The lab's STAND-IN toolkit repository serves only 1.17.8-1 and 1.17.9-1 and
# the plan tests pin 1.17.8, so enforcing it (one row above) waits for them to move (issue 18).
# The CUDA version the first release of a driver branch supports (CUDA Toolkit release
# notes, "CUDA Toolkit and Corresponding Driver Versions": 12.2 GA >= 535.54.03 … 13.0 GA >=
# 580.65.06). A branch not listed: the gate cannot judge a driver not installed yet.
BRANCH_CUDA: dict[str, tuple[int, int]] = {
    "535": (12, 2), "545": (12, 3), "550": (12, 4), "555": (12, 5), "560": (12, 6),
    "570": (12, 8), "575": (12, 9), "580": (13, 0),
}  # fmt: skip
FABRIC_MANAGER_RE = re.compile(r"^nvidia-fabric-?manager(-[0-9]+)?$")  # apt -<branch>, EL names
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_EPOCH = re.compile(r"^\d+:")


@dataclass
class Judgement:
    """What the gates found on one host: refusals, and notes on gates that could not judge."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _cuda(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _changes_driver(config: FleetConfig, state: dict[str, Any]) -> bool:
    """This run installs the driver, or moves it to another branch or version."""
    driver = config.driver
    if "driver" not in config.deploy.layers or driver.source == "preinstalled":
        return False
    return not loaded_driver(state) or upgrade_from(driver, state) is not None


def cuda_gate(config: FleetConfig, state: dict[str, Any], found: Judgement) -> None:
    """The driver's CUDA version is at least what the vLLM image needs (GPU hosts that run
    the vllm layer)."""
    if not config.host.has_gpus or "vllm" not in config.deploy.layers:
        return
    needed, image = cuda_needed(config), config.vllm.image
    if needed is None:
        found.notes.append(
            f"CUDA gate skipped: the CUDA version {image} needs is not known "
            "(set gpu_min_cuda_driver)"
        )
        return
    if _changes_driver(config, state):
        _branch_gate(config, needed, found)
        return
    try:
        verdict = cuda_version(Host(config, state))
    except (NotApplicable, Unreadable) as why:
        found.notes.append(f"CUDA gate skipped: {why}")
        return
    for finding in verdict.findings:
        found.problems.append(
            f"driver {loaded_driver(state)}: {finding}; allowed: a driver supporting CUDA "
            f"{_cuda(needed)} or later (driver_branch), or a vllm_image built for an older CUDA"
        )


def _branch_gate(config: FleetConfig, needed: tuple[int, int], found: Judgement) -> None:
    """The driver this run installs: judged on its branch."""
    branch = config.driver.branch
    has = BRANCH_CUDA.get(branch)
    if has is None:
        found.notes.append(
            f"CUDA gate skipped: the driver is installed in this run and the "
            f"CUDA version of branch {branch} is not known here"
        )
    elif has < needed:
        found.problems.append(
            f"driver_branch {branch} supports CUDA {_cuda(has)}, {config.vllm.image} needs "
            f"{_cuda(needed)}; allowed: a driver_branch supporting CUDA {_cuda(needed)} or "
            f"later ({', '.join(b for b, c in BRANCH_CUDA.items() if c >= needed)}), or a "
            "vllm_image built for an older CUDA (gpu_min_cuda_driver)"
        )


def toolkit_floor(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a toolkit version string (a pin, a package version with its
    epoch or release, ``nvidia-ctk --version``'s line); None when it names none."""
    match = _VERSION.search(_EPOCH.sub("", version.strip()))
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def installed_toolkit(stack: dict[str, Any]) -> str | None:
    """The oldest of the installed toolkit packages' versions (they move together, but the
    oldest is what is exposed), else ``nvidia-ctk --version``; None where none is."""
    versions = [stack["packages"][name] for name in PACKAGES if stack["packages"].get(name)]
    if versions:
        return min(versions, key=lambda v: toolkit_floor(v) or (0, 0, 0))
    return (stack.get("ctk_version") or "").strip() or None


def toolkit_gate(config: FleetConfig, installed: str | None, found: Judgement) -> None:
    """The toolkit (pin, else installed) is at least every bulletin's fixed version, or the
    bulletin's CVE is accepted in toolkit_accept_cves."""
    pinned = config.toolkit.version if "toolkit" in config.deploy.layers else None
    what, version = ("toolkit_version", pinned) if pinned else ("the installed toolkit", installed)
    if version is None:
        if "toolkit" in config.deploy.layers:
            found.notes.append(
                "toolkit gate skipped: toolkit_version is not set and no toolkit "
                "is installed (the repository's newest is installed)"
            )
        return
    number = toolkit_floor(version)
    if number is None:
        found.notes.append(f"toolkit gate skipped: no version in {what} {version!r}")
        return
    below = [(cve, fixed, where) for cve, fixed, where in TOOLKIT_FLOORS if number < fixed]
    accepted = set(config.toolkit.accept_cves)
    refused = [(cve, fixed, where) for cve, fixed, where in below if cve not in accepted]
    for cve, fixed, where in below:
        if cve in accepted:
            found.notes.append(
                f"toolkit gate: {what} {version} is below {_dotted(fixed)}, "
                f"the fix of {cve} ({where}): accepted by toolkit_accept_cves"
            )
    if refused:
        floor = _dotted(max(fixed for _cve, fixed, _where in refused))
        cves = ", ".join(f"{cve} (fixed in {_dotted(f)}, NVIDIA {w})" for cve, f, w in refused)
        found.problems.append(
            f"{what} {version} is below the NVIDIA security floor {floor}: {cves}; allowed: a "
            f"toolkit_version of {floor} or later, or toolkit_accept_cves naming "
            + ",".join(cve for cve, _f, _w in refused)
        )


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def _base_version(package_version: str) -> str:
    """A package's version without its epoch and release: 1:580.95.05-1.el9 -> 580.95.05."""
    return package_version.split(":", 1)[-1].split("-", 1)[0]


def fabric_manager_gate(
    config: FleetConfig, profile: dict[str, Any], state: dict[str, Any], found: Judgement
) -> None:
    """On NVSwitch hosts: the fabric manager package is the driver's exact version."""
    if not config.host.has_gpus or not fabric_manager_wanted(config, profile):
        return
    driver = state.get("nvml_version") or loaded_driver(state)
    managers = {n: v for n, v in state["packages"].items() if FABRIC_MANAGER_RE.match(n) and v}
    if not managers and state.get("fabricmanager_version"):  # no package: the binary's word
        managers = {"nv-fabricmanager": state["fabricmanager_version"]}
    if not driver:
        found.notes.append("fabric manager gate skipped: no NVIDIA driver here yet")
        return
    if _changes_driver(config, state):
        found.notes.append(
            "fabric manager gate skipped: this run moves the driver, and the "
            "fabric manager with it (one pinned install)"
        )
        return
    if not managers:
        found.notes.append(
            "fabric manager gate skipped: no fabric manager package or nv-fabricmanager "
            "binary is installed, so its version cannot be read"
        )
    for name, version in sorted(managers.items()):
        if _base_version(version) != driver:
            found.problems.append(
                f"the fabric manager {name} is {version}, the driver is {driver}: they must "
                f"be the same version; allowed: {name} at {driver} (driver_fabric_manager)"
            )


def judge(config: FleetConfig, profile: dict[str, Any]) -> Judgement:
    """Every gate on this host, reading only the facts the gates that apply need."""
    found = Judgement()
    gpu_gates = config.host.has_gpus and (
        "vllm" in config.deploy.layers or fabric_manager_wanted(config, profile)
    )
    if gpu_gates:
        state = converged.planned(DriverState)
        cuda_gate(config, state, found)
        fabric_manager_gate(config, profile, state, found)
    layers = set(config.deploy.layers)
    if layers & {"toolkit", "vllm"}:
        # the installed toolkit only where GPU containers run through it: a GPU-less host
        # reads neither the driver nor the container stack (the pin is judged everywhere)
        pinned = config.toolkit.version and "toolkit" in layers
        read = config.host.has_gpus and not pinned
        installed = installed_toolkit(converged.planned(ContainerStack)) if read else None
        toolkit_gate(config, installed, found)
    return found


@deploy("Compatibility gates")
def check(config: FleetConfig, profile: dict[str, Any]) -> bool:
    """Run the gates; on a refusal fail this host (one failing operation, nothing else to be
    planned on it) and return False. Notes on gates that could not judge are logged."""
    found = judge(config, profile)
    for note in found.notes:
        logger.info(f"{host.print_prefix}{note}")
    if found.problems:
        fail_host(
            "Compatibility gates failed",
            f"{host.name}: compatibility gates: " + "; ".join(found.problems),
        )
        return False
    return True
