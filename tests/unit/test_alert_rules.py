"""The alert rules (operations/monitoring/alerts.py) against the REAL promtool (Debian's 2.42,
unpacked by ./dev into .tools/bin; without it these skip, and fail when GPUFLEET_REQUIRE_LAB=1).

- ``promtool check rules`` accepts the file the deploy writes, with and without a short for:;
- ``promtool test rules`` passes tests/promtool/*.yml: series that make every rule fire (labels
  and annotations as an on-call engineer gets them, after its for:) and stay quiet (healthy
  series, just short of the for:);
- every alert has a firing case and a quiet one there, and each is real: with a rule that
  never fires, or with no for:, promtool fails that rule's cases;
- every rule has a for:, a severity and a runbook; alert_for replaces every for:;
- a broken rule fails ``promtool check rules``, so the deploy's check can fail;
- the STAND-IN dcgm-exporter's output for a healthy GPU host fires no GPU alert, and each GPU
  fault it shows fires its own alert, on the sick GPU, and no other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from operations.config.model import FATAL_XIDS
from operations.monitoring import alerts
from operations.monitoring.alerts import ALERTS, Alert, render_rules, rules_text

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "promtool"
REQUIRED = os.environ.get("GPUFLEET_REQUIRE_LAB") == "1"
# The rules files the test files name (rule_files), and the alert_for each is written with.
RULE_FILES = {"gpufleet.yml": None, "gpufleet-short-for.yml": "15s"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
NEVER = "vector(0) > 1"


def _promtool() -> str:
    """The real promtool: ROOT/.tools/bin first, then PATH; fail without it in CI."""
    found = ROOT / ".tools" / "bin" / "promtool"
    if found.is_file():
        return str(found)
    on_path = shutil.which("promtool")
    if on_path:
        return on_path
    if REQUIRED:
        pytest.fail("promtool is missing (./dev unpacks Debian's into .tools/bin)")
    pytest.skip("promtool is missing (./dev unpacks it into .tools/bin; CI requires it)")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def case_files() -> list[Path]:
    return sorted(CASES.glob("*_test.yml"))


def staged(tmp_path: Path, rules=None) -> Path:
    """tmp_path with the test files and, beside them, the rules files they name (promtool
    resolves rule_files relative to the test file): ``rules(alert_for)`` writes each."""
    write = rules or (lambda alert_for: rules_text(alert_for))
    for name, alert_for in RULE_FILES.items():
        (tmp_path / name).write_text(write(alert_for))
    for path in case_files():
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def run_cases(tmp_path: Path) -> subprocess.CompletedProcess:
    return promtool("test", "rules", *(p.name for p in case_files()), cwd=tmp_path)


def checks(text: str) -> list[tuple[str, bool]]:
    """(alertname, fires) for each alert_rule_test check of a test file: fires when its
    exp_alerts lists an alert, not when it is ``[]``."""
    found = re.findall(r"^\s*alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\s*\])?", text, re.M)
    return [(name, not empty) for name, empty in found]


def failing_alerts(output: str) -> set[str]:
    """The alert names promtool's failure report names."""
    return set(re.findall(r"alertname: (\w+),", output))


# --- the table ----------------------------------------------------------------------------


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a.name)
def test_every_alert_has_for_severity_and_runbook(alert: Alert):
    assert re.fullmatch(r"[A-Z][A-Za-z]+", alert.name)
    assert DURATION.match(alert.for_), alert.for_
    assert alert.severity in alerts.SEVERITIES
    assert "{{ $labels.gpufleet_host }}" in alert.summary
    assert len(alert.runbook) > 80 and "`" in alert.runbook, "a runbook names what to run"
    assert "<no value>" not in alert.summary + alert.runbook


def test_gpu_alerts_name_the_gpu():
    gpu = [a for a in ALERTS if "DCGM_FI_" in a.expr]
    assert len(gpu) == 6
    for alert in gpu:
        assert "{{ $labels.gpu }}" in alert.summary and "{{ $labels.UUID }}" in alert.summary


