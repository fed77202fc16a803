"""The NVML probe: run on a GPU host by the host's own ``python3``, with the controller's
``pynvml`` (NVIDIA's nvidia-ml-py, one pure-Python file) beside it, so nothing is installed
on the host. pynvml loads the driver's ``libnvidia-ml.so.1`` through ctypes wherever the
dynamic loader finds it (ldconfig's cache, LD_LIBRARY_PATH), not from a fixed path.

Prints one JSON document: ``{"probe": "nvml", "driver": …, "cuda_driver": …, "gpus": [...]}``,
or ``{"probe": "nvml", "error": …}`` when NVML cannot start (no driver, library not found).
A field the GPU does not support is ``{"unsupported": true}``, and a field whose call fails
otherwise is ``{"error": "…"}``; neither stops the probe, so one odd GPU never hides the
others. Standalone by design: it imports only the standard library and pynvml (operations/
is not on the host).
"""

import json
import sys

import pynvml as nv

UNSUPPORTED = {
    getattr(nv, name)
    for name in ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND")
    if hasattr(nv, name)
}


def text(value):
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def read(call, *args):
    """``call(*args)``, or what the GPU said instead of a value."""
    try:
        return text(call(*args))
    except nv.NVMLError as error:
        if getattr(error, "value", None) in UNSUPPORTED:
            return {"unsupported": True}
        return {"error": str(error)}


def ecc_errors(handle, counter):
    return read(nv.nvmlDeviceGetTotalEccErrors, handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                counter)  # fmt: skip


def remapped_rows(handle):
    rows = read(nv.nvmlDeviceGetRemappedRows, handle)
    if isinstance(rows, dict):
        return rows
    correctable, uncorrectable, pending, failure = rows
    return {"correctable": correctable, "uncorrectable": uncorrectable,
            "pending": bool(pending), "failure": bool(failure)}  # fmt: skip


def ecc_mode(handle):
    mode = read(nv.nvmlDeviceGetEccMode, handle)
    return mode if isinstance(mode, dict) else {"current": bool(mode[0]), "pending": bool(mode[1])}


def throttle_reasons(handle):
    call = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
    return read(call or nv.nvmlDeviceGetCurrentClocksThrottleReasons, handle)


def nvlinks(handle):
    """State of each NVLink the GPU has (the first unsupported link ends the list)."""
    links = []
    for link in range(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)):
        state = read(nv.nvmlDeviceGetNvLinkState, handle, link)
        if isinstance(state, dict):
            break
        links.append(bool(state))
    return links


def fabric(handle):
    info = nv.c_nvmlGpuFabricInfo_t()
    done = read(nv.nvmlDeviceGetGpuFabricInfo, handle, nv.byref(info))
    return done if isinstance(done, dict) else {"state": info.state, "status": info.status}


def pci(handle):
    info = read(nv.nvmlDeviceGetPciInfo, handle)
    return info if isinstance(info, dict) else text(info.busId)


def gpu(index):
    handle = nv.nvmlDeviceGetHandleByIndex(index)
    slowdown = nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
    return {
        "index": index,
        "name": read(nv.nvmlDeviceGetName, handle),
        "uuid": read(nv.nvmlDeviceGetUUID, handle),
        "pci_bus_id": pci(handle),
        "vbios": read(nv.nvmlDeviceGetVbiosVersion, handle),
        "persistence": read(nv.nvmlDeviceGetPersistenceMode, handle),
        "ecc_mode": ecc_mode(handle),
        "ecc_uncorrected_volatile": ecc_errors(handle, nv.NVML_VOLATILE_ECC),
        "ecc_uncorrected_aggregate": ecc_errors(handle, nv.NVML_AGGREGATE_ECC),
        "retired_pages_pending": read(nv.nvmlDeviceGetRetiredPagesPendingStatus, handle),
        "remapped_rows": remapped_rows(handle),
        "pcie": {
            "gen": read(nv.nvmlDeviceGetCurrPcieLinkGeneration, handle),
            "max_gen": read(nv.nvmlDeviceGetMaxPcieLinkGeneration, handle),
            "width": read(nv.nvmlDeviceGetCurrPcieLinkWidth, handle),
            "max_width": read(nv.nvmlDeviceGetMaxPcieLinkWidth, handle),
            "replays": read(nv.nvmlDeviceGetPcieReplayCounter, handle),
        },
        "throttle_reasons": throttle_reasons(handle),
        "temperature_c": read(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU),
        "slowdown_c": read(nv.nvmlDeviceGetTemperatureThreshold, handle, slowdown),
        "power_mw": read(nv.nvmlDeviceGetPowerUsage, handle),
        "power_limit_mw": read(nv.nvmlDeviceGetEnforcedPowerLimit, handle),
        "nvlinks": nvlinks(handle),
        "fabric": fabric(handle),
        "mig_mode": read(nv.nvmlDeviceGetMigMode, handle),
    }


def probe():
    try:
        nv.nvmlInit()
    except nv.NVMLError as error:
        return {"probe": "nvml", "error": str(error)}
    try:
        return {
            "probe": "nvml",
            "driver": read(nv.nvmlSystemGetDriverVersion),
            "cuda_driver": read(nv.nvmlSystemGetCudaDriverVersion),
            "gpus": [gpu(index) for index in range(nv.nvmlDeviceGetCount())],
        }
    finally:
        nv.nvmlShutdown()


if __name__ == "__main__":
    json.dump(probe(), sys.stdout)
    sys.stdout.write("\n")
