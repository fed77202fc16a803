"""Every case of the command-line corpus (tests/corpus/cli.py) through every tool it applies
to: the deploy (pyinfra's CLI), verify, the rollout and the Prometheus targets command. Each
run exits non-zero with one line holding the case's fragments, and no traceback, no pyinfra
"internal exception", no header naming our code instead of the operator's file; the
Prometheus command writes no file. The bad-input corpus (tests/corpus/bad_input.py) is
refused the same way by verify, the rollout and the Prometheus command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus.bad_input import CASES as BAD_INPUT
from tests.corpus.cli import CASES, TOOLS, CliCase, command, write_case
from tests.plan.harness import gateway_off_beside

ROOT = Path(__file__).resolve().parents[2]
RUNS = [(tool, case) for case in CASES for tool in sorted(case.tools)]


def run_commands(commands: list[dict]) -> list[dict]:
    """Run ``python -m module argv`` for each command (forked children of one runner)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.corpus.cli"],
        input=json.dumps(commands), cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str], tuple[int, str, Path]]:
    """{(tool, case id): (exit code, output, case directory)}, every run at once."""
    base = tmp_path_factory.mktemp("cli-corpus")
    specs, keys = [], []
    for tool, case in RUNS:
        directory = base / f"{tool}-{case.id}"
        write_case(case, directory)
        module, argv = command(tool, case, directory)
        specs.append({"module": module, "argv": argv})
        keys.append((tool, case.id, directory))
    outputs = run_commands(specs)
    return {
        (tool, id): (out["rc"], out["output"], directory)
        for (tool, id, directory), out in zip(keys, outputs, strict=True)
    }


def test_the_corpus_is_big_and_covers_each_class_with_each_tool():
    assert len({case.id for case in CASES}) == len(CASES)
    assert len(RUNS) >= 200
    for tool in TOOLS:
        classes = {case.issue_class for case in CASES if tool in case.tools}
        assert classes == {4, 6, 7}, tool


def _line(output: str, fragments: list[str]) -> str | None:
    return next((ln for ln in output.splitlines() if all(f in ln for f in fragments)), None)


@pytest.mark.parametrize(("tool", "case"), RUNS, ids=[f"{t}-{c.id}" for t, c in RUNS])
def test_case_is_refused_in_one_line(results, tool: str, case: CliCase):
    code, output, directory = results[(tool, case.id)]
    fragments = [fragment.format(dir=directory) for fragment in case.expect]
    assert code != 0, output
    assert _line(output, fragments), f"no line holds {fragments}:\n{output}"
    assert "Traceback" not in output and "internal exception" not in output, output
    assert "pyinfra error in" not in output and "operations/config/load.py" not in output, output
    assert "--limit" in case.args or "--limit" not in output, output  # not blamed on a limit
    assert case.secret is None or case.secret not in output, output
    assert not (directory / "targets.json").exists()  # prometheus: nothing written
    assert "--> Starting operation" not in output  # the deploy planned nothing


def test_bad_input_corpus_is_refused_by_verify_rollout_and_prometheus(tmp_path):
    """One run per tool, one fake host per case: each case's line names host, key, what is
    allowed and the inventory file the value came from."""
    cases = [case for case in BAD_INPUT if not case.env]
    rows = ",\n".join(f"    ('@fake/{case.id}', {case.data!r})" for case in cases)
    inventory = tmp_path / "corpus.py"
    inventory.write_text(f"corpus = [\n{rows},\n]\n")
    gateway_off_beside(inventory)
    source = f"(from {inventory})"
    tools = {
        "verify": (
            "pytest",
            ["tests/verify", "-p", "no:cacheprovider", f"--inventory={inventory}"],
        ),
        "rollout": ("operations.cli.rollout", [str(inventory)]),
        "prometheus": ("operations.cli.targets", [str(inventory), "-o", str(tmp_path / "t.json")]),
    }
    outputs = run_commands([{"module": m, "argv": argv} for m, argv in tools.values()])
    for tool, out in zip(tools, outputs, strict=True):
        text = out["output"]
        assert out["rc"] != 0 and "Traceback" not in text, f"{tool}:\n{text}"
        assert "invalid configuration, nothing was changed" in text, f"{tool}:\n{text}"
        for case in cases:
            line = _line(text, [f"@fake/{case.id}: {case.key} = "])
            assert line and case.allowed in line, f"{tool} {case.id}: {line}"
            top_key = re.split(r"[\[.]", case.key, maxsplit=1)[0]
            expected = source if top_key in case.data else "(from "
            assert expected in line, f"{tool} {case.id}: {line}"
    assert not (tmp_path / "t.json").exists()
