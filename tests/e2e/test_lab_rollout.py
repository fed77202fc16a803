"""End to end: drained, reversible rollouts on the lab (issue 18 item 4).

- A roll of a real change (an engine argument: every server is replaced) through the three
  lab hosts, a canary first then one at a time, under a steady request loop from the
  controller to the hosts in the rollout's targets file at that moment: no request fails,
  every host ends on the new spec and back in the targets (the controller's file and lab-1's
  Prometheus file_sd). The measurements (requests sent and failed, time per batch) are
  printed and written to reports/rollout/lab-roll.json.
- A change the STAND-IN refuses at start rolls back the canary only: it serves on its old
  spec again, the other hosts keep the very same containers.
- A drain waits for a request in flight: one held in the STAND-IN's queue with its stuck file
  (vllm:num_requests_waiting) until the test lets it go, and a streamed completion whose
  tokens come 2 s apart (the stand-in's token delay file; vllm:num_requests_running): the
  rollout deploys only after it finished, every event and [DONE] arrived, and it succeeds.

Each test starts from, and leaves, the plain deploy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.helpers import HOSTS, LAB_SECRETS, ROOT, deploy, on_host, run
from tests.e2e.test_lab_vllm import MODEL, address, api, container_ids, served

pytestmark = pytest.mark.lab
GOOD = "vllm_extra_args=--max-num-seqs=64"  # a flag vLLM knows: every server is replaced
BAD = "vllm_extra_args=--no-such-engine-flag"  # refused at start, as vLLM's argparse does
LIVE_TARGETS = "/etc/gpufleet/prometheus/targets/vllm.json"  # lab-1 runs the Prometheus
STUCK = "/tmp/gpufleet-standin-stuck"
TOKEN_DELAY = "/tmp/gpufleet-standin-token-delay"


def rollout(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    module = [sys.executable, "-m", "operations.cli.rollout", "inventory/lab.py"]
    return run(*module, *args, timeout=timeout)


def hosts_in(text: str) -> list[str]:
    return sorted({entry["labels"]["gpufleet_host"] for entry in json.loads(text)})


def started_with(name: str) -> dict:
    """/standin/args of a lab host's server: its argv, options and unknown extra args."""
    code, text = api(name, "/standin/args")
    assert code == 200, (name, code, text)
    return json.loads(text)


@pytest.fixture
def plain(lab, tmp_path: Path) -> Path:
    """The fleet on its plain config, and a controller targets file with every server."""
    done = deploy("-y")
    assert done.returncode == 0, done.output
    targets = tmp_path / "vllm.json"
    made = run(sys.executable, "-m", "operations.cli.targets", "inventory/lab.py", "-o",
               str(targets))  # fmt: skip
    assert made.returncode == 0, made.output
    yield targets
    on_host("lab-1", f"docker exec vllm-main rm -f {STUCK} {TOKEN_DELAY}")
    done = deploy("-y")
    assert done.returncode == 0, done.output


class Load:
    """A bounded request loop: completions to the servers of the targets file's members at
    each moment, one after another, until stopped (or ``limit`` requests)."""

    def __init__(self, targets: Path, limit: int = 5000):
        self.targets, self.limit = targets, limit
        self.sent, self.failed = 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _members(self) -> list[str]:
        entries = json.loads(self.targets.read_text())
        return [target for entry in entries for target in entry["targets"]]

    def _one(self, target: str) -> None:
        body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 4}).encode()
        request = urllib.request.Request(
            f"http://{target}/v1/completions", data=body, method="POST",
            headers={"Authorization": f"Bearer {LAB_SECRETS['VLLM_API_KEY']}",
                     "Content-Type": "application/json"},
        )  # fmt: skip
        self.sent += 1
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                if response.status != 200:
                    self.failed.append((target, response.status))
        except (urllib.error.URLError, OSError) as error:
            self.failed.append((target, str(error)))

    def _loop(self) -> None:
        turn = 0
        while not self.stop.is_set() and self.sent < self.limit:
            members = self._members()
            if members:
                self._one(members[turn % len(members)])
                turn += 1
            time.sleep(0.02)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def batch_times(output: str) -> dict[str, int]:
    """{batch hosts: seconds} from the rollout's "batch i of n: HOSTS — done in Ns" lines."""
    found = re.findall(r"batch \d+ of \d+: (.+?) — done in (\d+)s", output)
    return {hosts: int(seconds) for hosts, seconds in found}


def test_a_roll_under_load_loses_no_request(plain):
    before = {name: container_ids(name) for name in HOSTS}
    started = time.monotonic()
    with Load(plain) as load:
        done = rollout("--canary", "1", "--batch", "1", "--targets-file", str(plain),
                       "--", "--data", GOOD)  # fmt: skip
        time.sleep(1)  # a few requests after the last host is back
    took = time.monotonic() - started
    assert done.returncode == 0, done.output
    times = batch_times(done.output)
    measured = {"requests_sent": load.sent, "requests_failed": len(load.failed),
                "seconds_per_batch": times, "seconds": round(took)}  # fmt: skip
    report = ROOT / "reports" / "rollout" / "lab-roll.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(measured, indent=2) + "\n")
    report.with_suffix(".log").write_text(done.output)
    print(f"\nlab roll under load: {measured}")
    assert load.failed == [], load.failed[:5]
    assert load.sent >= 50
    assert list(times) == HOSTS  # the canary lab-1, then lab-2, then lab-3
    for index, name in enumerate(HOSTS):
        assert f"batch {index + 1} of 3: {name} — drained 1/1" in done.output
        assert f"batch {index + 1} of 3: {name} — back in the targets" in done.output
        assert container_ids(name) != before[name]  # replaced: the change was rolled
        assert "--max-num-seqs=64" in started_with(name)["argv"]
        assert served(name) == [MODEL]
    assert "out of the targets (" in done.output and "Prometheus on lab-1" in done.output
    assert hosts_in(plain.read_text()) == HOSTS
    live = on_host("lab-1", f"cat {LIVE_TARGETS}")
    assert live.returncode == 0 and hosts_in(live.stdout) == HOSTS