def test_alert_names_are_unique_and_cover_the_issue():
    names = [a.name for a in ALERTS]
    assert len(set(names)) == len(names) == 11


def test_metric_names_are_what_the_rules_select():
    assert alerts.metric_names() == {
        "up", "vllm:num_requests_waiting", "vllm:generation_tokens_total",
        "vllm:kv_cache_usage_perc", "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_ROW_REMAP_PENDING",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_SLOWDOWN_TEMP", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_filesystem_readonly",
    }  # fmt: skip


def test_metric_name_reader_skips_functions_labels_keywords_and_numbers():
    expr = (
        'sum by (le, job) (rate(a_bucket{job="x", le!~"b|c"}[5m])) > on (d) group_left (e) '
        "f:g offset 1h and bool max_over_time((h == 1e6)[1h:1m]) unless absent(i) or 0.5 "
        "or nan < inf"
    )
    assert alerts.expr_metric_names(expr) == {"a_bucket", "f:g", "h", "i"}


def test_alert_for_replaces_every_for():
    own = re.findall(r"^\s+for: (\S+)$", rules_text(), re.M)
    assert own == [a.for_ for a in ALERTS]
    short = re.findall(r"^\s+for: (\S+)$", rules_text("15s"), re.M)
    assert short == ["15s"] * len(ALERTS)


def test_fatal_xids_follow_the_setting():
    expr = alerts.FATAL_XID.expr
    assert all(f"DCGM_FI_DEV_XID_ERRORS == {code}\n" in expr for code in FATAL_XIDS)
    site = rules_text(fatal_xids=[79, 13])
    assert "== 13\n" in site and "== 79\n" in site and "== 48\n" not in site
    assert rules_text() != site and rules_text(fatal_xids=FATAL_XIDS) == rules_text()


# --- the real promtool --------------------------------------------------------------------


