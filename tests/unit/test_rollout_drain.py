"""Drained, reversible rollouts: the canary first, hosts taken out of the targets and drained
before their deploy, put back only once ready, a failed batch rolled back to the inventory's
own spec, the abort threshold, and the progress lines.

pyinfra is never started: a fake runner records each run (and the targets file as it was
then); a fake probe answers /metrics and /health per server, from scripted sequences.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from operations.cli.rollout import Plan, hosts_of, main, plan_batches, previous_extra, roll
from operations.rollout.membership import ENV, PUSH
from operations.rollout.serving import (
    load_of,
    requests_in_flight,
    wait_drained,
    wait_ready,
)
from tests.plan.harness import gateway_off_beside

FLEET = """\
gpu = [
    ("h1", {"host_address": "10.0.0.1"}),
    ("h2", {"host_address": "10.0.0.2", "vllm_instances": [
        {"name": "a", "gpus": [0], "port": 8001},
        {"name": "b", "gpus": [1], "port": 8002},
    ]}),
    ("h3", {"host_address": "10.0.0.3"}),
    ("h4", {"host_address": "10.0.0.4"}),
]
"""
MONITORED = FLEET + 'monitoring = [("m1", {"host_address": "10.0.0.9", "deploy_layers": ' \
    '["preflight", "monitoring"], "monitoring_prometheus": True})]\n'  # fmt: skip
TARGETS = {
    "h1": ["10.0.0.1:8000"],
    "h2": ["10.0.0.2:8001", "10.0.0.2:8002"],
    "h3": ["10.0.0.3:8000"],
    "h4": ["10.0.0.4:8000"],
}


def metrics(running: int, waiting: int = 0) -> str:
    labels = '{engine="0",model_name="m"}'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        f"vllm:num_requests_running{labels} {float(running)}\n"
        f"vllm:num_requests_waiting{labels} {float(waiting)}\n"
    )


class Probe:
    """/metrics and /health per target: each target's scripted answers, the last repeated."""

    def __init__(self, busy=None, health=None):
        self.busy = {t: list(v) for t, v in (busy or {}).items()}  # target: [running, ...]
        self.health = {t: list(v) for t, v in (health or {}).items()}  # target: [status, ...]
        self.urls: list[str] = []

    @staticmethod
    def _next(answers: list):
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def __call__(self, url: str) -> tuple[int, str]:
        self.urls.append(url)
        target, path = url.removeprefix("http://").split("/", 1)
        if path == "metrics":
            return 200, metrics(self._next(self.busy.get(target, [0])))
        status = self._next(self.health.get(target, [200]))
        return status, "" if status else "Connection refused"


class Runner:
    """Stands in for pyinfra: records each run, the controller targets file at that moment
    (and a pushed file's content), and answers exit codes by host or in turn."""

    def __init__(self, targets_file: Path | None = None, codes=(), fail_hosts=()):
        self.targets_file, self.codes, self.fail_hosts = targets_file, list(codes), fail_hosts
        self.commands: list[list[str]] = []
        self.seen: list[list[str] | None] = []  # hosts in the targets file at each run
        self.pushed: list[list[str]] = []

    def __call__(self, command: list[str], cwd: Path) -> int:
        self.commands.append(command)
        if PUSH in command:
            entries = json.loads(Path(os.environ[ENV]).read_text())
            self.pushed.append(sorted({e["labels"]["gpufleet_host"] for e in entries}))
            return 0
        self.seen.append(_hosts_in(self.targets_file))
        if self.codes:
            return self.codes.pop(0)
        hosts = _limits(command)
        new = any(a.startswith("vllm_image=") for a in command)
        return 1 if new and set(hosts) & set(self.fail_hosts) else 0

    @property
    def deploys(self) -> list[list[str]]:
        return [_limits(c) for c in self.commands if PUSH not in c]


def _limits(command: list[str]) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == "--limit"]


def _hosts_in(path: Path | None) -> list[str] | None:
    if path is None or not path.exists():
        return None
    return sorted({e["labels"]["gpufleet_host"] for e in json.loads(path.read_text())})


@pytest.fixture
def fleet(tmp_path: Path) -> str:
    path = tmp_path / "fleet.py"
    path.write_text(FLEET)
    gateway_off_beside(path)
    return str(path)


NEW = ["--data", "vllm_image=vllm/vllm-openai:v0.11.1"]


def rollout(inventory, *args, run, probe=None, extra=NEW):
    return main([inventory, *args, "--", *extra], run=run, probe=probe or Probe(),
                sleep=lambda _s: None)  # fmt: skip


