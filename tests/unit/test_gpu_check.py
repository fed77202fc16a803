"""`./dev gpu-check` (docs/gpu-check.md) on this GPU-less machine: run for real with this
interpreter as its Python environment (GPUFLEET_GPU_CHECK_PYTHON, so no install step), every
step gives a clean "no driver" result, no traceback, exit 1, and the output folder holds the
files a device run returns; a budget that runs out, missing wheels and bad arguments are each
recorded or refused with their own exit code; inventory/local_gpu.py's data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from operations.guard import InventoryError
from operations.inventory import select

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "dev"
FILES = {
    "summary.txt", "steps.log", "nvidia-smi-q.txt", "probe.json", "verify.log",
    "verify-junit.xml", "fleet-report.json", "fleet-report.html", "deploy-dry.log",
}  # fmt: skip
STEPS = ("nvidia-smi", "install", "probe", "verify", "deploy-dry")
HAS_DRIVER = Path("/proc/driver/nvidia/version").exists()


def gpu_check(cwd: Path, *args: str, timeout: float = 120, **env: str):
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GPUFLEET_GPU", "PYTEST_")) and key != "OUT"
    }
    return subprocess.run(
        [str(DEV), "gpu-check", *args],
        cwd=cwd,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(summary: str) -> dict[str, list[str]]:
    """The step table of summary.txt: step -> [result, rc, seconds, note]."""
    table = summary.split("\n\n")[1].splitlines()
    assert table[0].split()[:4] == ["step", "result", "rc", "s"]
    found = {}
    for line in table[1:]:
        name, rest = line.split(None, 1)
        result = "not run" if rest.startswith("not run") else rest.split()[0]
        rc, seconds, note = rest.removeprefix(result).split(None, 2)
        found[name] = [result, rc, seconds, note]
    return found


@pytest.mark.skipif(HAS_DRIVER, reason="an NVIDIA driver is loaded here: this is the GPU-less run")
def test_on_a_machine_without_a_driver_every_step_says_so_cleanly(tmp_path):
    done = gpu_check(tmp_path, "out", GPUFLEET_GPU_CHECK_PYTHON=sys.executable)
    out = tmp_path / "out"  # a relative OUTDIR is the caller's, not the repository's
    assert done.returncode == 1, done.stdout + done.stderr
    assert {path.name for path in out.iterdir()} == FILES
    summary = (out / "summary.txt").read_text()
    assert done.stdout == summary
    for path in out.iterdir():
        assert "Traceback" not in path.read_text(), path.name
    assert "Traceback" not in done.stderr

    steps = rows(summary)
    assert list(steps) == list(STEPS)
    assert steps["install"][0] == "skipped" and sys.executable in steps["install"][3]
    if shutil.which("nvidia-smi") is None:
        assert steps["nvidia-smi"][:2] == ["failed", "127"]
        assert "not installed" in steps["nvidia-smi"][3]
    probe = json.loads((out / "probe.json").read_text())
    assert probe["probe"] == "nvml" and "gpus" not in probe, probe
    assert steps["probe"][:2] == ["failed", "1"]
    assert steps["probe"][3].startswith(f"no driver: NVML says {probe['error']} (")

    # verify ran to its end on @local: the GPU checks fail (the inventory says it has GPUs)
    assert steps["verify"][:2] == ["failed", "1"]
    assert " failed, " in steps["verify"][3] and " passed" in steps["verify"][3]
    report = json.loads((out / "fleet-report.json").read_text())
    assert report["hosts"]["@local"]["driver"]["status"] == "FAIL"
    suites = ET.parse(out / "verify-junit.xml").getroot()
    assert int(suites.find("testsuite").get("failures")) > 0
    assert "== verify" in summary and "@local  " in summary  # the fleet table

    # the dry deploy plans nothing on a host without GPUs: preflight fails it, and says why
    deploy = (out / "deploy-dry.log").read_text()
    assert "no NVIDIA GPU (PCI vendor 10de) on the PCI bus" in deploy
    assert steps["deploy-dry"][0] == "failed"
    assert "the plan fails @local: Preflight | Preflight failed" in steps["deploy-dry"][3]
    assert "exit 1: a step failed" in summary


def test_a_spent_budget_records_the_steps_as_not_run(tmp_path):
    done = gpu_check(
        tmp_path,
        str(tmp_path / "out"),
        GPUFLEET_GPU_CHECK_PYTHON=sys.executable,
        GPUFLEET_GPU_CHECK_BUDGET_S="0",
        timeout=30,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    steps = rows((tmp_path / "out" / "summary.txt").read_text())
    for name in ("probe", "verify", "deploy-dry"):
        assert steps[name] == ["not run", "-", "-", "out of time (budget 0 s)"]


def test_without_wheels_nothing_python_runs_and_it_exits_2(tmp_path):
    (tmp_path / "wheels").mkdir()
    done = gpu_check(tmp_path, "out", GPUFLEET_GPU_WHEELS=str(tmp_path / "wheels"), timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    steps = rows(summary)
    assert steps["install"][0] == "not run"
    assert steps["install"][3].startswith(f"no wheels in {tmp_path / 'wheels'}: run ./dev gpu-")
    for name in ("probe", "verify", "deploy-dry"):
        assert steps[name] == ["not run", "-", "-", "no Python environment"]
    assert "exit 2: no Python environment" in summary


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("a", "b"), {}, "usage: ./dev gpu-check [OUTDIR]"),
        (("out",), {"GPUFLEET_GPU_CHECK_BUDGET_S": "5m"}, "GPUFLEET_GPU_CHECK_BUDGET_S: seconds"),
    ],
)
def test_bad_arguments_are_refused_with_exit_2(tmp_path, args, env, message):
    done = gpu_check(tmp_path, *args, timeout=30, **env)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_the_wheels_folder_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "check-ignore", "-q", ".gpu-wheels/pip-1-py3-none-any.whl"], cwd=ROOT
    )
    assert done.returncode == 0


def test_the_local_gpu_inventory_is_a_gpu_host_with_a_preinstalled_driver(monkeypatch):
    monkeypatch.delenv("GPUFLEET_GPU_CHECK_DATA", raising=False)
    selection = select(str(ROOT / "inventory" / "local_gpu.py"))
    assert list(selection.hosts) == ["@local"]
    data = selection.hosts["@local"]
    assert data["host_has_gpus"] is True and data["driver_source"] == "preinstalled"
    config = selection.configs()["@local"]
    assert config.host.has_gpus and config.driver.source == "preinstalled"


def test_gpu_check_data_adds_settings_and_a_non_object_is_refused(monkeypatch):
    path = str(ROOT / "inventory" / "local_gpu.py")
    monkeypatch.setenv("GPUFLEET_GPU_CHECK_DATA", '{"host_gpu_count": 8, "driver_branch": "570"}')
    config = select(path).configs()["@local"]
    assert (config.host.gpu_count, config.driver.branch) == (8, "570")
    for text, why in (("[1]", "must be a JSON object"), ("{", "not JSON")):
        monkeypatch.setenv("GPUFLEET_GPU_CHECK_DATA", text)
        with pytest.raises(InventoryError, match=f"GPUFLEET_GPU_CHECK_DATA: {why}"):
            select(path)