def test_a_change_that_fails_rolls_back_the_canary_only(plain):
    before = {name: container_ids(name) for name in HOSTS}
    done = rollout("--targets-file", str(plain), "--", "--data", BAD)
    assert done.returncode == 1, done.output
    out = done.output
    assert "batch 1/3 (lab-1) failed: pyinfra exited" in out
    assert "batch 1 of 3: lab-1 — rolling back to the previous spec" in out
    assert "batch 1 of 3: lab-1 — rolled back: on the previous spec and serving again" in out
    assert "stopping: the canary failed" in out
    assert "not touched, still on the previous version: lab-2, lab-3" in out
    assert "lab-2 —" not in out and "lab-3 —" not in out
    for name in ("lab-2", "lab-3"):
        assert container_ids(name) == before[name]
    assert not any("no-such" in arg for arg in started_with("lab-1")["argv"])
    assert served("lab-1") == [MODEL]
    assert hosts_in(plain.read_text()) == HOSTS  # back in once rolled back and ready


def _held_request(result: dict) -> None:
    """One completion to lab-1, held in its queue while the stuck file exists."""
    code, text = api_post("lab-1")
    result["code"], result["text"] = code, text


def completion_request(name: str, fields: dict) -> urllib.request.Request:
    """A completion (``fields`` over a 'hi' prompt to the model) to a lab host's server."""
    body = json.dumps({"model": MODEL, "prompt": "hi"} | fields).encode()
    return urllib.request.Request(
        f"http://{address(name)}:8000/v1/completions", data=body, method="POST",
        headers={"Authorization": f"Bearer {LAB_SECRETS['VLLM_API_KEY']}",
                 "Content-Type": "application/json"},
    )  # fmt: skip


def api_post(name: str) -> tuple[int, str]:
    """A completion to a lab host's server, waiting up to 90 s for its answer."""
    request = completion_request(name, {"max_tokens": 2})
    try:
        with urllib.request.urlopen(request, timeout=90) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def test_a_drain_waits_for_a_request_in_flight(plain):
    before = container_ids("lab-1")
    stuck = on_host("lab-1", f"docker exec vllm-main sh -c 'echo 1 > {STUCK}'")
    assert stuck.returncode == 0, stuck.output
    result: dict = {}
    held = threading.Thread(target=_held_request, args=(result,), daemon=True)
    held.start()
    time.sleep(1)
    command = [sys.executable, "-m", "operations.cli.rollout", "inventory/lab.py",
               "--limit", "lab-1", "--targets-file", str(plain), "--drain-timeout", "50",
               "--", "--data", GOOD]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env=os.environ | LAB_SECRETS)  # fmt: skip
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if "waiting on lab-1 (draining:" in line:
            break
    time.sleep(5)
    assert held.is_alive() and container_ids("lab-1") == before  # still waiting on it
    assert "lab-1" not in hosts_in(plain.read_text())  # out while it drains
    freed = on_host("lab-1", f"docker exec vllm-main rm -f {STUCK}")
    assert freed.returncode == 0, freed.output
    rest, _ = process.communicate(timeout=600)
    out = "".join(lines) + rest
    held.join(timeout=60)
    assert process.returncode == 0, out
    assert result.get("code") == 200, result  # the request in flight finished, not cut
    assert "batch 1 of 1: lab-1 — drained 1/1" in out
    assert "still busy" not in out
    assert container_ids("lab-1") != before
    assert hosts_in(plain.read_text()) == HOSTS


def _streamed_request(result: dict) -> None:
    """A streamed completion of 4 tokens to lab-1: the arrival time of each event."""
    request = completion_request("lab-1", {"max_tokens": 4, "stream": True})
    result["events"] = []
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            for line in response:
                if line.startswith(b"data: "):
                    result["events"].append((time.monotonic(), line[6:].strip()))
    except OSError as error:
        result["error"] = str(error)


def test_a_drain_waits_for_a_streamed_completion_to_finish(plain):
    before = container_ids("lab-1")
    slow = on_host("lab-1", f"docker exec vllm-main sh -c 'echo 2 > {TOKEN_DELAY}'")
    assert slow.returncode == 0, slow.output
    result: dict = {}
    streaming = threading.Thread(target=_streamed_request, args=(result,), daemon=True)
    streaming.start()
    time.sleep(0.5)
    done = rollout("--limit", "lab-1", "--targets-file", str(plain), "--drain-timeout", "60",
                   "--", "--data", GOOD)  # fmt: skip
    finished = time.monotonic()
    streaming.join(timeout=30)
    assert done.returncode == 0, done.output
    assert "error" not in result, result  # the stream was not cut by the replacement
    events = result["events"]
    assert len(events) == 5 and events[-1][1] == b"[DONE]", events
    assert events[-1][0] < finished  # it ended before the rollout did: drained, then replaced
    assert "batch 1 of 1: lab-1 — drained 1/1" in done.output
    assert "waiting on lab-1 (draining:" in done.output  # it did wait on the stream
    assert container_ids("lab-1") != before
    assert hosts_in(plain.read_text()) == HOSTS
