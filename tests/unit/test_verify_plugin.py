"""The verify framework itself, run for real against this machine (testinfra ``local://``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from operations.config.model import FleetConfig
from tests.plan.harness import gateway_off_beside
from tests.verify import facts
from tests.verify.fleet import (
    BATCH_MARK,
    FactSpec,
    FleetHost,
    UndeclaredFact,
    close_connections,
    declared,
    declared_facts,
    prefetch,
    split_batch,
    write_ssh_config,
)

ROOT = Path(__file__).resolve().parents[2]


def run_verify(tmp_path: Path, inventory: str, *args: str) -> tuple[int, str, dict]:
    """Run the verify suite on an inventory; (exit code, output, JSON fleet report)."""
    inventory_file = tmp_path / "fleet.py"
    inventory_file.write_text(inventory)
    gateway_off_beside(inventory_file)
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
    specs = [FactSpec(f"s{i}", lambda config, s=s: s, list) for i, s in enumerate(scripts)]
    runs = _count_runs(host)
    host.prefetch(specs)
    assert len(runs) == 1
    assert host._facts == {specs[0]: ["a", "b"], specs[1]: ["x", ""], specs[3]: []}
    assert host.read(specs[3]) == [] and len(runs) == 1  # not run again
    with pytest.raises(AssertionError, match=r"fact script failed \(rc 3\)"):
        host.read(specs[2])  # not kept: read again, and its failure reported
    assert len(runs) == 2


def _count_runs(host: FleetHost) -> list[str]:
    """The commands ``host`` runs from now on (it is connected first)."""
    runs: list[str] = []
    real_run = host.host.run
    host.host.run = lambda command: runs.append(command) or real_run(command)
    return runs


def _spec(name: str) -> FactSpec:
    return FactSpec(name, lambda config: f"echo {name}", list)


def test_the_prefetch_is_the_union_of_the_declarations_each_fact_once():
    """Modules declare the facts they read; the union keeps each once, in declaration order,
    and a module without FACTS adds none."""
    a, b, c = _spec("a"), _spec("b"), _spec("c")
    modules = [
        types.SimpleNamespace(FACTS=(a, b)),
        types.SimpleNamespace(FACTS=(b, c, a)),
        types.SimpleNamespace(),
    ]
    assert declared_facts(modules) == [a, b, c]
    from tests.verify import test_docker, test_driver, test_preflight, test_toolkit, test_vllm

    assert declared_facts([test_toolkit]) == [facts.STACK, facts.DAEMON_JSON]
    every = [test_preflight, test_driver, test_docker, test_toolkit, test_vllm]
    assert declared_facts(every) == [
        facts.PROFILE, facts.DRIVER, facts.STACK, facts.DAEMON_JSON, facts.VLLM,
        test_vllm.ANSWERS,
    ]  # fmt: skip


def test_toolkit_checks_read_only_what_the_prefetch_of_their_declarations_read():
    """After the prefetch of test_toolkit's FACTS alone, its fact-reading checks run no
    further command on the host (GPU checks: not applicable on this config)."""
    from tests.verify import test_toolkit

    host = FleetHost("@local", FleetConfig(host={"has_gpus": False}), {})
    runs = _count_runs(host)
    prefetch([host], declared_facts([test_toolkit]))
    assert len(runs) == 1
    checks = [getattr(test_toolkit, name) for name in dir(test_toolkit) if name.startswith("test_")]
    with declared(test_toolkit.FACTS):
        for check in checks:
            with contextlib.suppress(AssertionError, pytest.skip.Exception):  # no toolkit here
                check(host)
    assert len(runs) == 1, runs[1:]


def test_a_fact_the_module_does_not_declare_is_an_error_in_a_check():
    """Inside a check only its module's FACTS may be read (the prefetch reads just those);
    outside one (a direct call) a fact is read on demand."""
    host = FleetHost("@local", FleetConfig(), {})
    known, other = _spec("known"), _spec("other")
    with declared([known]):
        assert host.read(known) == ["known"]
        with pytest.raises(UndeclaredFact, match="other is read but not declared"):
            host.read(other)
    assert host.read(other) == ["other"]


def test_a_toolkit_selection_prefetches_what_toolkit_reads_and_nothing_else(tmp_path):
    """`-m toolkit` alone (no docker check selected): the toolkit module's declarations are
    prefetched, and no check fails for reading a fact it did not declare."""
    _, output, report = run_verify(
        tmp_path,
        'hosts = [("@local", {"host_has_gpus": False, "preflight_min_free_disk_gib": 0})]',
        "-m", "toolkit",
    )  # fmt: skip
    assert "prefetched ContainerStack, DaemonJson from 1 host(s) in " in output, output
    assert list(report["hosts"]["@local"]) == ["toolkit"]
    assert "UndeclaredFact" not in output


def test_split_batch_keeps_lookalike_lines_and_drops_failed_and_unknown_scripts():
    out = (
        f"a\n{BATCH_MARK} 0 0\n{BATCH_MARK} 0\n{BATCH_MARK}x 0 1\nb\n\n{BATCH_MARK} 0 1\n"
        f"c\n{BATCH_MARK} 2 2\n{BATCH_MARK} 0 7\n"
    )
    assert split_batch(out, 3) == {0: ["a"], 1: [f"{BATCH_MARK} 0", f"{BATCH_MARK}x 0 1", "b"]}


# --- a sick host (issue 14, item 7) -----------------------------------------------------------

EVERY_LAYER = ("-m", "preflight or driver or docker or toolkit or vllm")
# every setting that makes some check not applicable, whatever the host says
NOT_APPLICABLE_BY_CONFIG = (
    '{"host_has_gpus": False, "driver_hold_packages": False, "driver_blacklist_nouveau": False,'
    ' "toolkit_cdi": False, "driver_fabric_manager": "disabled", "preflight_min_free_disk_gib": 0}'
)


def test_unreachable_host_fails_its_checks_at_once_keeps_na_and_says_why_once(tmp_path):
    """The same config on a reachable host (@local) and an unreachable one: every check that
    is N/A by that config is N/A on both; the unreachable host's other checks all fail with
    one readable reason, found once (no per-check retry), shown once under the table."""
    inventory = (
        f"hosts = [('@local', {NOT_APPLICABLE_BY_CONFIG}),\n"
        f"         ('nohost.invalid', {NOT_APPLICABLE_BY_CONFIG})]"
    )
    code, output, report = run_verify(tmp_path, inventory, *EVERY_LAYER, "-rA")
    assert code == 1, output
    local, down = report["hosts"]["@local"], report["hosts"]["nohost.invalid"]
    na = {layer: cell["not_applicable"] for layer, cell in local.items()}
    assert sum(na.values()) >= 8, na  # the GPU checks, held packages, nouveau, CDI, ...
    assert {layer: cell["not_applicable"] for layer, cell in down.items()} == na
    for layer, cell in down.items():
        assert cell["passed"] == 0 and cell["status"] in ("FAIL", "N/A"), (layer, cell)
        total = sum(local[layer][k] for k in ("passed", "failed", "not_applicable", "skipped"))
        assert cell["failed"] + cell["not_applicable"] == total, (layer, cell, local[layer])
    messages = {f["message"] for cell in down.values() for f in cell["failures"]}
    (why,) = messages  # one reason for every check
    assert why.startswith("host unreachable: nohost.invalid cannot be reached over SSH (ssh:")
    assert "CommandResult(" not in output and "object at 0x" not in why
    reason = why.removeprefix("host unreachable: ")
    assert report["unreachable"] == {"nohost.invalid": reason}
    failed = sum(cell["failed"] for cell in down.values())
    assert (
        f"host unreachable: {reason}: its {failed} check(s) failed unrun "
        f"({sum(na.values())} not applicable by its config)"
    ) in output


def test_a_command_result_in_a_message_is_one_readable_line():
    """pytest shows the objects an assertion used, testinfra raises RuntimeError(result) on
    ssh's 255: both print the result as the command and how it ended."""
    host = FleetHost("@local", FleetConfig(), {})
    result = host.host.run("echo out; echo first >&2; echo 'the reason' >&2; exit 3")
    assert (
        repr(result)
        == str(RuntimeError(result))
        == ("`echo out; echo first >&2; echo 'the reason' >&2; exit 3` exited 3: the reason")
    )
    long = host.host.run("true " + "x" * 100)
    assert repr(long).startswith("`true xxx") and "...` exited 0" in repr(long)
    assert len(repr(long)) < 80


