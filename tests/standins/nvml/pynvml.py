"""STAND-IN for NVIDIA's ``pynvml`` module, for the unit tests of the NVML probe only (never on
a host): the calls operations/driver/nvml_probe.py makes, answered from a JSON description of
the GPUs in ``$GPUFLEET_STANDIN_GPUS``, with NVML's own error codes. Modelled on a real H100
host read earlier (recorded in issue 16): driver 580.159.04, CUDA 13.0, persistence and ECC
on, 0 uncorrected errors, retired pages NotSupported (H100 remaps rows), PCIe gen5 x16, no
NVLink, no fabric, MIG off. A field listed in a GPU's "unsupported" answers NOT_SUPPORTED.
"""

import json
import os

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_UNKNOWN = 999
NVML_TEMPERATURE_GPU = 0
NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_NVLINK_MAX_LINKS = 18
_MESSAGES = {3: "Not Supported", 12: "NVML Shared Library Not Found", 999: "Unknown Error"}


class NVMLError(Exception):
    def __init__(self, value):
        self.value = value

    def __str__(self):
        return _MESSAGES.get(self.value, f"NVML error {self.value}")


def _host():
    path = os.environ.get("GPUFLEET_STANDIN_GPUS")
    if not path:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    with open(path) as file:
        return json.load(file)


def _field(handle, name):
    if name in handle.get("unsupported", ()):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    if name in handle.get("broken", ()):
        raise NVMLError(NVML_ERROR_UNKNOWN)
    return handle[name]


class c_nvmlGpuFabricInfo_t:  # noqa: N801 (NVML's name)
    state = 0
    status = 0


class _Pci:
    def __init__(self, bus_id):
        self.busId = bus_id.encode()  # noqa: N815 (NVML's name)


def nvmlInit():
    _host()


def nvmlShutdown():
    pass


def nvmlSystemGetDriverVersion():
    return _host()["driver"]


def nvmlSystemGetCudaDriverVersion():
    return _host()["cuda_driver"]


def nvmlDeviceGetCount():
    return len(_host()["gpus"])


def nvmlDeviceGetHandleByIndex(index):
    return _host()["gpus"][index]


def _simple(name):
    return lambda handle, *args: _field(handle, name)


nvmlDeviceGetName = _simple("name")
nvmlDeviceGetUUID = _simple("uuid")
nvmlDeviceGetVbiosVersion = _simple("vbios")
nvmlDeviceGetPersistenceMode = _simple("persistence")
nvmlDeviceGetEccMode = _simple("ecc_mode")
nvmlDeviceGetRetiredPagesPendingStatus = _simple("retired_pages_pending")
nvmlDeviceGetRemappedRows = _simple("remapped_rows")
nvmlDeviceGetCurrPcieLinkGeneration = _simple("pcie_gen")
nvmlDeviceGetMaxPcieLinkGeneration = _simple("pcie_max_gen")
nvmlDeviceGetCurrPcieLinkWidth = _simple("pcie_width")
nvmlDeviceGetMaxPcieLinkWidth = _simple("pcie_max_width")
nvmlDeviceGetPcieReplayCounter = _simple("pcie_replays")
nvmlDeviceGetCurrentClocksEventReasons = _simple("throttle_reasons")
nvmlDeviceGetPowerUsage = _simple("power_mw")
nvmlDeviceGetEnforcedPowerLimit = _simple("power_limit_mw")
nvmlDeviceGetMigMode = _simple("mig_mode")


def nvmlDeviceGetPciInfo(handle):
    return _Pci(_field(handle, "pci_bus_id"))


def nvmlDeviceGetTotalEccErrors(handle, error_type, counter):
    name = "ecc_volatile" if counter == NVML_VOLATILE_ECC else "ecc_aggregate"
    return _field(handle, name)


def nvmlDeviceGetTemperature(handle, sensor):
    return _field(handle, "temperature_c")


def nvmlDeviceGetTemperatureThreshold(handle, threshold):
    return _field(handle, "slowdown_c")


def nvmlDeviceGetNvLinkState(handle, link):
    links = _field(handle, "nvlinks")
    if link >= len(links):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return links[link]


def nvmlDeviceGetGpuFabricInfo(handle, info):
    fabric = _field(handle, "fabric")
    info.state, info.status = fabric["state"], fabric["status"]
    return 0
