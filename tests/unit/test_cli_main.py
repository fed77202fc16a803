"""The ``gpufleet`` console command: each subcommand is its tool's own main."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from operations.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


def test_no_command_or_an_unknown_one_is_refused_with_the_usage(capsys):
    assert cli.main([]) == 2
    assert "usage: gpufleet COMMAND" in capsys.readouterr().err
    assert cli.main(["deploy"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'deploy'" in err and "rollout" in err and "lab" in err
    assert cli.main(["--help"]) == 0
    assert "targets" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_gets_the_rest_of_the_arguments_and_returns_its_exit_code(monkeypatch, name):
    seen = []

    def fake(argv):
        seen.append(argv)
        return 7

    monkeypatch.setitem(cli.COMMANDS, name, (fake, "x"))
    assert cli.main([name, "a", "--b", "c"]) == 7
    assert seen == [["a", "--b", "c"]]


def test_the_installed_console_script_runs_a_real_command():
    """The entry point (pyproject's [project.scripts]) as ./dev installs it."""
    script = Path(sys.executable).parent / "gpufleet"
    assert script.exists(), "gpufleet is not installed: run ./dev venv"
    done = subprocess.run([script, "render", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = subprocess.run([script, "rollout", "no/such/inventory.py"], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "no/such/inventory.py" in bad.stdout + bad.stderr
