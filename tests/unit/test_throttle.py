"""operations.kit.throttle: a plain deploy replaces at most vllm_max_unavailable serving servers
at once; once one replacement failed, the hosts still waiting leave theirs serving."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import gevent
import pytest
from pyinfra.connectors.util import CommandOutput, OutputLine

from operations import run as fleet
from operations.kit import throttle
from operations.kit.throttle import Throttled, slot_count


@pytest.mark.parametrize(
    ("setting", "hosts", "slots"),
    [("25%", 3, 1), ("25%", 8, 2), ("25%", 9, 2), ("100%", 5, 5), ("1%", 10, 1), ("50%", 1, 1),
     ("2", 10, 2), ("1", 1, 1), ("5", 2, 5)],
)  # fmt: skip
def test_slot_count_is_the_count_or_the_percentage_rounded_down_at_least_one(setting, hosts, slots):
    assert slot_count(setting, hosts) == slots


class State:
    print_output = print_input = False


class Host:
    """A host whose command takes ``seconds`` and returns ``status``, counting how many
    hosts are inside their command at once."""

    inside = 0
    most = 0

    def __init__(self, name: str, status: bool = True, seconds: float = 0.05, lost=False):
        """``lost``: the command failed without its script saying so (connection dropped)."""
        self.name, self.status, self.seconds, self.lost = name, status, seconds, lost
        self.print_prefix = f"[{name}] "
        self.ran = False

    def run_shell_command(self, command, **kwargs):
        Host.inside += 1
        Host.most = max(Host.most, Host.inside)
        self.ran = True
        gevent.sleep(self.seconds)
        Host.inside -= 1
        said = [] if self.status or self.lost else [OutputLine("stderr", throttle.FAILED)]
        return self.status, CommandOutput(said)


@pytest.fixture
def fleet_of(monkeypatch):
    Host.inside = Host.most = 0

    def configure(settings: list[str]):
        configs = {
            f"h{i}": SimpleNamespace(vllm=SimpleNamespace(max_unavailable=setting))
            for i, setting in enumerate(settings)
        }
        monkeypatch.setattr(fleet, "fleet_config", lambda state: configs)

    return configure


def _run_all(state, hosts, setting="25%"):
    command = Throttled("replace", "vllm-main", setting)
    jobs = [gevent.spawn(command.execute, state, h, {}) for h in hosts]
    gevent.joinall(jobs, raise_error=True)
    return [job.value[0] for job in jobs]


def test_at_most_the_slots_replace_at_once_and_every_host_gets_its_turn(fleet_of):
    fleet_of(["25%"] * 8)  # 25% of 8 hosts: 2 at a time
    hosts = [Host(f"h{i}") for i in range(8)]
    assert _run_all(State(), hosts) == [True] * 8
    assert Host.most == 2
    assert all(h.ran for h in hosts)


def test_a_count_is_a_count_of_hosts(fleet_of):
    fleet_of(["3"] * 8)
    _run_all(State(), [Host(f"h{i}") for i in range(8)], setting="3")
    assert Host.most == 3


def test_a_percentage_counts_only_the_hosts_sharing_the_setting(fleet_of):
    fleet_of(["50%"] * 4 + ["100%"] * 4)  # 50% of the 4 hosts with 50%
    _run_all(State(), [Host(f"h{i}") for i in range(4)], setting="50%")
    assert Host.most == 2


def test_after_a_failed_replacement_the_waiting_hosts_leave_their_server(fleet_of, caplog):
    fleet_of(["1"] * 4)
    hosts = [Host("h0", status=False)] + [Host(f"h{i}") for i in range(1, 4)]
    with caplog.at_level(logging.INFO):
        assert _run_all(State(), hosts, setting="1") == [False] * 4
    assert [h.ran for h in hosts] == [True, False, False, False]
    assert Host.most == 1
    held = [r.getMessage() for r in caplog.records if "not replaced" in r.getMessage()]
    assert len(held) == 3 and all("failed on h0" in line for line in held)
    assert "left serving as it was" in held[0]
    assert any("waiting for a free slot (vllm_max_unavailable=1" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_each_run_and_each_instance_has_its_own_slots(fleet_of):
    fleet_of(["1"] * 2)
    state = State()
    first = throttle.slots(state, "vllm-a", "1")
    assert throttle.slots(state, "vllm-a", "1") is first
    assert throttle.slots(state, "vllm-b", "1") is not first
    assert throttle.slots(State(), "vllm-a", "1") is not first


def test_a_host_that_stopped_answering_fails_alone_and_holds_back_nobody(fleet_of, monkeypatch):
    fleet_of(["1"] * 3)
    hung = Host("h0", status=False)
    monkeypatch.setattr(throttle.bounds, "stopped_answering", lambda host: host is hung)
    hosts = [hung, Host("h1"), Host("h2")]
    assert _run_all(State(), hosts, setting="1") == [False, True, True]
    assert all(h.ran for h in hosts)


def test_a_host_lost_mid_command_fails_alone_and_holds_back_nobody(fleet_of):
    """Killed or disconnected: the command fails without its script's FAILED line."""
    fleet_of(["1"] * 3)
    hosts = [Host("h0", status=False, lost=True), Host("h1"), Host("h2")]
    assert _run_all(State(), hosts, setting="1") == [False, True, True]
    assert all(h.ran for h in hosts)


def test_the_script_says_failed_only_when_it_fails():
    import subprocess

    for script, code, said in [("true", 0, False), ("exit 1", 1, True), ("false", 1, True)]:
        done = subprocess.run(["dash", "-c", throttle.reporting(script)], capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == code
        lines = [OutputLine("stderr", line) for line in done.stderr.splitlines()]
        assert throttle.change_failed(CommandOutput(lines)) is said
