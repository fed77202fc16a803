"""GPU health as judged from the driver state (operations/driver/facts.py): one function per
concern, each naming every GPU that fails it (index and PCI bus id), the value and the limit.

The verify suite runs each as one check (tests/verify/test_gpu.py), so a sick GPU fails the
check of its own fault and no other. A field the GPU does not support (``{"unsupported":
true}`` from the probe) is no failure: the concern does not apply to that GPU, and a concern
that applies to none of the host's GPUs is not applicable as a whole. A field that could not
be read is a failure (health unknown is not health). Limits operators set differently are
settings of the ``gpu_`` section (operations/config/model.py: GpuConfig).

NVML values used here (nvml.h): clock event reason bits, GPU fabric states.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from operations.config.model import FleetConfig
from operations.driver.facts import cuda_driver, loaded_driver, probe_problem

# nvmlClocksEventReason* bits that mean the hardware is slowing the GPU down; the others
# (idle, application clocks, software power cap, sync boost) are normal operation.
SLOWDOWN_REASONS = {
    0x8: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
}
FABRIC_COMPLETED = 3  # NVML_GPU_FABRIC_STATE_COMPLETED
FABRIC_STATES = {0: "not supported", 1: "not started", 2: "in progress", 3: "completed"}


# The CUDA version each vllm/vllm-openai release is built with (vLLM's Dockerfile, ARG
# CUDA_VERSION, at the release tags; release notes of v0.9.0, v0.11.1, v0.20.0): from each
# first release on, until the next row. The driver must support at least that version:
# minor-version compatibility does not cover the PTX the image's kernels JIT-compile
# (Triton, FlashInfer), and the images ask the toolkit for it (NVIDIA_REQUIRE_CUDA).
VLLM_IMAGE_CUDA: tuple[tuple[tuple[int, int, int], tuple[int, int]], ...] = (
    ((0, 5, 0), (12, 4)),
    ((0, 9, 0), (12, 8)),
    ((0, 11, 1), (12, 9)),
    ((0, 20, 0), (13, 0)),
)
# v0.30.0 and v0.31.0 (the default image): CUDA 13.0 builds, "-cu129" tags for CUDA 12.9
# (their published tags and digests, 2026-09/10); newer: not known here, set gpu_min_cuda_driver
VLLM_KNOWN_UP_TO = (0, 31)
_VLLM_TAG = re.compile(r":v?(\d+)\.(\d+)(?:\.(\d+))?([^/@:]*)(?:@sha256:[0-9a-f]{64})?$")
_CUDA_SUFFIX = re.compile(r"-cu(1[0-9])([0-9])\b")  # v0.19.1-cu130: the CUDA 13.0 variant


def cuda_needed(config: FleetConfig) -> tuple[int, int] | None:
    """The CUDA version the driver must support: gpu_min_cuda_driver, or (auto) what the
    configured vLLM image's release is built with; None when neither is known."""
    wanted = config.gpu.min_cuda_driver
    if wanted != "auto":
        major, minor = wanted.split(".")
        return int(major), int(minor)
    match = _VLLM_TAG.search(config.vllm.image)
    if not match:
        return None
    suffix = _CUDA_SUFFIX.search(match.group(4))
    if suffix:
        return int(suffix.group(1)), int(suffix.group(2))
    release = (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))
    if release[:2] > VLLM_KNOWN_UP_TO:
        return None
    built = [cuda for first, cuda in VLLM_IMAGE_CUDA if release >= first]
    return built[-1] if built else None


class NotApplicable(Exception):
    """The concern does not apply to this host; the message says why."""


@dataclass(frozen=True)
class Finding:
    """One GPU failing one concern (gpu None: the host as a whole)."""

    reason: str
    gpu: int | None = None
    bus: str = ""

    def __str__(self) -> str:
        return (
            f"GPU {self.gpu} ({self.bus}): {self.reason}" if self.gpu is not None else self.reason
        )


@dataclass
class Verdict:
    """What a concern found: failures, and facts worth reporting that fail nothing."""

    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Host:
    """What the concerns read: the host's config, driver state and preflight profile."""

    config: FleetConfig
    state: dict[str, Any]
    profile: dict[str, Any] = field(default_factory=dict)


