"""An interrupted run exits non-zero: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, for the deploy
(pyinfra's CLI, through the project's config.py), the rollout and the Prometheus targets file.
pyinfra's own handler exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from operations.cli import rollout
from operations.cli import targets as prometheus
from operations.cli.rollout import roll

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ["h1", "h2", "h3", "h4", "h5"]

# Planning that stops in a gevent sleep: the signal arrives while pyinfra waits on its
# deploy greenlets, as it does while a host runs a command.
SLEEPY = """
import gevent
from pyinfra.operations import server
print("PLANNING", flush=True)
gevent.sleep(60)
server.shell(name="never", commands=["true"])
"""


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action, whatever this run inherited (a test run started
    in the background by a non-interactive shell has SIGINT ignored, and so would its
    children: they could not be interrupted at all)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _pyinfra_until(tmp_path: Path, marker: str) -> subprocess.Popen:
    """A pyinfra CLI run from the repository root (so config.py is exec'd) on @local with a
    deploy that sleeps while planned; returns once ``marker`` was printed."""
    deploy = tmp_path / "sleepy.py"
    deploy.write_text(SLEEPY)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyinfra",
            "-y",
            "--data",
            "gateway_mode=off",
            "@local",
            str(deploy),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 60
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    assert any(marker in line for line in seen), "".join(seen)
    process.seen = seen
    return process


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_pyinfra_run_interrupted_exits_128_plus_the_signal(tmp_path, signum, code):
    process = _pyinfra_until(tmp_path, "PLANNING")
    process.send_signal(signum)
    rest, _ = process.communicate(timeout=60)
    output = "".join(process.seen) + rest
    assert process.returncode == code, output
    assert f"Interrupted by {signal.Signals(signum).name}: the run stopped early" in output
    assert "Disconnecting from hosts" in output  # pyinfra's cleanup ran
    assert "Traceback" not in output
    assert "Exiting upon user request" not in output  # pyinfra's exit-0 handler is replaced


def test_the_handler_is_installed_only_by_the_cli_config(tmp_path):
    """Imported elsewhere (the API, tests), the module leaves the signal handlers alone."""
    before = signal.getsignal(signal.SIGINT)
    import operations.run  # noqa: F401

    assert signal.getsignal(signal.SIGINT) is before


# --- rollout ----------------------------------------------------------------------------


def _interrupting(at: int, stop: type[BaseException] = KeyboardInterrupt):
    """A runner whose ``at``-th batch is interrupted (earlier ones succeed)."""
    calls = []

    def run(command, cwd):
        calls.append(command)
        if len(calls) == at:
            raise stop
        return 0

    run.calls = calls
    return run


def test_an_interrupted_rollout_exits_130_naming_the_batch_and_the_untouched_hosts(capsys):
    run = _interrupting(2)
    assert roll("/inv.py", HOSTS, 2, run=run) == 130
    err = capsys.readouterr().err
    assert "interrupted (SIGINT) during batch 2/3 (h3, h4)" in err
    assert "not touched, still on the previous version: h5" in err
    assert "failed: pyinfra exited" not in err
    assert len(run.calls) == 2  # no batch after the interrupted one


def test_a_rollout_terminated_exits_143(capsys):
    assert roll("/inv.py", HOSTS, 5, run=_interrupting(1, rollout.Terminated)) == 143
    err = capsys.readouterr().err
    assert "interrupted (SIGTERM) during batch 1/1 (h1, h2, h3, h4, h5)" in err
    assert "not touched" not in err  # every host was in the batch


@pytest.mark.parametrize(("code", "expected"), [(130, 130), (-2, 130), (143, 143), (-15, 143)])
def test_a_batch_ended_by_a_signal_stops_the_rollout_as_interrupted(capsys, code, expected):
    """The batch's pyinfra exited 130/143, or was killed by the signal (Popen's -N)."""
    answers = iter([code])
    assert roll("/inv.py", HOSTS, 1, run=lambda command, cwd: next(answers)) == expected
    assert "interrupted" in capsys.readouterr().err


def test_a_failed_batch_still_exits_1(capsys):
    answers = iter([1])
    assert roll("/inv.py", HOSTS, 1, run=lambda command, cwd: next(answers)) == 1
    assert "batch 1/5 (h1) failed: pyinfra exited 1" in capsys.readouterr().err


CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda s, f: (print("child got", s, flush=True), sys.exit(130)))
signal.signal(signal.SIGTERM, lambda s, f: (print("child got", s, flush=True), sys.exit(143)))
print("ready", flush=True)
time.sleep(60)
"""


def _rollout_call_in_a_child(tmp_path: Path) -> subprocess.Popen:
    """A process whose rollout.call runs a batch that waits for a signal."""
    script = tmp_path / "roll.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nfrom operations.cli import rollout\n"
        "import signal\nsignal.signal(signal.SIGTERM, rollout._terminated)\n"
        f"try:\n    rollout.call([sys.executable, '-c', {CHILD!r}], Path('.'))\n"
        "except (KeyboardInterrupt, rollout.Terminated) as stop:\n"
        "    print('rollout stopped by', type(stop).__name__, flush=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)}, preexec_fn=_default_sigint,
    )  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    return process


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_rollout_passes_the_signal_on_to_its_batch_once_and_waits_for_it(tmp_path, signum):
    process = _rollout_call_in_a_child(tmp_path)
    process.send_signal(signum)
    out, _ = process.communicate(timeout=30)
    assert out.count("child got") == 1, out  # the batch's own process group: no second one
    assert f"child got {int(signum)}" in out
    assert out.index("child got") < out.index("rollout stopped by")  # it waited for the batch


# --- prometheus -------------------------------------------------------------------------


@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt, 130), (prometheus.Terminated, 143)])
def test_an_interrupted_targets_file_run_exits_non_zero_and_keeps_the_old_file(
    tmp_path, monkeypatch, capsys, stop, code
):
    output = tmp_path / "targets.json"
    output.write_text(json.dumps([{"old": True}]))

    def interrupted(*args, **kwargs):
        raise stop

    monkeypatch.setattr(prometheus, "load_hosts", interrupted)
    monkeypatch.setattr(prometheus.signal, "signal", lambda *args: None)
    assert prometheus.main(["inventory/lab.py", "-o", str(output)]) == code
    err = capsys.readouterr().err
    assert f"{output} not changed" in err
    assert json.loads(output.read_text()) == [{"old": True}]
    assert list(tmp_path.iterdir()) == [output]  # no temporary file left


def test_verify_is_pytest_which_exits_non_zero_when_interrupted(tmp_path):
    """verify has no handler of its own: pytest ends a session interrupted by Ctrl-C with
    INTERRUPTED (2), not 0, and runs no test after it."""
    (tmp_path / "test_ctrl_c.py").write_text(
        "import os, signal\n"
        "def test_interrupted():\n    os.kill(os.getpid(), signal.SIGINT)\n"
        "def test_after():\n    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, preexec_fn=_default_sigint,
    )  # fmt: skip
    assert done.returncode == pytest.ExitCode.INTERRUPTED == 2, done.stdout
    assert "KeyboardInterrupt" in done.stdout
    assert "1 passed" not in done.stdout
