"""The scale benchmark's smoke run (issue 19): 32 simulated replay hosts (a STAND-IN: one
asyncssh server answering as the recorded lab host) through the no-change converge, verify,
the targets file and a rollout's planning. Every command must have had a recording, every
step must succeed and no host may change; a recording missing a command fails the run.
Timings are the benchmark's business (python -m benchmarks.scale), not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.replay import recording as rec
from benchmarks.scale import RECORDING, ROOT

pytest.importorskip("asyncssh")


def scale(tmp_path: Path, hosts: int, recording: Path) -> tuple[int, str, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--hosts", str(hosts), "--smoke",
         "--recording", str(recording), "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    report = tmp_path / "out" / "results.json"
    found = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, done.stdout + done.stderr, found


def test_32_simulated_hosts_converge_and_verify_with_every_command_recorded(tmp_path):
    code, output, found = scale(tmp_path, 32, RECORDING)
    assert code == 0, output[-3000:]
    (result,) = found["results"]
    assert set(result["steps"]) == {"converge", "verify", "targets", "rollout_plan"}
    for name, step in result["steps"].items():
        assert step["rc"] == 0 and step["unrecorded"] == 0, (name, step)
    assert result["steps"]["converge"]["hosts_changed"] == 0
    assert result["unrecorded_commands"] == [] and found["failures"] == []


def test_a_command_without_a_recording_fails_the_run_and_is_named(tmp_path):
    recording = rec.load(RECORDING)
    dropped = sorted(recording["commands"])[0]
    del recording["commands"][dropped]
    path = tmp_path / "short.json"
    rec.save(path, recording)
    code, output, found = scale(tmp_path, 2, path)
    assert code == 1
    assert "unrecorded command(s)" in output
    assert found["results"][0]["unrecorded_commands"], found["results"][0]
