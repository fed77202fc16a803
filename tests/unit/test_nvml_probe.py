"""The NVML probe (operations/driver/nvml_probe.py) run as on a host: by a separate python3,
from a temporary directory, here with the STAND-IN pynvml of tests/standins/nvml (GPUs from
a JSON description modelled on a recorded H100 host), and once with the real pynvml on this
machine, which has no NVIDIA driver: that must be a clean answer, not a crash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from operations.driver import nvml

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "standins" / "nvml" / "pynvml.py"

H100 = {
    "driver": "580.159.04", "cuda_driver": 13000,
    "gpus": [{
        "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5e0c-stand-in", "pci_bus_id":
        "00000000:18:00.0", "vbios": "96.00.99.00.01", "persistence": 1, "ecc_mode": [1, 1],
        "ecc_volatile": 0, "ecc_aggregate": 0, "remapped_rows": [0, 0, 0, 0],
        "pcie_gen": 5, "pcie_max_gen": 5, "pcie_width": 16, "pcie_max_width": 16,
        "pcie_replays": 0, "throttle_reasons": 0, "temperature_c": 34, "slowdown_c": 87,
        "power_mw": 71000, "power_limit_mw": 700000, "nvlinks": [], "mig_mode": [0, 0],
        "fabric": {"state": 0, "status": 0},
        "unsupported": ["retired_pages_pending"],
    }],
}  # fmt: skip


def run_probe(tmp_path, description) -> dict:
    """The probe in a python3 of its own, the stand-in pynvml beside it, as on a host."""
    box = tmp_path / "probe"
    box.mkdir()
    shutil.copy(STANDIN, box / "pynvml.py")
    shutil.copy(nvml.PROBE, box / "probe.py")
    gpus = tmp_path / "gpus.json"
    gpus.write_text(json.dumps(description))
    env = {"PATH": os.environ["PATH"], "GPUFLEET_STANDIN_GPUS": str(gpus)}
    done = subprocess.run([sys.executable, str(box / "probe.py")], capture_output=True,
                          text=True, env=env, cwd=box, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return nvml.parse(done.stdout.splitlines())


def test_a_healthy_h100_reads_whole_and_unsupported_is_not_a_failure(tmp_path):
    found = run_probe(tmp_path, H100)
    assert found["probe"] == "nvml" and found["driver"] == "580.159.04"
    assert found["cuda_driver"] == 13000
    (gpu,) = found["gpus"]
    assert gpu["pci_bus_id"] == "00000000:18:00.0" and gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["retired_pages_pending"] == {"unsupported": True}  # H100 remaps rows instead
    assert gpu["remapped_rows"] == {"correctable": 0, "uncorrectable": 0, "pending": False,
                                    "failure": False}  # fmt: skip
    assert gpu["ecc_mode"] == {"current": True, "pending": True}
    assert gpu["pcie"] == {"gen": 5, "max_gen": 5, "width": 16, "max_width": 16, "replays": 0}
    assert gpu["nvlinks"] == [] and gpu["fabric"] == {"state": 0, "status": 0}


def test_faults_in_the_description_show_in_the_document(tmp_path):
    sick = json.loads(json.dumps(H100))
    gpu = sick["gpus"][0]
    gpu.update(ecc_volatile=2, remapped_rows=[0, 1, 1, 1], pcie_width=8, persistence=0,
               nvlinks=[True, False], throttle_reasons=0x40)  # fmt: skip
    gpu["broken"] = ["vbios"]
    (read,) = run_probe(tmp_path, sick)["gpus"]
    assert read["ecc_uncorrected_volatile"] == 2 and read["persistence"] == 0
    assert read["remapped_rows"]["pending"] is True and read["remapped_rows"]["failure"] is True
    assert read["pcie"]["width"] == 8 and read["nvlinks"] == [True, False]
    assert read["throttle_reasons"] == 0x40
    assert read["vbios"] == {"error": "Unknown Error"}  # an error is recorded, not fatal


def test_a_host_without_a_driver_gets_one_clean_answer(tmp_path):
    assert run_probe(tmp_path, {"driver": "x", "cuda_driver": 0, "gpus": []})["gpus"] == []
    box = tmp_path / "none"
    box.mkdir()
    shutil.copy(STANDIN, box / "pynvml.py")
    shutil.copy(nvml.PROBE, box / "probe.py")
    done = subprocess.run([sys.executable, str(box / "probe.py")], capture_output=True,
                          text=True, env={"PATH": os.environ["PATH"]}, timeout=30)  # fmt: skip
    assert nvml.parse(done.stdout.splitlines()) == {
        "probe": "nvml",
        "error": "NVML Shared Library Not Found",
    }


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
