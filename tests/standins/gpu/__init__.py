"""STAND-IN GPUs for gpufleet's tests and lab, never for a real fleet.

A JSON description of a host's NVIDIA GPUs (shape: README.md beside this file) drives three
stand-ins: ``libnvidia-ml.so.1`` (libnvidia-ml.c, built by build.py; real pynvml loads it
through ctypes), ``nvidia-smi`` and ``dmesg`` (scripts beside this file). The lab's GPU host
also derives its sysfs PCI ids and module version from it (``sysfs_files``).

    description = load("h100")                 # the recorded H100 (issue 16), healthy
    sick = with_fault(description, "pcie_x8")  # a copy with one fault
    for name in faults_for(description): ...   # the faults this host can show

Every fault changes only what its own check reads, on one GPU (the last, unless ``gpu=``
says which), so exactly that check should fail.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VARIANTS = ("h100", "hgx8")
NVIDIA_SMI = HERE / "nvidia-smi"
DMESG = HERE / "dmesg"
NVIDIA_VENDOR = "0x10de"
DEFAULT_PATH = "/etc/gpufleet-standin/gpus.json"  # where the library looks on a lab host
ENV = "GPUFLEET_STANDIN_GPUS"  # ...unless this names another file

FAULTS = (
    "ecc_uncorrected",  # 1 uncorrected ECC error, volatile and aggregate
    "retired_page_pending",  # retired pages supported, and a retirement pending
    "row_remap_pending",  # a row remap pending (the GPU needs a reset)
    "row_remap_failure",  # a row remap failed (RMA)
    "pcie_x8",  # PCIe x8 of x16
    "thermal_throttle",  # HW thermal slowdown active
    "nvlink_down",  # the GPU's last NVLink down
    "fabric_incomplete",  # GPU fabric state not started (fabric manager not running)
    "xid_79",  # "GPU has fallen off the bus" in the kernel log
    "persistence_off",  # persistence mode disabled
    "gpu_missing",  # on the PCI bus, not in NVML (failed to initialise)
    "driver_branch",  # driver 570.195.03 loaded, not 580
    "cuda_older",  # CUDA driver 12.2
)
OTHER_DRIVER = "570.195.03"
OLDER_CUDA = 12020
# NVML's clock event reasons (pynvml nvmlClocksEventReason*)
HW_THERMAL_SLOWDOWN = 0x40
FABRIC_NOT_STARTED = 1  # NVML_GPU_FABRIC_STATE_NOT_STARTED
FABRIC_COMPLETED = 3


def load(variant: str) -> dict[str, Any]:
    """A fresh copy of a shipped description (h100 or hgx8)."""
    if variant not in VARIANTS:
        raise ValueError(f"no STAND-IN GPU description {variant!r}: one of {VARIANTS}")
    return json.loads((HERE / f"{variant}.json").read_text())


def dumps(description: dict[str, Any]) -> str:
    """The description as JSON, one line per GPU member (lists of scalars kept on one line)."""
    return _dump(description, 0) + "\n"


def _dump(value: Any, depth: int) -> str:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_dump(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dump(v, depth + 1) for v in value) + f"\n{pad}]"
    long_text = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if long_text and len(json.dumps(value)) > 80:  # the kernel log
        return "[\n" + ",\n".join(inner + json.dumps(v) for v in value) + f"\n{pad}]"
    return json.dumps(value)


def has_nvlinks(description: dict[str, Any]) -> bool:
    return any(isinstance(g.get("nvlinks"), list) and g["nvlinks"] for g in description["gpus"])


def has_fabric(description: dict[str, Any]) -> bool:
    return any(isinstance(g.get("fabric"), dict) for g in description["gpus"])


def faults_for(description: dict[str, Any]) -> tuple[str, ...]:
    """The faults this host can show: NVLink and fabric faults need GPUs that have them."""
    return tuple(
        name
        for name in FAULTS
        if (name != "nvlink_down" or has_nvlinks(description))
        and (name != "fabric_incomplete" or has_fabric(description))
    )


def pci_slot(bus_id: str) -> str:
    """sysfs's name for an NVML bus id: 00000000:18:00.0 -> 0000:18:00.0."""
    domain, rest = bus_id.split(":", 1)
    return f"{int(domain, 16):04x}:{rest.lower()}"


def _ecc_uncorrected(host, target):
    target["ecc_volatile"] += 1
    target["ecc_aggregate"] += 1


