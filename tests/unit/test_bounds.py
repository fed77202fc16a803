"""Unit tests of operations.kit.bounds (the bound of every remote command) and of the verify
suite's bounded commands: a host that stops answering fails within its bound, once, with
the reason, and every later command on it fails at once."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gevent
import pytest
import testinfra

from operations.config.load import load_config
from operations.config.model import FleetConfig
from operations.kit import bounds
from operations.kit.bounds import Watch, timeout_for
from tests.plan.harness import gateway_off
from tests.verify.fleet import FleetHost, Unreachable, _ssh_block

# --- the policy ---------------------------------------------------------------------------


def config_of(**data) -> FleetConfig:
    """The validated config of a host with this data (the deploy's own loader)."""
    config, problems = load_config("gpu-3", gateway_off(data))
    assert problems == []
    return config


@pytest.mark.parametrize("value", [True, False, 0, -1, 86401, 1.5, "soon", "", [5]])
def test_a_bound_that_is_not_whole_seconds_is_refused_with_what_is_allowed(value):
    config, problems = load_config("gpu-1", {"deploy_command_timeout_s": value})
    assert config is None
    (problem,) = problems
    assert problem.key == "deploy_command_timeout_s" and problem.value == value


@pytest.mark.parametrize(
    ("command", "fact", "seconds", "why"),
    [
        ("cat /etc/os-release", True, 60, "deploy_fact_timeout_s"),
        ("docker inspect vllm-main", True, 60, "deploy_fact_timeout_s"),
        ("apt-get install -y curl", True, 60, "deploy_fact_timeout_s"),  # a fact is a fact
        ("DEBIAN_FRONTEND=noninteractive apt-get -y install curl", False, 1800, "deploy_install"),
        ("dnf install -y docker-ce", False, 1800, "deploy_install_timeout_s"),
        ("docker pull vllm/vllm-openai:v0.11.0", False, 1800, "deploy_install_timeout_s"),
        ("docker load -q -i /var/tmp/x.tar", False, 1800, "deploy_install_timeout_s"),
        ("docker rm -f vllm-main", False, 600, "deploy_command_timeout_s"),
        ("chmod 600 /x && mv -f /x /y", False, 600, "deploy_command_timeout_s"),
    ],
)
def test_each_kind_of_command_gets_its_own_bound(command, fact, seconds, why):
    got_seconds, got_why = timeout_for(command, FleetConfig(), fact)
    assert got_seconds == seconds and got_why.startswith(why)


def test_a_file_transfer_gets_the_install_bound_even_while_a_fact_is_read():
    for reading_fact in (False, True):
        assert timeout_for("", FleetConfig(), reading_fact, transfer=True) == (
            1800,
            "deploy_install_timeout_s",
        )


def test_the_waits_follow_their_own_settings_and_an_operations_timeout_wins():
    config = config_of(
        vllm_ready_timeout_s=30, docker_restart_timeout_s=10, deploy_timeout_margin_s=5
    )
    assert bounds.readiness_s(config) == 35
    assert bounds.restart_s(config) == 25  # a restart and a rollback's restart
    assert timeout_for("apt-get install x", config, False, explicit=7) == (
        7,
        "the operation's _timeout",
    )


def test_the_layers_give_their_waits_their_own_bound(tmp_path):
    """The readiness wait and the daemon.json applies carry ``_timeout`` from bounds (the
    commands a fresh host would be sent, planned on pyinfra's fake connector)."""
    from pyinfra.context import ctx_config, ctx_host, ctx_state

    from tests.plan.harness import FakeFleet
    from tests.plan.test_docker_plan import profile

    data = {
        "fake_responses": {"os-release": profile("debian", "12", "bookworm")},
        "vllm_ready_timeout_s": 30,
        "docker_restart_timeout_s": 20,
        "deploy_timeout_margin_s": 5,
    }
    fleet = FakeFleet(tmp_path, {"h": data})
    fleet.plan()
    (host,) = fleet.inventory
    found: dict[str, object] = {}
    state = fleet.state
    with ctx_state.use(state), ctx_config.use(state.config), ctx_host.use(host):
        for op_hash in fleet.state.get_op_order():
            if op_hash not in fleet.state.ops[host]:
                continue
            op_data = fleet.state.get_op_data_for_host(host, op_hash)
            name = ", ".join(sorted(fleet.state.op_meta[op_hash].names))
            for command in op_data.command_generator():
                explicit = getattr(command, "connector_arguments", {}).get("_timeout")
                found[name] = explicit or op_data.global_arguments.get("_timeout")
    ready = [timeout for name, timeout in found.items() if name.startswith("vLLM server")]
    assert 35 in ready, found  # readiness 30 + margin 5
    daemon = [timeout for name, timeout in found.items() if "daemon.json" in name]
    assert daemon and set(daemon) == {2 * 20 + 5}, found


# --- one host's watch ---------------------------------------------------------------------


class FakeTransport:
    def __init__(self, answers: bool):
        self.answers, self.active = answers, True

    def is_active(self) -> bool:
        return self.active

    def global_request(self, kind: str, wait: bool = True):
        assert kind == "keepalive@openssh.com" and wait
        if not self.answers:
            gevent.sleep(3600)  # a paused host: the request is never answered


class FakeClient:
    def __init__(self, answers: bool = True):
        self.transport = FakeTransport(answers)
        self.closed = gevent.event.Event()

    def get_transport(self):
        return self.transport

    def close(self) -> None:
        self.transport.active = False
        self.closed.set()


def watch_of(data: dict, client: FakeClient | None = None) -> Watch:
    config = config_of(**data)
    host = SimpleNamespace(
        name="gpu-3",
        print_prefix="[gpu-3] ",
        data=SimpleNamespace(dict=lambda: data),
        connector=SimpleNamespace(client=client),
    )
    state = SimpleNamespace(failed_hosts=set(), is_executing=True)
    return Watch(state, host, config)


def test_a_command_past_its_bound_stops_the_host_once_and_later_commands_fail_at_once(caplog):
    client = FakeClient()
    watch = watch_of({"deploy_command_timeout_s": 1}, client)

    def hangs(command, **kwargs):
        assert kwargs["_timeout"] == 1  # pyinfra's own read bound is set too
        gevent.sleep(3600)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        watch.call(hangs, "docker rm -f vllm-main", (), {}, False)
    assert time.monotonic() - started < 1 + bounds.GRACE_S + 1
    assert watch.stopped == "`docker rm -f vllm-main` gave no answer within 1 s " + (
        "(deploy_command_timeout_s)"
    )
    assert client.closed.is_set()  # nothing is left waiting on it
    assert "[gpu-3] stopped answering: `docker rm -f vllm-main`" in caplog.text

    def never_called(command, **kwargs):
        raise AssertionError("a stopped host gets no more commands")

    status, output = watch.call(never_called, "true", (), {}, False)
    assert status is False and "gpu-3 stopped answering: `docker rm" in output.stderr
    assert watch.call(never_called, "/src", ("/dest",), {}, True) is False  # a transfer too
    assert caplog.text.count("stopped answering") == 1  # logged once


def test_no_reply_to_keepalives_stops_the_host_while_a_command_waits():
    client = FakeClient(answers=False)
    watch = watch_of({"deploy_keepalive_interval_s": 1, "deploy_keepalive_count": 2}, client)

    def waits_for_the_host(command, **kwargs):
        client.closed.wait()  # what paramiko's readers do until the connection is closed
        raise OSError("Channel closed.")

    started = time.monotonic()
    status, output = watch.call(waits_for_the_host, "apt-get install -y x", (), {}, False)
    took = time.monotonic() - started
    assert status is False and 2 < took < 5, took  # one interval, then two unanswered
    assert watch.stopped == "no reply to 2 SSH keepalives in 2 s"
    assert "gpu-3 stopped answering: no reply to 2 SSH keepalives" in output.stderr


def test_answered_keepalives_let_a_long_command_finish():
    client = FakeClient(answers=True)
    watch = watch_of({"deploy_keepalive_interval_s": 1, "deploy_keepalive_count": 1}, client)

    def slow(command, **kwargs):
        gevent.sleep(2.5)
        return True, "done"

    assert watch.call(slow, "apt-get install -y x", (), {}, False) == (True, "done")
    assert watch.stopped is None and not client.closed.is_set()


def test_a_connection_lost_mid_command_fails_that_command_not_the_run():
    watch = watch_of({}, FakeClient())

    def eof(command, **kwargs):
        raise EOFError()

    # an OSError, which pyinfra handles
    with pytest.raises(ConnectionResetError, match=r"connection lost \(EOF\)"):
        watch.call(eof, "true", (), {}, False)
    assert watch.stopped is None  # lost, not hung: pyinfra reports it as an SSH error


def test_no_keepalive_without_an_ssh_client():
    watch = watch_of({"deploy_keepalive_interval_s": 1})
    assert watch.call(lambda command, **kw: (True, "ok"), "true", (), {}, False) == (True, "ok")
    assert watch.keepalive is None


# --- verify -------------------------------------------------------------------------------


def test_verify_ssh_config_sends_keepalives_that_want_a_reply():
    block = _ssh_block("gpu-1", {"ssh_hostname": "10.0.0.1"}, FleetConfig())
    assert "  ServerAliveInterval 10\n  ServerAliveCountMax 3" in block
    tuned = _ssh_block(
        "gpu-1", {}, config_of(deploy_keepalive_interval_s=2, deploy_keepalive_count=5)
    )
    assert "  ServerAliveInterval 2\n  ServerAliveCountMax 5" in tuned


def test_verify_command_past_its_bound_fails_that_host_at_once_afterwards():
    host = FleetHost("gpu-2", config_of(deploy_fact_timeout_s=1), {})
    backend = testinfra.get_host("local://").backend
    assert host.run_bounded(backend, "echo %s", "ok").stdout == "ok\n"
    started = time.monotonic()
    with pytest.raises(Unreachable, match=r"gpu-2 stopped answering: no result within 1 s"):
        host.run_bounded(backend, "sleep 30")
    assert time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(Unreachable, match="gpu-2 stopped answering"):
        host.run_bounded(backend, "echo never")
    with pytest.raises(Unreachable, match="gpu-2 stopped answering"):
        _ = host.host  # a check asking for the host fails at once too
    assert time.monotonic() - started < 0.5


def test_verify_ssh_exit_255_is_a_host_that_stopped_answering():
    host = FleetHost("gpu-4", FleetConfig(), {})
    backend = testinfra.get_host("local://").backend
    with pytest.raises(Unreachable, match=r"gpu-4 stopped answering: ssh lost the connection"):
        host.run_bounded(backend, "echo 'Timeout, server not responding.' >&2; exit 255")
    with pytest.raises(Unreachable):
        host.run_bounded(backend, "true")


# --- a fact that cannot be read as an operation executes ----------------------------------

_READS_AT_EXECUTE = """
from pyinfra import host, state
from pyinfra.api import FactBase, operation
from pyinfra.context import ctx_host, ctx_state

from operations.kit import bounds
from operations.config.model import FleetConfig


class Probe(FactBase):
    def command(self, stage):
        return f"probe-{stage}"

    def process(self, output):
        return {"said": output[0]}


@operation()
def reads_a_fact_as_it_executes():
    found = host.get_fact(Probe, stage="execute" if state.is_executing else "plan")
    yield f"echo {found['said']}"  # a missing fact (None) would raise here: TypeError


bounds.install(ctx_state.get(), ctx_host.get(), FleetConfig())
reads_a_fact_as_it_executes(name="Reads a fact as it executes")
"""


def test_a_fact_that_fails_as_an_operation_executes_fails_that_host_not_the_run(
    tmp_path, monkeypatch
):
    from pyinfra.api.operations import run_ops
    from pyinfra.api.state import StateStage
    from pyinfra.context import ctx_config, ctx_inventory, ctx_state

    from tests.plan import harness

    deploy_file = tmp_path / "reads_at_execute.py"
    deploy_file.write_text(_READS_AT_EXECUTE)
    monkeypatch.setattr(harness, "DEPLOY", str(deploy_file))
    answers = {"probe-plan": ["planned"], "probe-execute": ["executed"]}
    gone = {"probe-plan": ["planned"], "probe-execute": {"success": False, "stderr": "gone"}}
    fleet = harness.FakeFleet(
        tmp_path, {"good": {"fake_responses": answers}, "bad": {"fake_responses": gone}}
    )
    fleet.plan()
    state = fleet.state
    with ctx_state.use(state), ctx_inventory.use(fleet.inventory), ctx_config.use(state.config):
        state.set_stage(StateStage.Execute)
        run_ops(state)  # raises nothing: the run goes on
    assert [h.name for h in state.failed_hosts] == ["@fake/bad"]
    assert "echo executed" in fleet.sent()["good"]
    assert not any(command.startswith("echo") for command in fleet.sent()["bad"])