@pytest.mark.parametrize("alert_for", [None, "15s"])
def test_promtool_checks_the_rules_file(tmp_path, alert_for):
    (tmp_path / "rules.yml").write_text(rules_text(alert_for))
    done = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def test_promtool_unit_tests_pass(tmp_path):
    done = run_cases(staged(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(case_files()) >= 4


def test_test_files_name_only_generated_rules():
    for path in case_files():
        named = re.findall(r"^rule_files:\s*\[([^\]]*)\]", path.read_text(), re.M)
        assert named, f"{path.name}: no rule_files"
        assert {n.strip() for n in named[0].split(",")} <= set(RULE_FILES), path.name


def test_every_alert_has_a_firing_and_a_quiet_case():
    found = [check for path in case_files() for check in checks(path.read_text())]
    names = {a.name for a in ALERTS}
    assert {name for name, fires in found if fires} == names, "alerts without a firing case"
    assert {name for name, fires in found if not fires} == names, "alerts without a quiet case"


def test_firing_cases_fail_when_no_rule_fires(tmp_path):
    """With every rule's expression never true, promtool fails the firing cases of each."""

    def never(alert_for):
        return render_rules([replace(a, expr=NEVER) for a in ALERTS], alert_for)

    done = run_cases(staged(tmp_path, never))
    assert done.returncode != 0
    assert failing_alerts(done.stdout + done.stderr) == {a.name for a in ALERTS}


def test_short_of_for_cases_fail_without_a_for(tmp_path):
    """With for: 0s, each rule fires at once, and its just-short-of-for case fails."""
    done = run_cases(staged(tmp_path, lambda _alert_for: rules_text("0s")))
    assert done.returncode != 0
    assert failing_alerts(done.stdout + done.stderr) == {a.name for a in ALERTS}


@pytest.mark.parametrize(
    "broken",
    [
        replace(ALERTS[0], expr='up{job="node" == 0'),  # an unclosed matcher
        replace(ALERTS[0], expr="rate(up) > 0"),  # a range function without a range
        replace(ALERTS[0], for_="2 minutes"),
        replace(ALERTS[0], summary="{{ $labels.gpufleet_host "),  # a template that won't parse
    ],
    ids=["expr", "range", "for", "template"],
)
def test_a_broken_rule_fails_promtool_check(tmp_path, broken):
    (tmp_path / "rules.yml").write_text(render_rules([*ALERTS[1:], broken]))
    done = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    assert "FAILED" in done.stdout + done.stderr


# --- the STAND-IN dcgm-exporter's faults, through the rules -------------------------------

# The GPU faults of tests/standins/gpu that dcgm-exporter shows, and the alert each fires; the
# others (PCIe width, NVLink, fabric, persistence, driver...) are verify checks, not metrics
# an alert is written on.
FAULT_ALERTS = {
    "ecc_uncorrected": "GpuUncorrectableEccErrors",
    "row_remap_pending": "GpuRowRemapPending",
    "row_remap_failure": "GpuRowRemapFailure",
    "thermal_throttle": "GpuClocksSlowdown",
    "xid_79": "GpuFatalXid",
}
GPU_ALERTS = [a.name for a in ALERTS if "DCGM_FI_" in a.expr]
SAMPLE_LINE = re.compile(r"^([A-Za-z_:][\w:]*)(\{.*\})?\s+(\S+)$")
TARGET = 'job="dcgm",instance="gpu-1:9400",gpufleet_host="gpu-1"'


def standin_series(description: dict) -> list[dict]:
    """The STAND-IN dcgm-exporter's samples for ``description`` as promtool input series,
    labelled as the dcgm job's scrape labels them, constant for 40 minutes."""
    from tests.standins.dcgm.server import render_metrics

    csv = (ROOT / "operations" / "monitoring" / "dcgm-counters.csv").read_text()
    series = []
    for line in render_metrics(description, csv, hostname="gpu-1").splitlines():
        match = SAMPLE_LINE.match(line)
        if line.startswith("#") or not match:
            continue
        name, labels, value = match.groups()
        inner = labels[1:-1] if labels else ""
        series.append(
            {"series": f"{name}{{{TARGET},{inner}}}".replace(",}", "}"), "values": f"{value}x40"}
        )
    return series


def quiet_gpu_case(description: dict) -> str:
    """A promtool test file (JSON is YAML) expecting no GPU alert after 30 minutes."""
    quiet = [{"eval_time": "30m", "alertname": name, "exp_alerts": []} for name in GPU_ALERTS]
    test = {
        "interval": "1m",
        "input_series": standin_series(description),
        "alert_rule_test": quiet,
    }
    return json.dumps(
        {"rule_files": ["gpufleet.yml"], "evaluation_interval": "1m", "tests": [test]}
    )


def run_standin(tmp_path: Path, description: dict) -> subprocess.CompletedProcess:
    (tmp_path / "gpufleet.yml").write_text(rules_text())
    (tmp_path / "standin_test.yml").write_text(quiet_gpu_case(description))
    return promtool("test", "rules", "standin_test.yml", cwd=tmp_path)


@pytest.mark.parametrize("variant", ["h100", "hgx8"])
def test_a_healthy_standin_gpu_host_fires_no_gpu_alert(tmp_path, variant):
    from tests.standins import gpu

    done = run_standin(tmp_path, gpu.load(variant))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("variant", ["h100", "hgx8"])
@pytest.mark.parametrize("fault", sorted(FAULT_ALERTS))
def test_a_standin_gpu_fault_fires_its_alert_on_its_gpu(tmp_path, variant, fault):
    from tests.standins import gpu

    sick = gpu.with_fault(gpu.load(variant), fault)  # on the host's last GPU
    done = run_standin(tmp_path, sick)
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"{fault} fired no alert"
    assert failing_alerts(output) == {FAULT_ALERTS[fault]}, output
    got = output.split("got:", 1)[1]
    last = sick["gpus"][-1]
    assert f'UUID="{last["uuid"]}"' in got and 'gpufleet_host="gpu-1"' in got, got
    assert f'gpu="{len(sick["gpus"]) - 1}"' in got, got
