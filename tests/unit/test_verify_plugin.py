"""The verify framework itself, run for real against this machine (testinfra ``local://``)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from operations.config import FleetConfig
from tests.verify.fleet import BATCH_MARK, FleetHost, split_batch

ROOT = Path(__file__).resolve().parents[2]


def run_verify(tmp_path: Path, inventory: str, *args: str) -> tuple[int, str, dict]:
    """Run the verify suite on an inventory; (exit code, output, JSON fleet report)."""
    inventory_file = tmp_path / "fleet.py"
    inventory_file.write_text(inventory)
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pytest", "tests/verify", "-p", "no:cacheprovider",
        f"--inventory={inventory_file}", f"--fleet-report={report}",
        f"--junitxml={tmp_path / 'junit.xml'}", "-m", "preflight", *args,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    data = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, done.stdout + done.stderr, data


def test_passing_host_gives_a_pass_cell_json_and_junit(tmp_path):
    code, output, report = run_verify(
        tmp_path, 'hosts = [("@local", {"host_has_gpus": False, "preflight_min_free_disk_gib": 0})]'
    )
    cell = report["hosts"]["@local"]["preflight"]
    if cell["failed"]:  # only where this machine is no supported OS (then say which check)
        assert cell["failures"][0]["check"] == "test_supported_os", output
    else:
        assert code == 0, output
        assert cell["status"] == "PASS" and cell["passed"] == 5
    assert "fleet report" in output and "@local" in output
    suites = ET.parse(tmp_path / "junit.xml").getroot()
    assert int(suites.find("testsuite").get("tests")) == 5


def test_failing_check_fails_the_run_and_names_the_check(tmp_path):
    code, output, report = run_verify(
        tmp_path,
        'hosts = [("@local", {"host_has_gpus": False, "preflight_min_free_disk_gib": 1e6})]',
    )
    assert code == 1, output
    cell = report["hosts"]["@local"]["preflight"]
    assert cell["status"] == "FAIL"
    checks = [failure["check"] for failure in cell["failures"]]
    assert "test_free_disk" in checks
    assert "preflight_min_free_disk_gib is 1000000.0" in json.dumps(cell["failures"])


def test_unreachable_host_fails_its_row_and_not_the_others(tmp_path):
    inventory = (
        'hosts = [("@local", {"host_has_gpus": False, "preflight_min_free_disk_gib": 0}),\n'
        '         ("nohost.invalid", {"host_has_gpus": False})]'
    )
    code, output, report = run_verify(tmp_path, inventory)
    assert code == 1
    down = report["hosts"]["nohost.invalid"]["preflight"]
    assert down["failed"] == 5 and down["passed"] == 0
    assert "host unreachable" in output
    assert report["hosts"]["@local"]["preflight"]["passed"] >= 4


def test_limit_selects_hosts_like_pyinfra(tmp_path):
    inventory = (
        'gpu = [("@local", {"host_has_gpus": False, "preflight_min_free_disk_gib": 0})]\n'
        'other = [("nohost.invalid", {"host_has_gpus": False})]'
    )
    _, _, report = run_verify(tmp_path, inventory, "--limit", "gpu")
    assert list(report["hosts"]) == ["@local"]


def test_exclude_selects_like_pyinfra(tmp_path):
    inventory = (
        'gpu = [("@local", {"host_has_gpus": False, "preflight_min_free_disk_gib": 0})]\n'
        'other = [("nohost.invalid", {"host_has_gpus": False})]'
    )
    _, _, report = run_verify(tmp_path, inventory, "--exclude", "other")
    assert list(report["hosts"]) == ["@local"]


def test_excluding_every_host_says_so_and_blames_no_limit(tmp_path):
    code, output, report = run_verify(tmp_path, 'hosts = ["nohost.invalid"]', "--exclude=hosts")
    assert code == 4 and report == {}
    assert f"no host to run on: --exclude hosts excludes all 1 host(s) of {tmp_path}" in output
    assert "--limit" not in output


def test_bad_config_is_a_usage_error_naming_host_and_key(tmp_path):
    code, output, report = run_verify(tmp_path, 'hosts = [("@local", {"vllm_port": -1})]')
    assert code == 4  # pytest's usage error: nothing was checked
    assert "@local: vllm_port = -1: Input should be greater than or equal to 1" in output
    assert f"(from {tmp_path / 'fleet.py'})" in output  # the file the value came from
    assert "Traceback" not in output and report == {}


def test_prefetch_runs_every_script_in_one_round_trip_each_parsed_as_alone():
    """A real shell (@local): outputs with and without a final newline, blank lines, an
    `exit` inside a script; a failing script is not kept (its check runs it again)."""
    host = FleetHost("@local", FleetConfig(), {})
    scripts = ["printf 'a\\nb'", "echo x; echo; exit 0", "echo bad; exit 3", "true"]
    runs = []
    real_run = host.host.run
    host.host.run = lambda command: runs.append(command) or real_run(command)
    host.prefetch([lambda h, s=s: h.fact(s, list) for s in scripts])
    assert len(runs) == 1
    assert host._facts == {scripts[0]: ["a", "b"], scripts[1]: ["x", ""], scripts[3]: []}
    assert host.fact(scripts[3], lambda lines: "not run again") == []


def test_split_batch_keeps_lookalike_lines_and_drops_failed_and_unknown_scripts():
    out = (
        f"a\n{BATCH_MARK} 0 0\n{BATCH_MARK} 0\n{BATCH_MARK}x 0 1\nb\n\n{BATCH_MARK} 0 1\n"
        f"c\n{BATCH_MARK} 2 2\n{BATCH_MARK} 0 7\n"
    )
    assert split_batch(out, 3) == {0: ["a"], 1: [f"{BATCH_MARK} 0", f"{BATCH_MARK}x 0 1", "b"]}
