"""End to end on the lab fleet: real hosts, real SSH, the real deploy.py and verify suite.

Brings up (or reuses) a 3-host lab with ``python -m lab up``, deploys it, verifies it, and
checks that a second run plans no change. Needs root (or a running Docker engine) and
debootstrap; without them the tests skip, unless GPUFLEET_REQUIRE_LAB is set (CI), where a
missing prerequisite is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ["lab-1", "lab-2", "lab-3"]
pytestmark = pytest.mark.lab


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    done.output = done.stdout + done.stderr
    return done


def deploy(*args: str) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "pyinfra", "inventory/lab.py", "deploy.py", *args)


def _missing_prerequisite() -> str | None:
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed"
    engine_up = (
        run("docker", "info", timeout=60).returncode == 0 if shutil.which("docker") else False
    )
    if not engine_up and os.geteuid() != 0:
        return "no Docker engine answers and not root (the lab can start one only as root)"
    return None


@pytest.fixture(scope="module")
def lab():
    missing = _missing_prerequisite()
    if missing:
        if os.environ.get("GPUFLEET_REQUIRE_LAB"):
            pytest.fail(f"lab end-to-end test required but {missing}")
        pytest.skip(missing)
    up = run(sys.executable, "-m", "lab", "up", "--hosts", str(len(HOSTS)), timeout=1800)
    assert up.returncode == 0, up.output
    return HOSTS


def test_deploy_runs_every_layer_on_every_host_over_ssh(lab):
    done = deploy("-y")
    assert done.returncode == 0, done.output
    for name in lab:
        assert f"[{name}] preflight: debian 12 x86_64" in done.output
        assert f"[{name}] vllm: not implemented yet" in done.output
    assert "preflight failed" not in done.output and "Driver failed" not in done.output


def test_verify_passes_and_writes_the_fleet_report(lab, tmp_path):
    report = tmp_path / "report.json"
    done = run(
        sys.executable, "-m", "pytest", "tests/verify", "--inventory", "inventory/lab.py",
        f"--fleet-report={report}", f"--junitxml={tmp_path / 'junit.xml'}",
        "-p", "no:cacheprovider",
    )  # fmt: skip
    assert done.returncode == 0, done.output
    hosts = json.loads(report.read_text())["hosts"]
    assert sorted(hosts) == lab
    for cells in hosts.values():
        assert cells["preflight"]["status"] == "PASS" and cells["preflight"]["passed"] == 5
        # the Debian packages, their holds and the nouveau blacklist; GPU checks do not apply
        assert cells["driver"]["status"] == "PASS" and cells["driver"]["passed"] == 3
        assert cells["driver"]["not_applicable"] == 6
    assert "fleet report" in done.output


def test_second_run_plans_no_change(lab):
    assert deploy("-y").returncode == 0
    done = deploy("--dry", "--json")
    assert done.returncode == 0, done.output
    plan = json.loads(done.stdout)["plan"]
    changing = [(op["name"], op["hosts_with_change"]) for op in plan if op["hosts_with_change"]]
    assert changing == []


def test_bad_value_stops_the_run_before_any_host_is_read(lab):
    done = deploy("-y", "--data", "vllm_port=0")
    assert done.returncode != 0
    assert "invalid configuration, nothing was changed" in done.output
    for name in lab:
        assert f"{name}: vllm_port = 0: Input should be greater than or equal to 1" in done.output
    assert "preflight:" not in done.output  # no fact was gathered on any host
    assert "Traceback" not in done.output


def test_preflight_failure_fails_only_the_targeted_host_with_the_reason(lab):
    done = deploy("-y", "--limit", "lab-1", "--data", "host_has_gpus=true")
    assert done.returncode != 0
    assert "[lab-1] preflight failed: no NVIDIA GPU (PCI vendor 10de) on the PCI bus" in done.output
    assert "lab-2" not in done.output