# --- serving: load and readiness ------------------------------------------------------------


def test_requests_in_flight_sums_running_and_waiting_over_labelled_samples():
    text = metrics(2, 1) + 'vllm:num_requests_running{engine="1",model_name="m"} 3.0\n'
    assert requests_in_flight(text) == (5, 1)
    assert requests_in_flight("vllm:num_requests_running 0.0\n") == (0, 0)
    assert requests_in_flight("node_load1 3\nvllm:num_requests_running_total 4\n") is None


def test_a_server_that_refuses_the_connection_has_nothing_to_drain():
    load = load_of("h:1", lambda url: (0, "[Errno 111] Connection refused"))
    assert load.busy == 0


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ((404, ""), "metrics: HTTP 404"),
        (
            (403, ""),
            "metrics: HTTP 403 (the gateway answers /metrics only to the monitoring "
            "hosts and gateway_metrics_allow: add this controller's address)",
        ),
        ((0, "timed out"), "metrics: timed out"),
        ((200, "up 1\n"), "metrics: no vllm:num_requests_running"),
        ((200, metrics(3, 2)), "3 running, 2 waiting"),
    ],
)
def test_a_server_not_known_idle_is_busy_saying_why(answer, why):
    load = load_of("h:1", lambda url: answer)
    assert load.busy > 0 and load.why == why


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_drained_polls_until_every_server_is_idle_saying_who_it_waits_on():
    probe = Probe(busy={"10.0.0.2:8002": [3, 1, 0]})
    lines, clock = [], Clock()
    servers = {h: TARGETS[h] for h in ("h1", "h2")}
    left = wait_drained(servers, 30, lines.append, probe, clock=clock, sleep=clock.sleep)
    assert left == {}
    assert lines == [
        "drained 1/2, waiting on h2 (draining: 3 running)",
        "drained 1/2, waiting on h2 (draining: 1 running)",
        "drained 2/2",
    ]


def test_wait_drained_gives_up_at_its_timeout_naming_what_is_still_running():
    probe = Probe(busy={"10.0.0.1:8000": [2]})
    clock = Clock()
    left = wait_drained({"h1": TARGETS["h1"]}, 5, lambda _l: None, probe, clock=clock,
                        sleep=clock.sleep)  # fmt: skip
    assert left == {"h1": "draining: 2 running"}
    assert 5 <= clock.now <= 6


def test_wait_ready_waits_for_health_200_on_every_server():
    probe = Probe(health={"10.0.0.2:8001": [0, 503, 200]})
    lines, clock = [], Clock()
    left = wait_ready({"h2": TARGETS["h2"]}, 30, lines.append, probe, clock=clock,
                      sleep=clock.sleep)  # fmt: skip
    assert left == {}
    assert lines[0] == "ready 0/1, waiting on h2 (not ready: Connection refused)"
    assert lines[1] == "ready 0/1, waiting on h2 (not ready: HTTP 503)"
    assert lines[-1] == "ready 1/1"


# --- batches ------------------------------------------------------------------------------


def test_the_canary_goes_alone_first_then_the_rest_in_batches():
    assert plan_batches(["h1", "h2", "h3", "h4", "h5"], 2, canary=1) == [
        ["h1"], ["h2", "h3"], ["h4", "h5"],
    ]  # fmt: skip
    assert plan_batches(["h1", "h2", "h3"], 2, canary=0) == [["h1", "h2"], ["h3"]]
    assert plan_batches(["h1", "h2"], 1, canary=2) == [["h1", "h2"]]


@pytest.mark.parametrize(
    ("setting", "selected", "at_least_one", "count"),
    [("1", 4, True, 1), ("25%", 4, True, 1), ("10%", 4, True, 1), ("10%", 4, False, 0),
     ("50%", 5, False, 2), ("0", 4, True, 0), ("9", 4, True, 4), ("100%", 3, False, 3)],
)  # fmt: skip
def test_counts_and_percents_of_the_selected_hosts(setting, selected, at_least_one, count):
    assert hosts_of(setting, selected, at_least_one) == count


def test_previous_extra_drops_every_data_override_only():
    extra = ["--data", "vllm_image=x", "--parallel", "4", "--data=vllm_extra_args=-y", "--dry"]
    assert previous_extra(extra) == ["--parallel", "4", "--dry"]


def test_the_batch_defaults_to_vllm_max_unavailable_after_a_one_host_canary(fleet):
    run = Runner()
    assert rollout(fleet, run=run) == 0  # 25% of 4 hosts: 1 at a time
    assert run.deploys == [["h1"], ["h2"], ["h3"], ["h4"]]
    run = Runner()
    assert rollout(fleet, "--canary", "25%", "--batch", "3", run=run) == 0
    assert run.deploys == [["h1"], ["h2", "h3", "h4"]]


