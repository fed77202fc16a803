"""GPU health (operations/driver/health.py) on driver states shaped as the NVML probe prints
them, modelled on the recorded H100 host of issue 16 and an 8-GPU HGX with NVSwitches: a
healthy host passes every concern; each fault fails exactly its own concern, with a message
naming the GPU, the value and the limit; unsupported fields are not failures; the
nvidia-smi fallback and an unreadable NVML are handled without a crash."""

from __future__ import annotations

import copy
import json

import pytest

from operations.config.load import load_config
from operations.driver import health
from operations.driver.facts import parse_driver_state
from tests.plan.harness import gateway_off

H100_GPU = {
    "index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5e0c", "pci_bus_id":
    "00000000:18:00.0", "vbios": "96.00.99.00.01", "persistence": 1,
    "ecc_mode": {"current": True, "pending": True}, "ecc_uncorrected_volatile": 0,
    "ecc_uncorrected_aggregate": 0, "retired_pages_pending": {"unsupported": True},
    "remapped_rows": {"correctable": 0, "uncorrectable": 0, "pending": False, "failure": False},
    "pcie": {"gen": 5, "max_gen": 5, "width": 16, "max_width": 16, "replays": 0},
    "throttle_reasons": 0, "temperature_c": 34, "slowdown_c": 87, "power_mw": 71000,
    "power_limit_mw": 700000, "nvlinks": [], "fabric": {"state": 0, "status": 0},
    "mig_mode": [0, 0],
}  # fmt: skip
H100 = {"probe": "nvml", "driver": "580.159.04", "cuda_driver": 13000, "gpus": [H100_GPU]}


def hgx() -> dict:
    gpus = []
    for index in range(8):
        gpu = copy.deepcopy(H100_GPU) | {"index": index, "name": "NVIDIA H100 80GB HBM3"}
        gpu["pci_bus_id"] = f"00000000:{0x18 + 0x10 * index:02X}:00.0"
        gpu["nvlinks"], gpu["fabric"] = [True] * 18, {"state": 3, "status": 0}
        gpus.append(gpu)
    return H100 | {"gpus": gpus}


def state_of(doc: dict, *extra: str) -> dict:
    lines = ["nvml_version=580.159.04", "module_loaded=580.159.04", "nvml=" + json.dumps(doc)]
    return parse_driver_state([*lines, *extra])


def config_of(**data):
    config, problems = load_config("gpu-1", gateway_off(data))
    assert problems == []
    return config


def failing(doc: dict, *extra: str, gpus: int = 1, nvswitches: bool = False) -> dict[str, str]:
    """{concern: message} of the concerns that fail on this host."""
    config = config_of(host_gpu_count=gpus, driver_branch="580")
    profile = {"nvswitches": ["0000:05:00.0"] if nvswitches else []}
    verdicts = health.judge(health.Host(config, state_of(doc, *extra), profile))
    return {
        name: "; ".join(str(f) for f in verdict.findings)
        for name, verdict in verdicts.items()
        if isinstance(verdict, health.Verdict) and verdict.findings
    }


