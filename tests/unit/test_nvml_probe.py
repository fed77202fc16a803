"""The NVML probe (operations/driver/nvml_probe.py) run as on a host: by a separate python3,
from a temporary directory, with NVIDIA's real pynvml (the controller's, as the command
carries it) loading the STAND-IN libnvidia-ml.so.1 of tests/standins/gpu through ctypes
(LD_LIBRARY_PATH), its GPUs from a JSON description modelled on the recorded H100 host.
Without the stand-in on the library path, this machine has no NVIDIA driver: that must be a
clean answer, not a crash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

from operations.driver import nvml
from tests.standins import gpu as standin
from tests.standins.gpu.build import build_library

# Regression: the probe once passed pynvml's c_nvmlGpuFabricInfo_t by value (ctypes copies a
# Structure argument): NVML wrote through a stray pointer and the probe died (SIGSEGV) on
# every GPU whose fabric NVML reports (every HGX). The hgx8 tests below are its tests.


@pytest.fixture(scope="session")
def library(tmp_path_factory) -> Path:
    return build_library(tmp_path_factory.mktemp("standin-gpu"))


def probe_box(tmp_path) -> Path:
    """A directory holding the real pynvml and the probe, as the host command unpacks them."""
    box = tmp_path / "probe"
    box.mkdir(exist_ok=True)
    shutil.copy(pynvml.__file__, box / "pynvml.py")
    shutil.copy(nvml.PROBE, box / "probe.py")
    return box


def run_raw(tmp_path, library, description) -> subprocess.CompletedProcess:
    box = probe_box(tmp_path)
    gpus = tmp_path / "gpus.json"
    gpus.write_text(description if isinstance(description, str) else json.dumps(description))
    env = {"PATH": os.environ["PATH"], standin.ENV: str(gpus)}
    if library is not None:
        env["LD_LIBRARY_PATH"] = str(library.parent)
    return subprocess.run([sys.executable, str(box / "probe.py")], capture_output=True,
                          text=True, env=env, cwd=box, timeout=30)  # fmt: skip


def run_probe(tmp_path, library, description) -> dict:
    """The probe's document for a description (exit 0 asserted)."""
    done = run_raw(tmp_path, library, description)
    assert done.returncode == 0, done.stderr
    return nvml.parse(done.stdout.splitlines())


def test_a_healthy_h100_reads_whole_and_unsupported_is_not_a_failure(tmp_path, library):
    found = run_probe(tmp_path, library, standin.load("h100"))
    assert found["probe"] == "nvml" and found["driver"] == "580.159.04"
    assert found["cuda_driver"] == 13000
    (gpu,) = found["gpus"]
    assert gpu["index"] == 0 and gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["pci_bus_id"] == "00000000:18:00.0" and gpu["uuid"].startswith("GPU-")
    assert gpu["vbios"] == "96.00.99.00.01" and gpu["persistence"] == 1
    assert gpu["retired_pages_pending"] == {"unsupported": True}  # H100 remaps rows instead
    assert gpu["remapped_rows"] == {"correctable": 0, "uncorrectable": 0, "pending": False,
                                    "failure": False}  # fmt: skip
    assert gpu["ecc_mode"] == {"current": True, "pending": True}
    assert gpu["ecc_uncorrected_volatile"] == 0 and gpu["ecc_uncorrected_aggregate"] == 0
    assert gpu["pcie"] == {"gen": 5, "max_gen": 5, "width": 16, "max_width": 16, "replays": 0}
    assert gpu["throttle_reasons"] == 0
    assert (gpu["temperature_c"], gpu["slowdown_c"]) == (34, 87)
    assert (gpu["power_mw"], gpu["power_limit_mw"]) == (71000, 700000)
    assert gpu["nvlinks"] == [] and gpu["fabric"] == {"unsupported": True}
    assert gpu["mig_mode"] == [0, 0]


def test_a_healthy_hgx_reads_eight_gpus_their_nvlinks_and_the_fabric(tmp_path, library):
    found = run_probe(tmp_path, library, standin.load("hgx8"))
    assert [g["index"] for g in found["gpus"]] == list(range(8))
    assert found["gpus"][7]["pci_bus_id"] == "00000000:DB:00.0"
    for gpu in found["gpus"]:
        assert gpu["nvlinks"] == [True] * 18
        assert gpu["fabric"] == {"state": 3, "status": 0}


def changed(healthy: dict, sick: dict) -> set:
    """What differs: top-level keys, and (GPU index, field) pairs."""
    found = {key for key in healthy.keys() | sick.keys()
             if key != "gpus" and healthy.get(key) != sick.get(key)}  # fmt: skip
    for before, after in zip(healthy["gpus"], sick["gpus"], strict=True):
        found |= {(before["index"], k) for k in before if before[k] != after.get(k)}
    return found