@pytest.mark.parametrize("bad", ["two", "-1", "101%", "5x"])
def test_a_bad_canary_or_threshold_is_a_usage_error(fleet, capsys, bad):
    for option in ("--canary", "--max-failed-hosts"):
        with pytest.raises(SystemExit) as exited:
            rollout(fleet, option, bad, run=Runner())
        assert exited.value.code == 2
        assert option in capsys.readouterr().err


# --- draining and putting back ------------------------------------------------------------


def test_each_batch_is_out_of_the_targets_during_its_deploy_and_back_after(fleet, tmp_path, capsys):
    targets = tmp_path / "lb" / "vllm.json"
    run = Runner(targets)
    assert rollout(fleet, "--batch", "2", "--targets-file", str(targets), run=run) == 0
    assert run.deploys == [["h1"], ["h2", "h3"], ["h4"]]
    assert run.seen == [["h2", "h3", "h4"], ["h1", "h4"], ["h1", "h2", "h3"]]
    assert _hosts_in(targets) == ["h1", "h2", "h3", "h4"]  # all back in at the end
    entries = json.loads(targets.read_text())
    assert {t for e in entries for t in e["targets"]} == {t for v in TARGETS.values() for t in v}
    out = capsys.readouterr().out
    assert f"rollout: batch 2 of 3: h2, h3 — out of the targets ({targets})" in out
    assert "rollout: batch 2 of 3: h2, h3 — drained 2/2" in out
    assert "rollout: batch 2 of 3: h2, h3 — ready 2/2" in out
    assert "rollout: batch 2 of 3: h2, h3 — back in the targets" in out


def test_a_deploy_waits_until_the_batch_has_drained(fleet, tmp_path, capsys):
    targets = tmp_path / "vllm.json"
    probe = Probe(busy={"10.0.0.2:8001": [2, 1, 0]})
    order = []

    class Watching(Runner):
        def __call__(self, command, cwd):
            order.append(("deploy", _limits(command)))
            return super().__call__(command, cwd)

    def watched(url):
        answer = probe(url)
        if url.endswith("/metrics"):
            order.append(("metrics", url, answer[1].count(" 0.0\n") == 2))
        return answer

    run = Watching(targets)
    assert rollout(fleet, "--batch", "3", "--targets-file", str(targets), run=run,
                   probe=watched) == 0  # fmt: skip
    h2 = [i for i, e in enumerate(order) if e[0] == "metrics" and "10.0.0.2:8001" in e[1]]
    deploy_h2 = order.index(("deploy", ["h2", "h3", "h4"]))
    assert len(h2) == 3 and all(i < deploy_h2 for i in h2)  # polled until idle, then deployed
    out = capsys.readouterr().out
    assert "batch 2 of 2: h2, h3, h4 — drained 2/3, waiting on h2 (draining: 2 running)" in out
    assert "waiting on h2 (draining: 1 running)" in out


def test_a_drain_that_times_out_is_said_and_the_batch_goes_on(fleet, tmp_path, capsys):
    probe = Probe(busy={"10.0.0.1:8000": [4]})
    run = Runner(tmp_path / "t.json")
    args = ("--canary", "1", "--batch", "3", "--drain-timeout", "0",
            "--targets-file", str(tmp_path / "t.json"))  # fmt: skip
    assert rollout(fleet, *args, run=run, probe=probe) == 0
    assert run.deploys[0] == ["h1"]
    err = capsys.readouterr().err
    assert "h1 still busy after 0s (draining: 4 running): going on" in err


def test_hosts_are_put_back_only_when_ready(fleet, tmp_path, capsys):
    targets = tmp_path / "t.json"
    probe = Probe(health={"10.0.0.1:8000": [503, 503, 200]})
    run = Runner(targets)
    assert rollout(fleet, "--batch", "3", "--targets-file", str(targets), run=run,
                   probe=probe) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "batch 1 of 2: h1 — ready 0/1, waiting on h1 (not ready: HTTP 503)" in out
    assert out.index("ready 1/1") < out.index("batch 1 of 2: h1 — back in the targets")