def test_a_probe_tool_missing_on_the_host_is_reported_as_missing(monkeypatch):
    """No curl on the host: the API checks say so, not `/health 0` (no answer)."""
    from tests.verify import test_vllm

    host = FleetHost("@local", FleetConfig(), {})
    _ = host.host  # connected with the real PATH
    monkeypatch.setenv("PATH", "/nonexistent")  # the host's shell finds no curl
    with pytest.raises(AssertionError, match="curl is not installed on the host") as failed:
        test_vllm.test_health_answers_200(host)
    assert "/health" not in str(failed.value)
    monkeypatch.undo()
    found = test_vllm._parse_answers(["@@gpufleet-probe main health", "ok", "200"])
    assert found == {("main", "health"): (200, "ok")}  # with curl: no missing tool


def _ssh_running(work: Path, proc: subprocess.Popen) -> list[Path]:
    """Wait until the verify run ``proc`` has its ssh-config directory under ``work`` and an
    ssh process using it; the directories."""
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "verify never ran ssh"
        dirs = list(work.glob("gpufleet-ssh-*"))
        if dirs and _pids_using(dirs[0]):
            return dirs
        time.sleep(0.1)


def _pids_using(path: Path) -> str:
    return subprocess.run(["pgrep", "-f", str(path)], capture_output=True, text=True).stdout


