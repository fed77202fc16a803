"""Every case of the bad-input corpus (tests/corpus/bad_input.py) is refused before any host
is touched, with one error line naming host, key, value and what is allowed, and never a
traceback: through deploy.py on pyinfra's fake connector (which records every command sent)
and through the pyinfra CLI."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from operations.config.load import ConfigError
from tests.corpus.bad_input import CASES, HOST_CASES, Case, make_files
from tests.plan.harness import ROOT, FakeFleet
from tests.plan.test_docker_plan import by_name, profile


def test_the_corpus_is_big_and_every_case_distinct():
    assert len(CASES) >= 200
    assert len({case.id for case in CASES}) == len(CASES)
    assert len({(case.key, repr(case.data)) for case in CASES}) == len(CASES)


def _error_line(text: str, host: str, case: Case) -> str:
    lines = [line for line in text.splitlines() if f"{host}: {case.key} = " in line]
    assert len(lines) == 1, f"{case.id}: no single line names {host} and {case.key}:\n{text}"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case_is_refused_before_any_host_is_touched(tmp_path, monkeypatch, case):
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    make_files()
    fleet = FakeFleet(tmp_path, {"bad": dict(case.data), "good": {}})
    with pytest.raises(ConfigError) as raised:
        fleet.plan()
    text = str(raised.value)
    line = _error_line(text, "bad", case)
    assert case.allowed in line, f"{case.id}: {line}"
    assert "Traceback" not in text
    assert case.secret is None or case.secret not in text, f"{case.id}: secret shown: {line}"
    assert case.env or "good:" not in text  # the controller's environment is every host's
    assert fleet.sent() == {"bad": [], "good": []}  # not one command, not even a fact


@pytest.mark.parametrize("case", HOST_CASES, ids=[case.id for case in HOST_CASES])
def test_host_dependent_case_fails_that_host_before_any_change(tmp_path, case):
    """Planning only reads facts; the layer's plan is its failure and nothing else."""
    data = {"fake_responses": {"os-release": profile(*case.os)}, **case.data}
    fleet = FakeFleet(tmp_path, {"bad": data})
    planned = by_name(fleet.plan()["bad"])
    (layer_failed,) = planned.values()  # the layer plans nothing but its failure
    (command,) = layer_failed
    assert case.message in shlex.split(command)[2]  # printf '%s\n' MESSAGE >&2


def test_the_pyinfra_cli_refuses_the_whole_corpus_at_once_without_a_traceback(tmp_path):
    """One CLI run, one fake host per case (environment cases need their own run): every
    case's line is in the one error, and the run ends before any operation."""
    cases = [case for case in CASES if not case.env]
    make_files()
    rows = ",\n".join(f"    ('@fake/{case.id}', {case.data!r})" for case in cases)
    inventory = tmp_path / "corpus.py"
    inventory.write_text(f"corpus = [\n{rows},\n]\n")
    done = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", str(inventory), "deploy.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "invalid configuration, nothing was changed" in output
    assert "Traceback" not in output and "--> Starting operation" not in output
    for case in cases:
        assert case.allowed in _error_line(output, f"@fake/{case.id}", case)
        assert case.secret is None or case.secret not in output, case.id


def test_broken_ssh_data_stops_the_cli_before_it_connects(tmp_path):
    """The inventory's groups go through checked_hosts, so pyinfra never reaches a host: no
    'Connecting' and no traceback from its SSH connector (a missing key file gave one)."""
    ssh_cases = [case for case in CASES if case.key.startswith("ssh_")]
    make_files()
    rows = ", ".join(f"({case.id!r}, {case.data!r})" for case in ssh_cases)
    inventory = tmp_path / "ssh.py"
    inventory.write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from operations.config.load import checked_hosts\n\n"
        f"fleet = checked_hosts([{rows}])\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", str(inventory), "deploy.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output
    assert "Connecting to hosts" not in output
    for case in ssh_cases:
        assert case.allowed in _error_line(output, case.id, case)