def test_the_monitoring_hosts_targets_are_pushed_without_the_batch(tmp_path):
    path = tmp_path / "fleet.py"
    path.write_text(MONITORED)
    gateway_off_beside(path)
    run = Runner()
    assert rollout(str(path), "--batch", "3", run=run) == 0
    pushes = [c for c in run.commands if PUSH in c]
    assert all(_limits(c) == ["m1"] for c in pushes)
    assert run.pushed == [["h2", "h3", "h4"], ["h1", "h2", "h3", "h4"], ["h1"],
                          ["h1", "h2", "h3", "h4"]]  # fmt: skip
    assert run.deploys == [["h1"], ["h2", "h3", "h4"], ["m1"]]  # m1: deployed, not drained
    assert len(pushes) == 4


# --- failures: rollback and the abort threshold ---------------------------------------------


def test_a_failed_canary_goes_back_to_the_inventory_spec_and_the_rest_is_untouched(
    fleet, tmp_path, capsys
):
    targets = tmp_path / "t.json"
    run = Runner(targets, fail_hosts=["h1"])
    assert rollout(fleet, "--targets-file", str(targets), run=run) == 1
    assert run.deploys == [["h1"], ["h1"]]  # the canary, then its rollback; no other batch
    assert any(a.startswith("vllm_image=") for a in run.commands[0])
    assert not any(a == "--data" for a in run.commands[1])  # the inventory's own spec
    assert run.seen == [["h2", "h3", "h4"], ["h2", "h3", "h4"]]  # out during both
    assert _hosts_in(targets) == ["h1", "h2", "h3", "h4"]  # back once rolled back and ready
    err = capsys.readouterr().err
    assert "batch 1/4 (h1) failed: pyinfra exited 1" in err
    assert "batch 1 of 4: h1 — rolling back to the previous spec" in err
    assert "batch 1 of 4: h1 — rolled back: on the previous spec and serving again" in err
    assert "stopping: the canary failed" in err
    assert "not touched, still on the previous version: h2, h3, h4" in err


def test_a_rollback_that_does_not_get_ready_leaves_the_hosts_out(fleet, tmp_path, capsys):
    targets = tmp_path / "t.json"
    probe = Probe(health={"10.0.0.1:8000": [0]})
    run = Runner(targets, codes=[1, 0])
    assert rollout(fleet, "--targets-file", str(targets), "--ready-timeout", "0", run=run,
                   probe=probe) == 1  # fmt: skip
    assert _hosts_in(targets) == ["h2", "h3", "h4"]
    err = capsys.readouterr().err
    assert "left out of the targets, not ready: h1" in err
    assert "rollback failed" in err


def test_not_ready_after_its_deploy_fails_the_batch(fleet, tmp_path, capsys):
    probe = Probe(health={"10.0.0.1:8000": [503]})
    run = Runner(tmp_path / "t.json")
    args = ("--targets-file", str(tmp_path / "t.json"), "--ready-timeout", "0")
    assert rollout(fleet, *args, run=run, probe=probe) == 1
    assert run.deploys == [["h1"], ["h1"]]
    assert "batch 1/4 (h1) failed: its servers did not answer ready" in capsys.readouterr().err


def test_failed_batches_within_the_threshold_are_rolled_back_and_the_roll_goes_on(fleet, capsys):
    run = Runner(fail_hosts=["h2"])
    assert rollout(fleet, "--max-failed-hosts", "1", run=run) == 1
    assert run.deploys == [["h1"], ["h2"], ["h2"], ["h3"], ["h4"]]
    err = capsys.readouterr().err
    assert "stopping" not in err
    assert "done with failures: rolled back h2" in err


def test_more_failed_hosts_than_the_threshold_stop_the_roll(fleet, capsys):
    run = Runner(fail_hosts=["h2", "h3"])
    assert rollout(fleet, "--max-failed-hosts", "25%", run=run) == 1
    assert run.deploys == [["h1"], ["h2"], ["h2"], ["h3"], ["h3"]]
    err = capsys.readouterr().err
    assert "stopping: 2 host(s) failed (at most 1 may)" in err
    assert "not touched, still on the previous version: h4" in err


def test_without_a_data_change_a_failed_batch_has_nothing_to_roll_back_to(fleet, capsys):
    run = Runner(codes=[1])
    assert rollout(fleet, run=run, extra=["--parallel", "2"]) == 1
    assert run.deploys == [["h1"]]
    assert "no --data change given: nothing to roll back to" in capsys.readouterr().err


def test_roll_without_a_plan_runs_plain_batches():
    """The plain form (no canary, no targets), as operations.cli.rollout.roll always ran."""
    run = Runner()
    assert roll("/inv.py", ["h1", "h2", "h3"], 2, NEW, run=run, plan=Plan()) == 0
    assert run.deploys == [["h1", "h2"], ["h3"]]