def unsupported(value: Any) -> bool:
    return isinstance(value, dict) and bool(value.get("unsupported"))


def failed_read(value: Any) -> str | None:
    return value.get("error") if isinstance(value, dict) and "error" in value else None


def _gpus(host: Host) -> list[dict[str, Any]]:
    """The host's GPUs; raises ``Unreadable`` when they could not be read at all."""
    problem = probe_problem(host.state)
    if problem or (not host.state["gpus"] and host.state["probe"] is None):
        raise Unreadable(problem or "no NVIDIA driver is loaded (no NVML, no nvidia module)")
    return host.state["gpus"]


class Unreadable(Exception):
    """The GPUs could not be read: every GPU concern fails with this reason."""


def per_gpu(
    name: str, judge: Callable[[Any, dict[str, Any], Host], str | None], *, what: str
) -> Callable[[Host], Verdict]:
    """A concern judged GPU by GPU on one probe field (``name``: a key, or "a.b" nested):
    ``judge(value, gpu, host)`` returns why it fails, or None."""

    def check(host: Host) -> Verdict:
        verdict, applies = Verdict(), False
        for gpu in _gpus(host):
            value = _field(gpu, name)
            if value is _ABSENT:
                continue  # not read on this path (nvidia-smi fallback)
            if unsupported(value):
                continue
            applies = True
            error = failed_read(value)
            reason = f"{what} could not be read: {error}" if error else judge(value, gpu, host)
            if reason:
                verdict.findings.append(
                    Finding(reason, gpu.get("index"), gpu.get("pci_bus_id", ""))
                )
        if not applies:
            raise NotApplicable(_why_not(host, what))
        return verdict

    check.__doc__ = f"Every GPU: {what}."
    return check


_ABSENT = object()


def _field(gpu: dict[str, Any], name: str) -> Any:
    value: Any = gpu
    for part in name.split("."):
        if unsupported(value) or failed_read(value):
            return value
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _why_not(host: Host, what: str) -> str:
    if host.state["probe"] == "nvidia-smi":
        return f"not applicable: {what} is not read by the nvidia-smi fallback (no python3)"
    return f"not applicable: no GPU of this host supports {what}"


def persistence(value: Any, _gpu: dict, _host: Host) -> str | None:
    return (
        None if value == 1 else "persistence mode is off (nvidia-persistenced, or nvidia-smi -pm 1)"
    )


def ecc_mode(value: Any, _gpu: dict, _host: Host) -> str | None:
    if value.get("current"):
        return None
    pending = " (enabled after the next GPU reset)" if value.get("pending") else ""
    return "ECC is disabled" + pending


def ecc_uncorrected(value: Any, _gpu: dict, _host: Host) -> str | None:
    return (
        f"{value} uncorrected volatile ECC error(s) since the driver loaded (limit 0)"
        if value
        else None
    )


def retired_pending(value: Any, _gpu: dict, _host: Host) -> str | None:
    return "page retirement pending: reboot or reset the GPU" if value else None


def remap_pending(value: Any, _gpu: dict, _host: Host) -> str | None:
    return "row remapping pending: the GPU needs a reset" if value else None


def remap_failure(value: Any, _gpu: dict, _host: Host) -> str | None:
    return "row remapping failed: no spare rows left (RMA the GPU)" if value else None


def remap_correctable(value: Any, _gpu: dict, host: Host) -> str | None:
    limit = host.config.gpu.max_correctable_remapped_rows
    if limit is None:
        raise NotApplicable("not applicable: gpu_max_correctable_remapped_rows is not set")
    return (
        f"{value} rows remapped for correctable errors (limit {limit})" if value > limit else None
    )


def pcie_width(value: Any, gpu: dict, _host: Host) -> str | None:
    width, widest = value.get("width"), value.get("max_width")
    if not isinstance(width, int) or not isinstance(widest, int):
        return None
    return f"PCIe link x{width} of x{widest}" if width < widest else None


def slowdown(value: Any, _gpu: dict, _host: Host) -> str | None:
    active = [name for bit, name in SLOWDOWN_REASONS.items() if value & bit]
    return f"clocks slowed: {', '.join(active)} (reasons 0x{value:x})" if active else None