def sick(doc: dict, gpu: int, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    target = doc["gpus"][gpu]
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    target[last] = value
    return doc


XID_79 = "xid=NVRM: Xid (PCI:0000:18:00): 79, pid=1911, name=python3, GPU has fallen off the bus."
# fault -> (host description, extra fact lines, the one concern it must fail, words in the message)
FAULTS = {
    "uncorrected ECC error": (sick(H100, 0, "ecc_uncorrected_volatile", 2), (), "ecc_uncorrected",
                              "GPU 0 (00000000:18:00.0): 2 uncorrected"),
    "pending page retirement": (sick(H100, 0, "retired_pages_pending", 1), (),
                                "retired_pages_pending", "page retirement pending"),
    "pending row remap": (sick(H100, 0, "remapped_rows.pending", True), (), "row_remap_pending",
                          "needs a reset"),
    "row remap failure": (sick(H100, 0, "remapped_rows.failure", True), (), "row_remap_failure",
                          "RMA"),
    "PCIe x8 of x16": (sick(H100, 0, "pcie.width", 8), (), "pcie_width", "x8 of x16"),
    "thermal throttle": (sick(H100, 0, "throttle_reasons", 0x40), (), "clock_slowdown",
                         "hardware thermal slowdown"),
    "Xid 79": (H100, (XID_79,), "xid", "GPU 0 (00000000:18:00.0): Xid 79"),
    "persistence off": (sick(H100, 0, "persistence", 0), (), "persistence",
                        "persistence mode is off"),
    "driver branch": (H100 | {"driver": "570.172.08"}, (), "driver_version",
                      "570.172.08 is not branch 580"),
    "CUDA too old": (H100 | {"cuda_driver": 12020}, (), "cuda_version",
                     "supports CUDA 12.2, vllm/vllm-openai:v0.31.0 needs 13.0"),
}  # fmt: skip
HGX_FAULTS = {
    "one NVLink down": (sick(hgx(), 3, "nvlinks", [True] * 17 + [False]), "nvlink",
                        "GPU 3 (00000000:48:00.0): NVLink(s) 17 of 18 down"),
    "fabric not completed": (sick(hgx(), 5, "fabric", {"state": 2, "status": 0}), "fabric",
                             "GPU 5 (00000000:68:00.0): GPU fabric in progress"),
    "one GPU missing": (hgx() | {"gpus": hgx()["gpus"][:7]}, "gpu_count",
                        "7 GPU(s) seen"),
}  # fmt: skip


def test_a_healthy_h100_and_a_healthy_hgx_fail_no_concern():
    assert failing(H100) == {}
    assert failing(hgx(), gpus=8, nvswitches=True) == {}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_h100_fault_fails_exactly_its_concern(fault):
    doc, extra, concern, words = FAULTS[fault]
    found = failing(doc, *extra)
    assert list(found) == [concern]
    assert words in found[concern]


@pytest.mark.parametrize("fault", HGX_FAULTS)
def test_each_hgx_fault_fails_exactly_its_concern(fault):
    doc, concern, words = HGX_FAULTS[fault]
    found = failing(doc, gpus=8, nvswitches=True)
    assert list(found) == [concern]
    assert words in found[concern]


def _outcome(doc, concern, *extra, **data):
    config = config_of(**data)
    try:
        return health.CONCERNS[concern](health.Host(config, state_of(doc, *extra), {}))
    except health.NotApplicable as why:
        return str(why)


def test_concerns_the_h100_lacks_are_not_applicable_not_passed():
    assert "no NVLinks" in _outcome(H100, "nvlink")
    assert "no NVSwitch" in _outcome(H100, "fabric")
    assert "gpu_max_correctable_remapped_rows is not set" in _outcome(H100, "row_remap_correctable")
    assert "host_gpu_count is not set" in _outcome(H100, "gpu_count")
    # retired pages: H100 answers NOT_SUPPORTED (it remaps rows instead)
    assert "no GPU of this host supports page retirement" in _outcome(H100, "retired_pages_pending")


def test_thresholds_are_settings():
    hot = sick(H100, 0, "temperature_c", 80)
    assert _outcome(hot, "temperature").findings == []  # 87 - 5 = 82
    (finding,) = _outcome(hot, "temperature", gpu_temperature_margin_c=10).findings
    assert "80 °C, at or above 77 °C" in finding.reason
    remapped = sick(H100, 0, "remapped_rows.correctable", 40)
    (finding,) = _outcome(remapped, "row_remap_correctable",
                          gpu_max_correctable_remapped_rows=32).findings  # fmt: skip
    assert "40 rows remapped for correctable errors (limit 32)" in finding.reason
    assert _outcome(H100, "xid", XID_79, gpu_fatal_xids="48,63").findings == []
    assert _outcome(H100, "cuda_version", gpu_min_cuda_driver="13.1").findings


@pytest.mark.parametrize("value", ["79x", 0, True, [1.5], [0], [1001], "48,\n79"])
def test_a_bad_xid_list_is_refused_naming_the_setting(value):
    config, problems = load_config("gpu-1", {"gpu_fatal_xids": value})
    assert config is None and problems[0].key.startswith("gpu_fatal_xids")


def test_application_xids_are_reported_not_failed():
    verdict = _outcome(H100, "xid", "xid=NVRM: Xid (PCI:0000:18:00): 13, pid=4, Graphics Exception")
    assert verdict.findings == [] and "Xid 13" in verdict.notes[0]


def test_pcie_gen_below_max_is_a_note_not_a_failure():
    verdict = _outcome(sick(H100, 0, "pcie.gen", 1), "pcie_width")
    assert verdict.findings == [] and "PCIe gen1 of gen5" in verdict.notes[0]


def test_a_field_that_could_not_be_read_fails_its_concern():
    doc = sick(H100, 0, "ecc_uncorrected_volatile", {"error": "Unknown Error"})
    assert "could not be read: Unknown Error" in failing(doc)["ecc_uncorrected"]


def test_an_unreadable_nvml_fails_every_gpu_concern_with_the_reason():
    found = failing({"probe": "nvml", "error": "Driver/library version mismatch"})
    assert "persistence" in found and "ecc_uncorrected" in found
    assert "NVML: Driver/library version mismatch" in found["persistence"]
    assert "xid" not in found  # the kernel log needs no NVML


def test_the_nvidia_smi_fallback_judges_what_it_reads():
    lines = ["nvml_version=580.159.04", 'nvml={"probe": "none", "why": "python3 is not installed"}',
             "gpu=0, 00000000:18:00.0, NVIDIA H100 80GB HBM3, 580.159.04, Disabled, 0, [N/A]",
             "nvidia_smi_rc=0"]  # fmt: skip
    state = parse_driver_state(lines)
    assert state["probe"] == "nvidia-smi"
    host = health.Host(config_of(), state, {})
    (finding,) = health.CONCERNS["persistence"](host).findings
    assert finding.gpu == 0 and finding.bus == "00000000:18:00.0"
    with pytest.raises(health.NotApplicable, match="nvidia-smi fallback"):
        health.CONCERNS["pcie_width"](host)


@pytest.mark.parametrize(
    ("image", "needed"),
    [("vllm/vllm-openai:v0.11.0", (12, 8)), ("vllm/vllm-openai:v0.6.3.post1", (12, 4)),
     ("registry.example/vllm:v0.9.2@sha256:" + "a" * 64, (12, 8)),
     ("vllm/vllm-openai:v0.11.1", (12, 9)), ("vllm/vllm-openai:v0.19.1-cu130", (13, 0)),
     ("vllm/vllm-openai:v0.21.0", (13, 0)), ("mirror.internal:5000/vllm:v0.10.1", (12, 8)),
     ("vllm/vllm-openai:v0.4.2", None), ("vllm/vllm-openai:nightly", None),
     ("vllm/vllm-openai:v9.1.0", None), ("vllm/vllm-openai:v0.30.0", (13, 0)),
     ("vllm/vllm-openai:v0.31.0", (13, 0)), ("vllm/vllm-openai:v0.32.0", None)],
)  # fmt: skip
def test_the_cuda_an_image_needs_follows_its_tag(image, needed):
    assert health.cuda_needed(config_of(vllm_image=image, vllm_allow_latest=True)) == needed


def test_dcgm_diag_failures_are_read_from_its_table():
    table = """+---------------------------+------------------------------------------------+
| Diagnostic                | Result                                         |
+===========================+================================================+
|-----  Deployment  --------+------------------------------------------------|
| Denylist                  | Pass                                           |
| Persistence Mode          | Fail - GPU 0 is not in persistence mode        |
| Environment Variables     | Pass                                           |
"""
    assert health.dcgm_failures(table) == [
        "Persistence Mode: Fail - GPU 0 is not in persistence mode"
    ]
