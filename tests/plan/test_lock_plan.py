"""Plan tests of the per-host deploy lock (operations.kit.lock): taken once, after preflight and
before the package manager step; a host another run holds fails alone, naming the holder,
with nothing else planned on it; --dry takes none. The lock script itself runs in a real
shell here too: its flock, its wait, its owner line and its quoting."""

from __future__ import annotations

import logging
import subprocess
import time

import click
import pytest

from operations.kit import lock
from operations.kit.lock import MARK, SCRIPT, Answer, DeployLock, owner, parse, printable
from tests.plan.harness import FakeFleet
from tests.plan.test_docker_plan import profile

HOLDER = "ops@ctl-1 pid 1234 since 2026-12-01 12:03:04 UTC (pyinfra inventory/prod.py deploy.py)"


def answered(*lines: str) -> dict:
    return {MARK: {"stdout": list(lines)}}


def fleet(tmp_path, hosts: dict[str, dict]) -> FakeFleet:
    """Hosts running the Docker layer, each answering the lock with its own lines."""
    return FakeFleet(
        tmp_path,
        {
            name: {
                "fake_responses": {**responses, "os-release": profile()},
                "deploy_layers": "docker",
            }
            for name, responses in hosts.items()
        },
    )


def lock_commands(sent: list[str]) -> list[int]:
    return [i for i, command in enumerate(sent) if command.startswith("sh -c ") and MARK in command]


def test_the_lock_is_taken_once_after_preflight_and_before_the_package_manager(tmp_path):
    planned = fleet(tmp_path, {"h": answered(f"{MARK}\tacquired\t0\t")})
    plans = planned.plan(base=True)
    sent = planned.sent()["h"]
    (at,) = lock_commands(sent)
    assert "os-release" in sent[0]  # preflight's read-only facts first
    assert at == 1  # then the lock, before any fact of the package manager or a layer
    assert any(name.startswith("Package manager") for name, _ in plans["h"])
    assert "/run/gpufleet" in sent[at] and "300" in sent[at]  # its dir, deploy_lock_wait_s


def test_a_host_another_run_holds_fails_alone_naming_the_holder(tmp_path, caplog):
    planned = fleet(
        tmp_path,
        {"busy": answered(f"{MARK}\tbusy\t{HOLDER}"), "free": answered(f"{MARK}\tacquired\t0\t")},
    )
    plans = planned.plan(base=True)
    ((name, (command,)),) = plans["busy"]  # the failing operation and nothing else
    assert name == "Deploy lock"
    assert f"locked by {HOLDER}; waited 300s (deploy_lock_wait_s)" in command
    assert command.rstrip().endswith("exit 1")
    assert f"locked by {HOLDER}" in caplog.text
    assert len(plans["free"]) > 3  # the other host is planned as usual
    assert "Deploy lock" not in [name for name, _ in plans["free"]]


def test_a_lock_got_after_waiting_says_whom_it_waited_for(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pyinfra")
    plans = fleet(tmp_path, {"h": answered(f"{MARK}\tacquired\t42\t{HOLDER}")}).plan()
    assert plans["h"]  # planned as usual
    assert f"deploy lock: waited 42s for {HOLDER}" in caplog.text


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        ([f"{MARK}\terror\tflock (util-linux) is not installed"], "flock (util-linux)"),
        ([f"{MARK}\terror\tcannot create /run/gpufleet"], "cannot create /run/gpufleet"),
        (["some other output"], "the lock script gave no answer"),
    ],
)
def test_a_lock_that_cannot_be_taken_fails_the_host(tmp_path, lines, said):
    ((name, (command,)),) = fleet(tmp_path, {"h": answered(*lines)}).plan(base=True)["h"]
    assert name == "Deploy lock" and said in command and "exit 1" in command


def test_a_deploy_limited_to_preflight_takes_no_lock(tmp_path):
    planned = FakeFleet(
        tmp_path, {"h": {"fake_responses": {"os-release": profile()}, "deploy_layers": "preflight"}}
    )
    planned.plan()
    assert lock_commands(planned.sent()["h"]) == []


@pytest.fixture(autouse=True)
def _forget_the_run():
    yield
    lock._Run.command, lock._Run.dry = None, False


def test_dry_takes_no_lock(tmp_path):
    command = click.Command("pyinfra")
    with click.Context(command) as context:
        context.params.update(inventory="inventory/lab.py", operations=("deploy.py",), dry=True)
        lock.remember_run()  # as config.py does, in the CLI's context
    planned = fleet(tmp_path, {"h": answered(f"{MARK}\tbusy\t{HOLDER}")})
    plans = planned.plan()  # planned outside click's context, as the hosts' greenlets are
    assert lock_commands(planned.sent()["h"]) == []
    assert "Deploy lock" not in [name for name, _ in plans["h"]]


def test_no_answer_counts_as_taken_only_on_the_fake_connector():
    """@fake answers every unscripted command with nothing; a real host must say acquired."""
    with pytest.raises(Exception):  # noqa: B017, PT011  (no host context: fail_host needs one)
        lock._decide(None, 10)
    assert lock._decide(Answer("acquired"), 10) is True


# --- the owner line -----------------------------------------------------------------------