def _retired_page_pending(host, target):
    unsupported = target.get("unsupported", [])
    target["unsupported"] = [f for f in unsupported if f != "retired_pages_pending"]
    target["retired_pages_pending"] = 1


def _nvlink_down(host, target):
    if not target.get("nvlinks"):
        raise ValueError("this GPU has no NVLink to take down")
    target["nvlinks"][-1] = False


def _fabric_incomplete(host, target):
    if not isinstance(target.get("fabric"), dict):
        raise ValueError("this GPU has no fabric")
    target["fabric"]["state"] = FABRIC_NOT_STARTED


def _xid_79(host, target):
    slot = pci_slot(target["pci_bus_id"]).rsplit(".", 1)[0]
    host.setdefault("kernel_log", []).append(
        f"[ 8416.203158] NVRM: Xid (PCI:{slot}): 79, pid='<unknown>', name=<unknown>, "
        "GPU has fallen off the bus."
    )


def _gpu_missing(host, target):
    host["gpus"].remove(target)
    host.setdefault("pci_devices", []).append(_pci_entry(target))


def _driver_branch(host, target):
    old = host["driver"]
    host["driver"] = host["module_version"] = OTHER_DRIVER
    host["kernel_log"] = [line.replace(old, OTHER_DRIVER) for line in host.get("kernel_log", [])]


def _set(**values):
    def change(host, target):
        target.update(values)

    return change


def _item(field, index, value):
    def change(host, target):
        target[field][index] = value

    return change


def _cuda_older(host, target):
    host["cuda_driver"] = OLDER_CUDA


def _thermal_throttle(host, target):
    target["throttle_reasons"] |= HW_THERMAL_SLOWDOWN


_FAULT_CHANGES = {
    "ecc_uncorrected": _ecc_uncorrected,
    "retired_page_pending": _retired_page_pending,
    "row_remap_pending": _item("remapped_rows", 2, 1),
    "row_remap_failure": _item("remapped_rows", 3, 1),
    "pcie_x8": _set(pcie_width=8),
    "thermal_throttle": _thermal_throttle,
    "nvlink_down": _nvlink_down,
    "fabric_incomplete": _fabric_incomplete,
    "xid_79": _xid_79,
    "persistence_off": _set(persistence=0),
    "gpu_missing": _gpu_missing,
    "driver_branch": _driver_branch,
    "cuda_older": _cuda_older,
}
assert tuple(_FAULT_CHANGES) == FAULTS


def with_fault(description: dict[str, Any], name: str, gpu: int = -1) -> dict[str, Any]:
    """A copy of ``description`` with one fault (a name from FAULTS) on GPU ``gpu``."""
    if name not in FAULTS:
        raise ValueError(f"no fault {name!r}: one of {FAULTS}")
    if name not in faults_for(description):
        raise ValueError(f"fault {name!r} needs GPUs with NVLinks and a fabric (hgx8)")
    if not description["gpus"]:
        raise ValueError("the description has no GPU to put a fault on")
    sick = copy.deepcopy(description)
    _FAULT_CHANGES[name](sick, sick["gpus"][gpu])
    return sick


def module_version(description: dict[str, Any]) -> str:
    return description.get("module_version") or description["driver"]


def pci_devices(description: dict[str, Any]) -> list[dict[str, str]]:
    """Every NVIDIA PCI function of the host: its GPUs, then the rest (NVSwitches...)."""
    found = [_pci_entry(gpu) for gpu in description["gpus"]]
    return found + list(description.get("pci_devices", []))


def _pci_entry(gpu: dict[str, Any]) -> dict[str, str]:
    return {
        "bus_id": pci_slot(gpu["pci_bus_id"]),
        "class": gpu.get("pci_class", "0x030200"),
        "device": gpu.get("pci_device_id", "0x2330"),
    }


def proc_version(description: dict[str, Any]) -> str:
    """/proc/driver/nvidia/version as the open kernel module writes it."""
    return (
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "
        f"{module_version(description)}  Release Build  (gpufleet STAND-IN)\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14+deb12u1)\n"
    )


def sysfs_files(description: dict[str, Any]) -> dict[str, str]:
    """The sysfs files the project reads, by path under /sys: PCI ids and the module version."""
    files = {"module/nvidia/version": module_version(description) + "\n"}
    for device in pci_devices(description):
        base = f"bus/pci/devices/{device['bus_id']}"
        files[f"{base}/vendor"] = NVIDIA_VENDOR + "\n"
        files[f"{base}/class"] = device["class"] + "\n"
        files[f"{base}/device"] = device["device"] + "\n"
    return files