# fault -> (what the probe's document must show on the faulty GPU, what else may change)
SHOWN = {
    "ecc_uncorrected": (lambda g, d: g["ecc_uncorrected_volatile"] == 1
                        and g["ecc_uncorrected_aggregate"] == 1,
                        {"ecc_uncorrected_volatile", "ecc_uncorrected_aggregate"}),
    "retired_page_pending": (lambda g, d: g["retired_pages_pending"] == 1,
                             {"retired_pages_pending"}),
    "row_remap_pending": (lambda g, d: g["remapped_rows"]["pending"] is True, {"remapped_rows"}),
    "row_remap_failure": (lambda g, d: g["remapped_rows"]["failure"] is True, {"remapped_rows"}),
    "pcie_x8": (lambda g, d: (g["pcie"]["width"], g["pcie"]["max_width"]) == (8, 16), {"pcie"}),
    "thermal_throttle": (lambda g, d: g["throttle_reasons"] & 0x40, {"throttle_reasons"}),
    "nvlink_down": (lambda g, d: g["nvlinks"][-1] is False and all(g["nvlinks"][:-1]),
                    {"nvlinks"}),
    "fabric_incomplete": (lambda g, d: g["fabric"]["state"] == 1, {"fabric"}),
    "xid_79": (lambda g, d: True, set()),  # the kernel log, not NVML: test_gpu_standin
    "persistence_off": (lambda g, d: g["persistence"] == 0, {"persistence"}),
    "driver_branch": (lambda g, d: d["driver"] == "570.195.03", {"driver"}),
    "cuda_older": (lambda g, d: d["cuda_driver"] == 12020, {"cuda_driver"}),
}  # fmt: skip


def fault_cases():
    for variant in standin.VARIANTS:
        for fault in standin.faults_for(standin.load(variant)):
            marks = []
            yield pytest.param(variant, fault, marks=marks, id=f"{variant}-{fault}")


@pytest.mark.parametrize(("variant", "fault"), list(fault_cases()))
def test_every_fault_shows_in_the_document_and_nothing_else_moves(tmp_path, library, variant,
                                                                   fault):  # fmt: skip
    healthy_description = standin.load(variant)
    (tmp_path / "healthy").mkdir()
    (tmp_path / "sick").mkdir()
    healthy = run_probe(tmp_path / "healthy", library, healthy_description)
    sick = run_probe(tmp_path / "sick", library, standin.with_fault(healthy_description, fault))
    last = len(healthy["gpus"]) - 1
    if fault == "gpu_missing":
        assert len(sick["gpus"]) == last
        assert [g["pci_bus_id"] for g in sick["gpus"]] == [
            g["pci_bus_id"] for g in healthy["gpus"][:last]
        ]
        return
    shows, fields = SHOWN[fault]
    assert shows(sick["gpus"][last], sick), sick["gpus"][last]
    top = {f for f in fields if f in ("driver", "cuda_driver")}
    assert changed(healthy, sick) == top | {(last, f) for f in fields - top}


def test_every_fault_has_an_expectation():
    assert set(SHOWN) | {"gpu_missing"} == set(standin.FAULTS)


def test_unsupported_and_broken_fields_are_recorded_not_fatal(tmp_path, library):
    description = standin.load("h100")
    gpu = description["gpus"][0]
    for field in ("vbios", "pcie_replays", "power_mw", "mig_mode", "ecc_mode"):
        del gpu[field]
    gpu["unsupported"] += ["vbios", "pcie_replays", "mig_mode", "ecc_mode"]
    gpu["broken"] = ["power_mw"]
    (read,) = run_probe(tmp_path, library, description)["gpus"]
    assert read["vbios"] == {"unsupported": True}
    assert read["pcie"]["replays"] == {"unsupported": True} and read["pcie"]["width"] == 16
    assert read["mig_mode"] == {"unsupported": True}
    assert read["ecc_mode"] == {"unsupported": True}
    # NVML cannot count ECC errors where it cannot tell the ECC mode
    assert read["ecc_uncorrected_volatile"] == {"unsupported": True}
    assert read["power_mw"] == {"error": "Unknown Error"}  # an error is recorded, not fatal
    assert read["power_limit_mw"] == 700000


def test_ecc_disabled_has_no_error_counts(tmp_path, library):
    description = standin.load("h100")
    description["gpus"][0]["ecc_mode"] = [0, 0]
    (read,) = run_probe(tmp_path, library, description)["gpus"]
    assert read["ecc_mode"] == {"current": False, "pending": False}
    assert read["ecc_uncorrected_volatile"] == {"unsupported": True}


MALFORMED = {
    "not JSON": "{driver: 580}",
    "trailing comma": '{"driver": "580.159.04", "cuda_driver": 13000, "gpus": [],}',
    "trailing text": '{"driver": "580.159.04", "cuda_driver": 13000, "gpus": []} x',
    "empty": "",
    "top-level list": "[]",
    "duplicate member": '{"driver": "1", "driver": "2", "cuda_driver": 1, "gpus": []}',
    "no driver": '{"cuda_driver": 13000, "gpus": []}',
    "cuda as text": '{"driver": "580.159.04", "cuda_driver": "13.0", "gpus": []}',
    "unknown top member": '{"driver": "5", "cuda_driver": 1, "gpus": [], "gpu": []}',
}