def test_the_owner_names_user_host_pid_start_and_command_without_data_values():
    command = click.Command("pyinfra")
    with click.Context(command) as context:
        context.params.update(
            inventory="inventory/prod.py",
            operations=("deploy.py",),
            limit=("gpu",),
            data=("vllm_api_key=sk-secret-value",),
            ssh_password="hunter2",
        )
        lock.remember_run()
    line = owner()  # outside the context, as in a host's planning greenlet
    assert f"pid {__import__('os').getpid()} since 20" in line
    assert line.endswith("UTC (pyinfra inventory/prod.py deploy.py --limit gpu)")
    assert "@" in line.split(" pid ")[0]
    assert "sk-secret-value" not in line and "hunter2" not in line


def test_a_holder_line_from_the_host_is_shown_as_printable_text_only():
    hostile = f"{MARK}\tbusy\tevil\x1b[2J\u202eholder\x00x"
    answer = parse([hostile])
    assert answer.status == "busy"
    assert answer.detail == "evil?[2J?holder?x"
    assert printable("a" * 500).endswith("...") and len(printable("a" * 500)) == 200


# --- the script, in a real shell ------------------------------------------------------------


def _script(directory, wait: int, holder: str, pid: int | None = None, timeout: int = 30):
    args = ["sh", "-c", SCRIPT, MARK, str(directory), str(wait), holder]
    args += [str(pid)] if pid else []
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return parse(done.stdout.splitlines())


def test_the_script_locks_waits_and_names_the_holder(tmp_path):
    keeper = subprocess.Popen(["sleep", "3"])  # the "connection" of the first run
    try:
        assert _script(tmp_path, 0, "first run", keeper.pid) == Answer("acquired", "", 0)
        assert _script(tmp_path, 0, "second run") == Answer("busy", "first run")
        started = time.monotonic()
        assert _script(tmp_path, 1, "second run") == Answer("busy", "first run")
        assert 0.8 < time.monotonic() - started < 5  # its wait is bounded by WAIT_S
        got = _script(tmp_path, 20, "third run", keeper.pid)  # free once the keeper is gone
        assert got.status == "acquired" and got.detail == "first run" and 1 <= got.waited_s <= 6
    finally:
        keeper.kill()
    assert (tmp_path / "deploy.owner").read_text() == "third run\n"


def test_a_lock_whose_holder_is_gone_is_free_at_once(tmp_path):
    """A killed run: its holder process ends with its connection; no stale lock stays."""
    keeper = subprocess.Popen(["sleep", "30"])
    assert _script(tmp_path, 0, "killed run", keeper.pid).status == "acquired"
    keeper.kill()
    keeper.wait()
    got = _script(tmp_path, 5, "next run")
    assert got.status == "acquired" and got.waited_s <= 2


def test_the_fact_command_carries_hostile_values_as_plain_words(tmp_path):
    """The owner line and the directory reach the script as single words (quoting.shell)."""
    directory = tmp_path / "a dir; touch pwned"
    holder = "x'; touch pwned; echo '$(id) `id`"
    command = DeployLock().command(str(directory), 0, holder)
    done = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert parse(done.stdout.splitlines()).status == "acquired", done.stdout + done.stderr
    assert (directory / "deploy.owner").read_text() == holder + "\n"
    assert not (tmp_path / "pwned").exists()


# --- fenced commands: stopped with their run's connection -------------------------------------


def _fenced_command(tmp_path, script: str) -> subprocess.Popen:
    """A fenced command in a session of its own, as sshd starts each command of a connection."""
    command = lock.fenced(script, str(tmp_path))
    return subprocess.Popen(["sh", "-c", command], start_new_session=True)


def _gone(process: subprocess.Popen, timeout: float) -> bool:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_a_fenced_command_is_stopped_when_its_connection_goes(tmp_path):
    """A readiness wait that outlived its controller must not act under the next run."""
    keeper = subprocess.Popen(["sleep", "60"])  # the run's connection
    assert _script(tmp_path, 0, "killed run", keeper.pid).status == "acquired"
    acted = tmp_path / "acted"
    command = _fenced_command(tmp_path, f"sleep 30; touch {acted}")
    deadline = time.monotonic() + 10
    while not (tmp_path / "deploy.fenced").exists():
        assert time.monotonic() < deadline, "the command did not register"
        time.sleep(0.05)
    assert not _gone(command, 1.5)  # the connection lives: it runs on
    keeper.kill()
    keeper.wait()
    got = _script(tmp_path, 20, "next run")  # the lock is released after the stop
    assert got.status == "acquired", got
    assert _gone(command, 1)  # stopped before the lock was free
    assert command.returncode != 0 and not acted.exists()
    assert not (tmp_path / "deploy.fenced").exists()


def test_a_fenced_command_that_ended_leaves_nothing_to_stop(tmp_path):
    """It removes its registration; a stale one whose start time differs kills nothing."""
    done = _fenced_command(tmp_path, "true")
    assert _gone(done, 10) and done.returncode == 0
    assert not (tmp_path / "deploy.fenced").exists()
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    (tmp_path / "deploy.fenced").write_text(f"{bystander.pid} 1\n")  # a reused number
    keeper = subprocess.Popen(["sleep", "60"])
    try:
        assert _script(tmp_path, 0, "run", keeper.pid).status == "acquired"
        (tmp_path / "deploy.fenced").write_text(f"{bystander.pid} 1\n")
        keeper.kill()
        keeper.wait()
        assert _script(tmp_path, 20, "next run").status == "acquired"
        assert not _gone(bystander, 1)  # not the registered process: left alone
    finally:
        bystander.kill()
