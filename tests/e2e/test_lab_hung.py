"""End to end: a host that stops answering fails alone, within its bound, on the lab fleet.

A host that stops answering rather than refusing (``docker pause`` of a lab host after it
connected: a frozen VM, or a path that drops packets; its kernel still ACKs TCP) is paused
(a) during a no-change deploy, (b) while a vLLM container it recreates is in its readiness
wait, (c) during verify; (d) its dockerd is frozen (``kill -STOP``: every ``docker`` command
hangs). Each run must end within a bound derived from the configured timeouts (behaviour
bounds, not performance targets), fail only that host with "stopped answering", let the other
hosts succeed, and the next run, with the host back, must converge it. Each test prints how
long the run took to give up on the host after the fault.

Deploys and verify runs get short bounds (--data: deploy_fact_timeout_s, deploy_keepalive_*,
deploy_timeout_margin_s) so the suite stays fast; the bounds they are held to follow from those.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from operations.kit.bounds import GRACE_S
from tests.e2e.helpers import HOSTS, LAB_SECRETS, ROOT, deploy, on_host, run
from tests.e2e.test_lab_vllm import api

pytestmark = pytest.mark.lab

HUNG, CONTAINER = "lab-3", "gpufleet-lab-3"
FACT_S, INTERVAL_S, COUNT, MARGIN_S = 10, 2, 3, 10
BOUNDS = (
    "--data", f"deploy_fact_timeout_s={FACT_S}",
    "--data", f"deploy_keepalive_interval_s={INTERVAL_S}",
    "--data", f"deploy_keepalive_count={COUNT}",
    "--data", f"deploy_timeout_margin_s={MARGIN_S}",
)  # fmt: skip
# a paused host: the first keepalive goes one interval into a command, COUNT go unanswered
KEEPALIVE_S = INTERVAL_S * (COUNT + 1)
GIVE_UP_S = max(FACT_S + GRACE_S, KEEPALIVE_S)  # whichever notices first, at the latest
SLACK_S = 20  # the lab machine's own delays (2 cores, three hosts)
GAVE_UP = f"[{HUNG}] stopped answering"
STANDIN = "gpufleet-standin/vllm-openai:0.11.0-standin"
SLOW = "gpufleet-standin/vllm-openai:0.11.0-slow"


class Watched:
    """A controller command whose output is read as it comes, so a fault can be timed into
    it; ``gave_up()`` is how long after the fault the give-up line came."""

    def __init__(self, *args: str):
        env = os.environ | LAB_SECRETS | {"PYTHONUNBUFFERED": "1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.fault_at: float | None = None

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line))

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.proc.poll() is None or self.reader.is_alive(), self.output
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            time.sleep(0.05)

    def fault(self, *command: str) -> None:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        self.fault_at = time.monotonic()

    def finish(self, bound: float) -> float:
        """Wait for the end (killing it past ``bound`` + a minute); the run's wall time."""
        try:
            self.proc.wait(timeout=bound + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(10)
        return time.monotonic() - self.started

    def gave_up(self, marker: str = GAVE_UP) -> float:
        after = [t for t, line in self.lines if marker in line and t >= (self.fault_at or 0)]
        assert after, f"no {marker!r} after the fault in:\n{self.output}"
        return after[0] - self.fault_at


def pyinfra(*args: str) -> Watched:
    return Watched(sys.executable, "-m", "pyinfra", "-y", "inventory/lab.py", "deploy.py", *args)


def timed_deploy(*args: str) -> float:
    started = time.monotonic()
    done = deploy("-y", *args)
    assert done.returncode == 0, done.output
    return time.monotonic() - started


def resume() -> None:
    """Whatever a test froze answers again."""
    run("docker", "unpause", CONTAINER)
    on_host(HUNG, "pkill -CONT -x dockerd; pkill -CONT -x containerd")


def report(
    scenario: str, watched: Watched, took: float, bound: float, give_up_s: float = GIVE_UP_S
) -> None:
    gave_up = watched.gave_up()
    (said, *_) = [line.strip() for line in watched.output.splitlines() if GAVE_UP in line]
    print(f"{scenario}: gave up on {HUNG} {gave_up:.1f} s after the fault; run {took:.1f} s")
    print(f"  {said}")
    assert gave_up <= give_up_s + 5, (gave_up, watched.output)
    assert took <= bound, (took, bound, watched.output)


def fails_only_the_hung_host(output: str) -> None:
    assert GAVE_UP in output, output
    assert "--> Fleet: 2 of 3 host(s) succeeded; failed: lab-3" in output, output
    assert "[lab-1] Error" not in output and "[lab-2] Error" not in output, output


@pytest.fixture(scope="module")
def converged(lab):
    done = deploy("-y")
    assert done.returncode == 0, done.output
    yield lab
    resume()
    done = deploy("-y")
    assert done.returncode == 0, done.output


def converges_again() -> None:
    """With the host back, the next run converges it, and the one after finds nothing to do."""
    resume()
    done = deploy("-y")
    assert done.returncode == 0, done.output
    again = deploy("-y")
    assert again.returncode == 0 and f"[{HUNG}] Success" not in again.output, again.output
    assert api(HUNG, "/health")[0] == 200


def test_host_paused_during_a_no_change_deploy_fails_alone_within_its_bound(converged):
    baseline = timed_deploy(*BOUNDS)
    watched = pyinfra(*BOUNDS)
    try:
        watched.wait_for(f"[{HUNG}] Connected")
        watched.fault("docker", "pause", CONTAINER)
        took = watched.finish(baseline + GIVE_UP_S + SLACK_S)
    finally:
        resume()
    assert watched.proc.returncode != 0
    fails_only_the_hung_host(watched.output)
    report("no-change deploy", watched, took, baseline + GIVE_UP_S + SLACK_S)
    converges_again()


def test_host_paused_in_the_readiness_wait_of_a_recreation_fails_alone(converged):
    """A slow-starting server (the stand-in's startup delay, baked into an image on each
    host) keeps every host in the readiness wait; lab-3 is paused during it."""
    for name in HOSTS:
        slow = on_host(
            name,
            f"docker image inspect {SLOW} >/dev/null 2>&1 || docker commit --pause=false "
            f"--change 'ENV STANDIN_STARTUP_DELAY_S=15' vllm-main {SLOW} >/dev/null",
        )
        assert slow.returncode == 0, slow.output
    ready_s = 60
    bound = ready_s + MARGIN_S + SLACK_S * 2  # the readiness bound; the run's own steps
    watched = pyinfra(
        *BOUNDS, "--data", f"vllm_image={SLOW}", "--data", f"vllm_ready_timeout_s={ready_s}"
    )
    try:
        deadline = time.monotonic() + 180
        while run("docker", "exec", CONTAINER, "pgrep", "-f", "not ready after").returncode:
            assert watched.proc.poll() is None, watched.output
            assert time.monotonic() < deadline, watched.output
            time.sleep(0.2)
        watched.fault("docker", "pause", CONTAINER)
        took = watched.finish(bound)
    finally:
        resume()
    assert watched.proc.returncode != 0
    fails_only_the_hung_host(watched.output)
    for name in ("lab-1", "lab-2"):
        image = on_host(name, "docker inspect -f '{{.Config.Image}}' vllm-main").stdout.strip()
        assert image == SLOW  # their recreation went through while lab-3 hung
    report("deploy mid-recreation", watched, took, bound)
    converges_again()
    image = on_host(HUNG, "docker inspect -f '{{.Config.Image}}' vllm-main").stdout.strip()
    assert image == STANDIN
    for name in HOSTS:
        on_host(name, f"docker rmi {SLOW} >/dev/null 2>&1")


VERIFY = (
    sys.executable, "-m", "pytest", "tests/verify", "--inventory", "inventory/lab.py",
    "-p", "no:cacheprovider", "-v",
)  # fmt: skip


def verify_rows(output: str) -> dict[str, str]:
    """The fleet report's row of each host."""
    return {line.split()[0]: line for line in output.splitlines() if line.startswith("lab-")}


def test_host_paused_during_verify_fails_its_checks_alone_within_its_bound(converged):
    verify_args = (*VERIFY, *BOUNDS)  # verify takes --data as the deploy does
    started = time.monotonic()
    baseline = run(*verify_args)
    assert baseline.returncode == 0, baseline.output
    baseline_s = time.monotonic() - started
    # ssh's master gives up after its keepalives; a command on it then tries a connection
    # of its own, which gives up after verify's ConnectTimeout (10 s)
    give_up = min(FACT_S, KEEPALIVE_S + 10)
    bound = baseline_s + give_up + SLACK_S
    watched = Watched(*verify_args)
    try:
        watched.wait_for(f"[{HUNG}] PASSED")  # its connection is up, its facts read
        watched.fault("docker", "pause", CONTAINER)
        took = watched.finish(bound)
    finally:
        resume()
    output = watched.output
    assert watched.proc.returncode != 0
    assert f"{HUNG} stopped answering" in output, output
    rows = verify_rows(output)
    assert "FAIL" in rows[HUNG], output
    assert "FAIL" not in rows["lab-1"] + rows["lab-2"] and "PASS" in rows["lab-1"], output
    gave_up = watched.gave_up(f"[{HUNG}] FAILED")
    print(f"verify: gave up on {HUNG} {gave_up:.1f} s after the pause; run {took:.1f} s")
    print("  " + next(line for line in output.splitlines() if "stopped answering" in line))
    assert gave_up <= give_up + 10 and took <= bound, (gave_up, took, output)
    assert run(*verify_args).returncode == 0  # back: every check passes again


def test_frozen_dockerd_fails_that_host_alone_within_its_bound(converged):
    baseline = timed_deploy(*BOUNDS)
    watched = None
    try:
        frozen = on_host(HUNG, "pkill -STOP -x dockerd")
        assert frozen.returncode == 0, frozen.output
        watched = pyinfra(*BOUNDS)
        watched.fault_at = watched.started  # frozen before the run: timed from its start
        took = watched.finish(baseline + FACT_S + GRACE_S + SLACK_S)
    finally:
        resume()
    assert watched.proc.returncode != 0
    fails_only_the_hung_host(watched.output)
    assert f"gave no answer within {FACT_S} s (deploy_fact_timeout_s)" in watched.output
    bound = baseline + FACT_S + GRACE_S + SLACK_S
    report("deploy, dockerd frozen", watched, took, bound, give_up_s=baseline + FACT_S + GRACE_S)
    converges_again()


def test_frozen_dockerd_fails_that_hosts_verify_checks_alone_within_its_bound(converged):
    """verify's bound is deploy_fact_timeout_s (--data, as the deploy takes it): its first
    round trip to the host, which runs docker, gives up after it; every later check of that
    host fails at once."""
    bound_s = FACT_S
    try:
        frozen = on_host(HUNG, "pkill -STOP -x dockerd")
        assert frozen.returncode == 0, frozen.output
        watched = Watched(*VERIFY, *BOUNDS)
        watched.fault_at = watched.started  # frozen before the run: timed from its start
        took = watched.finish(bound_s + SLACK_S * 2)
    finally:
        resume()
    output = watched.output
    assert watched.proc.returncode != 0
    assert f"{HUNG} stopped answering: no result within {bound_s} s" in output, output
    rows = verify_rows(output)
    assert "FAIL" in rows[HUNG], output
    assert "FAIL" not in rows["lab-1"] + rows["lab-2"] and "PASS" in rows["lab-1"], output
    gave_up = watched.gave_up(f"[{HUNG}] FAILED")
    print(f"verify, dockerd frozen: gave up on {HUNG} {gave_up:.1f} s after the start; "
          f"run {took:.1f} s")  # fmt: skip
    assert gave_up <= bound_s + SLACK_S and took <= bound_s + SLACK_S * 2, (gave_up, took)
    assert run(*VERIFY).returncode == 0  # dockerd back: every check passes again