def gpu_edit(**changes):
    description = standin.load("h100")
    gpu = description["gpus"][0]
    for key, value in changes.items():
        if value is None:
            del gpu[key]
        else:
            gpu[key] = value
    return json.dumps(description)


MALFORMED_GPU = {
    "missing field": gpu_edit(vbios=None),
    "negative count": gpu_edit(ecc_volatile=-1),
    "fractional": gpu_edit(temperature_c=34.5),
    "short pair": gpu_edit(ecc_mode=[1]),
    "row list of 3": gpu_edit(remapped_rows=[0, 0, 0]),
    "link not a boolean": gpu_edit(nvlinks=[1]),
    "bus id form": gpu_edit(pci_bus_id="18:00.0"),
    "device id not hex": gpu_edit(pci_device_id=9008),
    "unknown member": gpu_edit(tempreature_c=3),
    "value and unsupported": gpu_edit(retired_pages_pending=0),
    "unsupported not a field": gpu_edit(unsupported=["retired_pages_pending", "fabric", "x"]),
    "fabric state 4": gpu_edit(fabric={"state": 4, "status": 0}, unsupported=[
        "retired_pages_pending"]),
}  # fmt: skip


@pytest.mark.parametrize("text", [*MALFORMED.values(), *MALFORMED_GPU.values()],
                         ids=[*MALFORMED, *MALFORMED_GPU])  # fmt: skip
def test_a_malformed_description_fails_cleanly(tmp_path, library, text):
    done = run_raw(tmp_path, library, text)
    assert done.returncode == 0, done.stderr
    assert nvml.parse(done.stdout.splitlines()) == {"probe": "nvml", "error": "Unknown Error"}
    assert "gpufleet STAND-IN libnvidia-ml" in done.stderr and "gpus.json" in done.stderr


def test_no_description_is_a_driver_not_loaded(tmp_path, library):
    box = probe_box(tmp_path)
    env = {"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": str(library.parent),
           standin.ENV: str(tmp_path / "absent.json")}  # fmt: skip
    done = subprocess.run([sys.executable, str(box / "probe.py")], capture_output=True,
                          text=True, env=env, timeout=30)  # fmt: skip
    assert nvml.parse(done.stdout.splitlines()) == {"probe": "nvml", "error": "Driver Not Loaded"}


def test_a_host_without_a_driver_gets_one_clean_answer(tmp_path, library):
    assert run_probe(tmp_path, library, {"driver": "x", "cuda_driver": 0, "gpus": []})["gpus"] == []
    done = run_raw(tmp_path, None, standin.load("h100"))  # the library not on the path
    assert nvml.parse(done.stdout.splitlines()) == {
        "probe": "nvml",
        "error": "NVML Shared Library Not Found",
    }


@pytest.mark.skipif(shutil.which("dash") is None, reason="dash is not installed")
def test_the_host_command_reads_the_h100_through_the_standin(tmp_path, library):
    """The command as sent, under dash: the real pynvml it carries loads the stand-in found
    through LD_LIBRARY_PATH, reads the H100 description, and leaves no temporary directory."""
    gpus = tmp_path / "gpus.json"
    gpus.write_text(standin.dumps(standin.load("h100")))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(scratch),
           "LD_LIBRARY_PATH": str(library.parent), standin.ENV: str(gpus)}  # fmt: skip
    done = subprocess.run(["dash", "-c", nvml.probe_command()], capture_output=True, text=True,
                          env=env, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = nvml.parse(done.stdout.splitlines())
    assert found["driver"] == "580.159.04" and found["cuda_driver"] == 13000
    assert [g["pci_bus_id"] for g in found["gpus"]] == ["00000000:18:00.0"]
    assert list(scratch.iterdir()) == []


@pytest.mark.skipif(shutil.which("dash") is None, reason="dash is not installed")
def test_the_host_command_carries_the_real_pynvml_and_cleans_up(tmp_path):
    """The command as sent: under 128 KiB (one argument), the real pynvml inside; on this
    machine (no NVIDIA driver) NVML's own error, exit 0, and no temporary directory left."""
    command = nvml.probe_command()
    assert len(command) < 128 * 1024
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)}
    done = subprocess.run(["dash", "-c", command], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert nvml.parse(done.stdout.splitlines()) == {
        "probe": "nvml",
        "error": "NVML Shared Library Not Found",
    }
    assert list(tmp_path.iterdir()) == []


def test_a_host_without_python3_says_so(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "dash", "mktemp", "base64", "tar", "rm"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    done = subprocess.run([str(bin_dir / "dash"), "-c", nvml.probe_command()],
                          capture_output=True, text=True, env={"PATH": str(bin_dir)})  # fmt: skip
    assert nvml.parse(done.stdout.splitlines()) == {
        "probe": "none",
        "why": "python3 is not installed",
    }


def test_unreadable_output_is_an_error_not_a_crash():
    assert nvml.parse(["garbage", "{not json"])["error"] == "the probe printed no document"
    assert nvml.parse([])["probe"] == "nvml"