def temperature(value: Any, gpu: dict, host: Host) -> str | None:
    slowdown_c = gpu.get("slowdown_c")
    if not isinstance(slowdown_c, int):
        return None
    limit = slowdown_c - host.config.gpu.temperature_margin_c
    return (
        f"{value} °C, at or above {limit} °C "
        f"(slowdown {slowdown_c} °C less gpu_temperature_margin_c)"
        if value >= limit
        else None
    )


def nvlinks(value: Any, _gpu: dict, _host: Host) -> str | None:
    down = [str(link) for link, up in enumerate(value) if not up]
    return f"NVLink(s) {', '.join(down)} of {len(value)} down" if down else None


def _nvlinks_check(host: Host) -> Verdict:
    verdict = per_gpu("nvlinks", nvlinks, what="NVLink state")(host)
    if all(not gpu.get("nvlinks") for gpu in host.state["gpus"]):
        raise NotApplicable("not applicable: no NVLinks on this host's GPUs")
    return verdict


def fabric(value: Any, _gpu: dict, _host: Host) -> str | None:
    state, status = value.get("state"), value.get("status")
    if state == FABRIC_COMPLETED and status == 0:
        return None
    words = FABRIC_STATES.get(state, f"state {state}")
    return f"GPU fabric {words}, status {status} (wanted completed, status 0)"


def _fabric_check(host: Host) -> Verdict:
    """NVSwitch systems only (switches on the PCI bus, or a GPU that reports a fabric)."""
    joined = [
        g for g in _gpus(host) if isinstance(g.get("fabric"), dict) and g["fabric"].get("state")
    ]
    if not host.profile.get("nvswitches") and not joined:
        raise NotApplicable("not applicable: no NVSwitch on this host")
    return per_gpu("fabric", fabric, what="GPU fabric state")(host)


def gpu_count(host: Host) -> Verdict:
    expected = host.config.host.gpu_count
    if expected is None:
        raise NotApplicable("not applicable: host_gpu_count is not set")
    found = _gpus(host)
    if len(found) == expected:
        return Verdict()
    seen = ", ".join(f"{g.get('index')} ({g.get('pci_bus_id', '?')})" for g in found) or "none"
    return Verdict([Finding(f"{len(found)} GPU(s) seen ({seen}), host_gpu_count is {expected}")])


def driver_version(host: Host) -> Verdict:
    """The driver NVML reports is the configured branch (and version, where pinned)."""
    driver = host.config.driver
    running = loaded_driver(host.state)
    if not running:
        return Verdict([Finding(
            "no NVIDIA driver installed or loaded (no NVML, no nvidia module, no "
            "libnvidia-ml.so.1 in the loader's cache, /usr/lib*, /usr/local/nvidia)"
        )])  # fmt: skip
    if running.split(".")[0] != driver.branch:
        return Verdict([Finding(f"driver {running} is not branch {driver.branch} (driver_branch)")])
    if driver.version and running != driver.version:
        return Verdict([Finding(f"driver {running} is not {driver.version} (driver_version)")])
    return Verdict()


def cuda_version(host: Host) -> Verdict:
    """The driver's CUDA version is at least what the vLLM image needs."""
    needed = cuda_needed(host.config)
    if needed is None:
        raise NotApplicable(
            f"not applicable: the CUDA version {host.config.vllm.image} needs is not known: "
            "set gpu_min_cuda_driver"
        )
    _gpus(host)
    has = cuda_driver(host.state)
    if has is None:
        raise NotApplicable(
            "not applicable: the CUDA driver version is not read by the nvidia-smi fallback"
        )
    if has >= needed:
        return Verdict()
    return Verdict(
        [
            Finding(
                f"the driver supports CUDA {has[0]}.{has[1]}, {host.config.vllm.image} needs "
                f"{needed[0]}.{needed[1]} (gpu_min_cuda_driver)"
            )
        ]
    )


_PCI_TAIL = re.compile(r"([0-9a-f]{2}:[0-9a-f]{2})(?:\.[0-9a-f])?$")


def _bus_key(bus: str) -> str:
    """The bus:device part both Xid lines (PCI:0000:18:00) and NVML (00000000:18:00.0) name."""
    match = _PCI_TAIL.search(bus.lower())
    return match.group(1) if match else bus.lower()


