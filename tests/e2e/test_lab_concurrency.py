"""End to end: an operator's bad day with two terminals, on the lab fleet.

Ctrl-C in the middle of a deploy exits 130 and the next run converges; two deploys at once
with different values are excluded by the per-host lock (operations.kit.lock): one changes the
fleet, the other waits for it or fails every host naming the holder, and the fleet ends on
one setting, with no container-name conflict; a run killed outright leaves no lock that
blocks the next one. Every test leaves the fleet on its plain config.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.e2e.helpers import HOSTS, LAB_SECRETS, ROOT, deploy, on_host
from tests.e2e.test_lab_vllm import served

pytestmark = pytest.mark.lab
OWNER = "/run/gpufleet/deploy.owner"


@pytest.fixture(scope="module")
def plain(lab):
    done = deploy("-y")
    assert done.returncode == 0, done.output
    yield lab
    done = deploy("-y")  # back to the plain config, whatever a test left
    assert done.returncode == 0, done.output


class Run:
    """A deploy running in the background, its output collected as it comes."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyinfra", "-y", "inventory/lab.py", "deploy.py", *args],
            cwd=ROOT, env=os.environ | LAB_SECRETS, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            # Ctrl-C's default action, whatever this run inherited (a backgrounded run has
            # SIGINT ignored, and the deploy could not be interrupted)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None or text in self.output, self.output
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            time.sleep(0.1)

    def holds_the_locks(self, timeout: float = 120) -> None:
        """Wait until this run holds the deploy lock of every lab host."""
        deadline = time.monotonic() + timeout
        for name in HOSTS:
            while f"pid {self.process.pid} since" not in on_host(name, f"cat {OWNER}").stdout:
                assert self.process.poll() is None, self.output
                assert time.monotonic() < deadline, f"{name}: no lock taken:\n{self.output}"
                time.sleep(0.2)

    def end(self, timeout: float = 600) -> int:
        self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.process.returncode


def no_holder_left(timeout: float = 10) -> None:
    """No lock holder process stays on any host once its run is gone."""
    for name in HOSTS:
        deadline = time.monotonic() + timeout
        while on_host(name, "pgrep -f gpufleet-lock-holder").returncode == 0:
            assert time.monotonic() < deadline, f"{name}: a lock holder outlived its run"
            time.sleep(0.5)


def test_ctrl_c_exits_130_and_the_next_run_converges(plain):
    started = time.monotonic()
    interrupted = Run("--data", "vllm_served_model_name=qwen-interrupted")
    interrupted.wait_for("--> Beginning operation run...")
    time.sleep(1)  # into the operations
    interrupted.process.send_signal(signal.SIGINT)
    assert interrupted.end(timeout=120) == 130, interrupted.output
    assert "Interrupted by SIGINT: the run stopped early" in interrupted.output
    assert "Exiting upon user request" not in interrupted.output
    no_holder_left()  # its locks went with its connections
    again = deploy("-y")
    assert again.returncode == 0, again.output
    assert "3 of 3 host(s) succeeded" in again.output
    assert "locked by" not in again.output
    for name in HOSTS:
        assert served(name) == ["Qwen/Qwen2.5-1.5B-Instruct"]
    print(f"ctrl-c test: {time.monotonic() - started:.0f}s")


def test_two_deploys_at_once_one_changes_the_fleet_the_other_waits_or_fails(plain):
    started = time.monotonic()
    first = Run("--data", "vllm_served_model_name=qwen-first")
    first.holds_the_locks()
    impatient = Run("--data", "vllm_served_model_name=qwen-impatient", "--data",
                    "deploy_lock_wait_s=1")  # fmt: skip
    patient = Run(
        "--data", "vllm_served_model_name=qwen-patient", "--data", "deploy_lock_wait_s=300"
    )
    assert impatient.end() != 0, impatient.output
    assert first.end() == 0, first.output
    assert patient.end() == 0, patient.output
    print(f"concurrency test: {time.monotonic() - started:.0f}s")
    held = rf"locked by \S+@\S+ pid {first.process.pid} since [0-9-]+ [0-9:]+ UTC \(pyinfra "
    for name in HOSTS:  # every host failed for the lock, naming the holder and its command
        assert re.search(rf"{name}: deploy lock .*: {held}", impatient.output), impatient.output
    assert "0 of 3 host(s) succeeded" in impatient.output
    assert "inventory/lab.py deploy.py)" in impatient.output
    assert re.search(rf"deploy lock: waited \d+s for .*pid {first.process.pid} ", patient.output)
    for run in (first, impatient, patient):
        assert "Conflict" not in run.output and "already in use" not in run.output
    for name in HOSTS:  # one setting across the fleet: the run that went last
        assert served(name) == ["qwen-patient"]
        assert (
            on_host(name, "docker ps -q --filter label=gpufleet.vllm | wc -l").stdout.strip() == "1"
        )
    no_holder_left()


def test_a_killed_run_leaves_no_lock_that_blocks_the_next(plain):
    killed = Run("--data", "vllm_served_model_name=qwen-killed")
    killed.holds_the_locks()
    killed.process.send_signal(signal.SIGKILL)  # no handler, no disconnect: the kernel's close
    killed.end(timeout=60)
    started = time.monotonic()
    again = deploy("-y", "--data", "deploy_lock_wait_s=20")
    assert again.returncode == 0, again.output
    assert "locked by" not in again.output
    assert time.monotonic() - started < 120
    for name in HOSTS:
        assert served(name) == ["Qwen/Qwen2.5-1.5B-Instruct"]
    no_holder_left()