def test_sigterm_ends_verify_and_removes_its_ssh_directory(tmp_path):
    """A verify killed with SIGTERM (atexit does not run then) exits 143 at once and leaves
    no ssh-config directory and no ssh process behind. Its host accepts TCP and never
    speaks (a paused host), so the run is inside its first connection when signalled."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        f'hosts = [("sick", {{"ssh_hostname": "127.0.0.1", "ssh_port": {port}, '
        '"host_has_gpus": False})]'
    )
    gateway_off_beside(inventory)
    work = Path(tempfile.mkdtemp(prefix="gf-", dir="/tmp"))  # its own, short: socket paths
    command = [
        sys.executable, "-m", "pytest", "tests/verify", "-p", "no:cacheprovider",
        f"--inventory={inventory}", f"--fleet-report={tmp_path / 'report.json'}",
        f"--junitxml={tmp_path / 'junit.xml'}", "-m", "preflight",
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=ROOT, env=os.environ | {"TMPDIR": str(work)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        dirs = _ssh_running(work, proc)  # verify's ssh is connecting: mid-run
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        output, _ = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        proc.kill()
        listener.close()
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert took < 5, (took, output)
    assert "verify stopped by SIGTERM" in output
    assert not list(work.glob("gpufleet-ssh-*")), output
    assert _pids_using(dirs[0]) == ""  # no ssh of that run left


def test_ssh_sockets_go_to_tmp_when_the_temporary_directory_is_too_long(monkeypatch, tmp_path):
    """ssh refuses a ControlPath past a unix socket's limit: every host would be
    'unreachable'. A long TMPDIR (pytest's own tmp_path, say) is not used for them."""
    long = tmp_path / ("x" * 60)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    config = write_ssh_config({"gpu-1": {}}, {"gpu-1": FleetConfig()})
    try:
        assert config.parent.parent == Path("/tmp") and config.exists()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        if len(str(tmp_path)) < 40:
            assert write_ssh_config({}, {}).parent.parent == tmp_path
    finally:
        close_connections()
    assert not config.parent.exists()  # the run's directory goes with its connections


def _streamed(answer: str) -> None:
    """Run the streaming check against one canned (200, body) answer of instance main."""
    from tests.verify import test_vllm

    host = FleetHost("@local", FleetConfig(), {})
    host.read = lambda spec: {("main", "stream"): (200, answer)}  # type: ignore[method-assign]
    test_vllm.test_streamed_completion_arrives_as_events(host)


def test_the_streaming_check_passes_a_stream_and_fails_what_is_not_one():
    chunk = json.dumps({"object": "text_completion", "choices": [{"text": " a"}]})
    _streamed(f"data: {chunk}\n\ndata: {chunk}\n\ndata: [DONE]\n\n")
    with pytest.raises(AssertionError, match=r"did not end with data: \[DONE\]"):
        _streamed(f"data: {chunk}\n\n")  # cut short (a proxy timeout, an engine crash)
    with pytest.raises(AssertionError, match="did not end"):  # stream ignored: one JSON body
        _streamed(json.dumps({"object": "text_completion", "choices": []}))
    with pytest.raises(AssertionError, match="not completion chunks"):
        _streamed("data: [DONE]\n\n")