def xids(host: Host) -> Verdict:
    """No fatal Xid (a setting: gpu_fatal_xids) in the kernel log since boot; the others are
    reported, not failed (application faults: 13, 31, 43, 45…)."""
    fatal = set(host.config.gpu.fatal_xids)
    index = {
        _bus_key(g.get("pci_bus_id", "")): g
        for g in host.state["gpus"]
        if isinstance(g.get("pci_bus_id"), str)
    }
    verdict = Verdict()
    for xid in host.state["xids"]:
        gpu = index.get(_bus_key(xid["pci"]), {})
        where = Finding(
            f"Xid {xid['code']} in the kernel log: {xid['line']}",
            gpu.get("index"),
            gpu.get("pci_bus_id", xid["pci"]),
        )
        if xid["code"] in fatal:
            verdict.findings.append(where)
        else:
            verdict.notes.append(str(where))
    return verdict


def pcie_gen_notes(host: Host) -> list[str]:
    """PCIe generation below its max: normal at idle (the link trains down), so reported only."""
    notes = []
    for gpu in host.state["gpus"]:
        pcie = gpu.get("pcie") if isinstance(gpu.get("pcie"), dict) else {}
        gen, top = pcie.get("gen"), pcie.get("max_gen")
        if isinstance(gen, int) and isinstance(top, int) and gen < top:
            notes.append(
                f"GPU {gpu.get('index')} ({gpu.get('pci_bus_id')}): PCIe gen{gen} of "
                f"gen{top} (idle links train down)"
            )
    return notes


def _pcie_check(host: Host) -> Verdict:
    verdict = per_gpu("pcie", pcie_width, what="PCIe link width")(host)
    verdict.notes += pcie_gen_notes(host)
    return verdict


# concern -> check; each is one verify check (tests/verify/test_gpu.py), in this order.
CONCERNS: dict[str, Callable[[Host], Verdict]] = {
    "gpu_count": gpu_count,
    "driver_version": driver_version,
    "cuda_version": cuda_version,
    "persistence": per_gpu("persistence", persistence, what="persistence mode"),
    "ecc_enabled": per_gpu("ecc_mode", ecc_mode, what="ECC mode"),
    "ecc_uncorrected": per_gpu(
        "ecc_uncorrected_volatile", ecc_uncorrected, what="uncorrected ECC errors"
    ),
    "retired_pages_pending": per_gpu(
        "retired_pages_pending", retired_pending, what="page retirement"
    ),
    "row_remap_pending": per_gpu("remapped_rows.pending", remap_pending, what="row remapping"),
    "row_remap_failure": per_gpu("remapped_rows.failure", remap_failure, what="row remapping"),
    "row_remap_correctable": per_gpu(
        "remapped_rows.correctable", remap_correctable, what="row remapping"
    ),
    "pcie_width": _pcie_check,
    "clock_slowdown": per_gpu("throttle_reasons", slowdown, what="clock event reasons"),
    "temperature": per_gpu("temperature_c", temperature, what="temperature"),
    "nvlink": _nvlinks_check,
    "fabric": _fabric_check,
    "xid": xids,
}


def verdict(name: str, host: Host) -> Verdict:
    """Concern ``name`` on ``host``: its verdict, a host whose GPUs could not be read failing
    it with the reason; raises NotApplicable where it does not apply."""
    try:
        return CONCERNS[name](host)
    except Unreadable as why:
        return Verdict([Finding(f"the GPUs could not be read: {why}")])


def judge(host: Host) -> dict[str, Verdict | str]:
    """Every concern's verdict, or why it does not apply (the fleet report's GPU section)."""
    out: dict[str, Verdict | str] = {}
    for name in CONCERNS:
        try:
            out[name] = verdict(name, host)
        except NotApplicable as why:
            out[name] = str(why)
    return out


def dcgm_failures(output: str) -> list[str]:
    """The tests ``dcgmi diag`` reports failed: its table rows whose result is Fail, as
    "<test>: Fail" (rows look like ``|  Memory   | Fail  |`` or ``| Deployment | Fail - ...``)."""
    failed = []
    for row in output.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[1].startswith("Fail"):
            failed.append(f"{cells[0]}: {cells[1]}")
    return failed
