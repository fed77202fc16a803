"""End to end: verify of a sick lab host, and `lab up` on a host whose SSH host key changed.

A host that is down before verify starts (its lab container stopped: the connection is
refused) or frozen (paused: its kernel still accepts TCP, sshd never speaks) must be found
unreachable once: every check of it fails at once with one readable reason, its N/A checks
stay N/A, and the run ends within one connection bound (ssh's ConnectTimeout, or
deploy_fact_timeout_s when that is shorter), not one per check (the issue saw 10 s per check,
282 s for one host). Each test prints the times it saw.

A host whose SSH host key changed (regenerated inside its container) is repaired by
`lab up`, which puts the pinned key back; verify then passes on it again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from operations.config.model import DeployConfig
from tests.e2e.helpers import HOSTS, deploy, on_host, run

pytestmark = pytest.mark.lab

SICK, CONTAINER = "lab-3", "gpufleet-lab-3"
CONNECT_TIMEOUT_S = 10  # verify's ssh_config (tests/verify/fleet.py)
BOUND_S = min(CONNECT_TIMEOUT_S, DeployConfig().fact_timeout_s)
STARTUP_S = 30  # pytest, pyinfra's inventory loading, collection: 2 cores, per run
EVERY_LAYER = "preflight or driver or docker or toolkit or vllm"


def lab_up() -> subprocess.CompletedProcess:
    done = run(sys.executable, "-m", "lab", "up", "--hosts", str(len(HOSTS)), timeout=600)
    assert done.returncode == 0, done.output
    return done


def timed_verify(tmp_path: Path, name: str) -> tuple[float, dict, str]:
    """verify of SICK, every layer: (seconds, JSON fleet report, output)."""
    report = tmp_path / f"{name}.json"
    started = time.monotonic()
    done = run(
        sys.executable, "-m", "pytest", "tests/verify", "--inventory", "inventory/lab.py",
        "-p", "no:cacheprovider", "--limit", SICK, "-m", EVERY_LAYER,
        f"--fleet-report={report}", f"--junitxml={tmp_path / name}.xml",
        timeout=300,
    )  # fmt: skip
    took = time.monotonic() - started
    return took, json.loads(report.read_text()), done.output


def counts(report: dict) -> dict[str, int]:
    cells = report["hosts"][SICK].values()
    return {k: sum(c[k] for c in cells) for k in ("passed", "failed", "not_applicable")}


@pytest.fixture(scope="module")
def converged(lab):
    done = deploy("-y")
    assert done.returncode == 0, done.output
    yield lab
    run("docker", "unpause", CONTAINER)
    lab_up()
    done = deploy("-y")
    assert done.returncode == 0, done.output


@pytest.fixture(scope="module")
def healthy(converged, tmp_path_factory) -> tuple[float, dict]:
    """The checks of SICK when it is well: how many, how many N/A, how long."""
    took, report, output = timed_verify(tmp_path_factory.mktemp("healthy"), "healthy")
    seen = counts(report)
    assert seen["failed"] == 0 and seen["passed"] >= 20, output
    print(f"verify of healthy {SICK}: {took:.1f} s, {seen}")
    return took, seen


def fails_at_once(healthy, took: float, report: dict, output: str, reason: str) -> None:
    """Every check that passed on the well host failed with one reason, N/A stayed N/A,
    within one connection bound."""
    _, well = healthy
    seen = counts(report)
    assert seen["passed"] == 0, output
    assert seen["not_applicable"] == well["not_applicable"], (seen, well)
    assert seen["failed"] == well["passed"], (seen, well)
    messages = {f["message"] for cell in report["hosts"][SICK].values() for f in cell["failures"]}
    (message,) = messages
    assert message.startswith(f"host unreachable: {SICK} cannot be reached over SSH"), message
    assert reason in message, message
    assert "CommandResult(" not in output and "Traceback" not in output
    assert report["unreachable"] == {SICK: message.removeprefix("host unreachable: ")}
    assert f"its {seen['failed']} check(s) failed unrun" in output
    assert took <= BOUND_S + STARTUP_S, (took, output)
    print(f"  {message}; {seen['failed']} failed, {seen['not_applicable']} N/A in {took:.1f} s")
    print(f"  per check: {took / seen['failed']:.2f} s (bound {BOUND_S} s + startup, once)")


def test_verify_of_a_stopped_host_fails_its_checks_at_once(converged, healthy, tmp_path):
    assert run("docker", "stop", "-t", "1", CONTAINER).returncode == 0
    try:
        took, report, output = timed_verify(tmp_path, "stopped")
    finally:
        lab_up()
    print(f"verify of stopped {SICK}:")
    fails_at_once(healthy, took, report, output, "Connection refused")


def test_verify_of_a_paused_host_takes_one_bound_not_one_per_check(converged, healthy, tmp_path):
    assert run("docker", "pause", CONTAINER).returncode == 0
    try:
        took, report, output = timed_verify(tmp_path, "paused")
    finally:
        run("docker", "unpause", CONTAINER)
    print(f"verify of paused {SICK}:")
    fails_at_once(healthy, took, report, output, "timed out")
    assert took >= BOUND_S - 1  # it did wait for the host, once


def test_lab_up_repairs_a_host_whose_ssh_host_key_changed(converged):
    changed = run(
        "docker", "exec", CONTAINER, "sh", "-c",
        "rm -f /etc/ssh/ssh_host_ed25519_key* && "
        "ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && "
        "systemctl restart ssh.service",
    )  # fmt: skip
    assert changed.returncode == 0, changed.output
    refused = on_host(SICK, "true")
    assert refused.returncode == 255, refused.output  # the pin no longer matches
    up = lab_up()
    assert (
        f"{SICK}: Host key verification failed (not the lab's pinned keys): "
        "put them back, sshd restarted"
    ) in up.output, up.output
    assert on_host(SICK, "true").returncode == 0
    again = lab_up()  # nothing to repair any more
    assert "pinned keys" not in again.output, again.output
