"""Every metric a dashboard panel or an alert rule queries exists where Prometheus would find
it, so that a renamed metric breaks the build, not a dashboard at 3 am.

Where each name must be found (the sample names of a /metrics page, as Prometheus stores
them: a histogram is X_bucket, X_sum and X_count, a counter X_total):

- the STAND-IN vLLM's /metrics (tests/standins/vllm/server.py), served over HTTP after it has
  answered a completion, so its histograms have samples;
- the STAND-IN dcgm-exporter's ``render_metrics(description, counters_csv)``
  (tests/standins/dcgm/server.py) for each shipped GPU description, with the counters CSV
  the deploy mounts (operations/monitoring/dcgm-counters.csv);
- the REAL node_exporter (Debian's, unpacked by ./dev into .tools/bin), started on a free
  port of 127.0.0.1 and scraped once;
- the series Prometheus makes itself: up, scrape_*, ALERTS and ALERTS_FOR_STATE.

A metric selected under ``job="node"``/``"vllm"``/``"dcgm"`` must come from that job's
exporter, not merely from any of them.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.test_dashboards import (
    MONITORING,
    REQUIRED,
    ROOT,
    Query,
    all_queries,
    load_dashboards,
    promql_metric_names,
    queries,
)

GPU_DESCRIPTIONS = sorted((ROOT / "tests" / "standins" / "gpu").glob("*.json"))
COUNTERS_CSV = MONITORING / "dcgm-counters.csv"
PROMETHEUS_MADE = frozenset({  # what Prometheus adds to every target it scrapes
    "up", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added",
})  # fmt: skip
PROMETHEUS_ANY_LABELS = frozenset({"ALERTS", "ALERTS_FOR_STATE"})  # rule evaluation: any labels
TARGET_LABELS = {  # what Prometheus adds to each job's series (operations/monitoring/targets.py)
    "node": {"job", "instance", "gpufleet_host"},
    "dcgm": {"job", "instance", "gpufleet_host"},
    "vllm": {"job", "instance", "gpufleet_host", "gpufleet_instance", "model"},
}
JOB_MATCHER = re.compile(r"""\bjob\s*=\s*["'](\w+)["']""")
MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
LABEL = re.compile(r'([A-Za-z_]\w*)="(?:[^"\\]|\\.)*"')
Exposed = dict[str, dict[str, set[str]]]  # {job: {metric: label names}}


def exposition(text: str) -> dict[str, set[str]]:
    """{metric: label names} of the samples in a Prometheus text exposition (HELP/TYPE
    lines skipped; `le` and `quantile` are labels like any other)."""
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = set(LABEL.findall(match.group(2) or ""))
            found.setdefault(match.group(1), set()).update(labels)
    return found


# --- the exporters ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str, body: bytes | None = None) -> str:
    headers = {"Content-Type": "application/json"} if body else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read().decode()


def vllm_metrics(tmp: Path) -> dict[str, set[str]]:
    """The STAND-IN vLLM's /metrics, after one completion."""
    from tests.standins.vllm import server as vllm

    settings = vllm.parse_settings(["org/model", "--host", "127.0.0.1", "--port", "0"], {})
    # its own (absent) stuck-engine file: one left in /tmp by a lab test must not hold it
    app = vllm.make_app(settings, {"HF_HOME": str(tmp), "STANDIN_STUCK_FILE": str(tmp / "stuck")})
    httpd = vllm.StandinServer(("127.0.0.1", 0), app)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        body = json.dumps({"model": "org/model", "prompt": "hello there", "max_tokens": 3})
        completion = json.loads(_get(f"{base}/v1/completions", body.encode()))
        assert completion["usage"]["completion_tokens"] == 3, completion
        return exposition(_get(f"{base}/metrics"))
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def dcgm_metrics() -> dict[str, set[str]]:
    """The STAND-IN dcgm-exporter's metrics over every shipped GPU description, with the
    counters CSV the deploy mounts."""
    try:
        dcgm = importlib.import_module("tests.standins.dcgm.server")
    except ImportError as exc:
        pytest.fail(f"the STAND-IN dcgm-exporter is missing (tests.standins.dcgm.server): {exc}")
    counters = COUNTERS_CSV.read_text()
    assert GPU_DESCRIPTIONS, "no GPU descriptions in tests/standins/gpu"
    found: dict[str, set[str]] = {}
    for path in GPU_DESCRIPTIONS:
        text = dcgm.render_metrics(json.loads(path.read_text()), counters)
        for name, labels in exposition(text).items():
            found.setdefault(name, set()).update(labels)
    return found


def _node_exporter() -> str:
    """The real node_exporter: fail without it in CI (GPUFLEET_REQUIRE_LAB=1), else skip."""
    found = ROOT / ".tools" / "bin" / "prometheus-node-exporter"
    if found.is_file():
        return str(found)
    for name in ("prometheus-node-exporter", "node_exporter"):
        if shutil.which(name):
            return shutil.which(name)
    if REQUIRED:
        pytest.fail("node_exporter is missing (./dev unpacks Debian's into .tools/bin)")
    pytest.skip("node_exporter is missing (./dev unpacks it into .tools/bin; CI requires it)")


def node_metrics() -> dict[str, set[str]]:
    """The real node_exporter's metrics: started on a free port, scraped, stopped."""
    binary, port = _node_exporter(), _free_port()
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                return exposition(_get(f"http://127.0.0.1:{port}/metrics"))
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    pytest.fail(f"node_exporter did not answer: {process.communicate()[1]}")
                time.sleep(0.1)
    finally:
        process.terminate()
        process.communicate(timeout=10)


@pytest.fixture(scope="module")
def exposed(tmp_path_factory) -> Exposed:
    """{job: {metric: label names}} from each exporter."""
    return {
        "vllm": vllm_metrics(tmp_path_factory.mktemp("hf")),
        "dcgm": dcgm_metrics(),
        "node": node_metrics(),
    }


# --- the check ----------------------------------------------------------------------------


def _selectors(expr: str) -> Iterator[tuple[str, str | None, set[str]]]:
    """(metric, job, matched label names) for each metric of an expression; job when its
    selectors pin one."""
    for name in sorted(promql_metric_names(expr)):
        selector = re.compile(r"(?<![\w:])" + re.escape(name) + r"\s*\{([^}]*)\}")
        matchers = [match.group(1) for match in selector.finditer(expr)]
        jobs = {job for text in matchers for job in JOB_MATCHER.findall(text)}
        bare = [STRING.sub('""', text) for text in matchers]  # a value may hold `a=b`
        labels = {label for text in bare for label in MATCHER_LABEL.findall(text)}
        yield name, (jobs.pop() if len(jobs) == 1 else None), labels


def _labels_of(name: str, job: str | None, exposed: Exposed) -> set[str] | None:
    """The label names `name` can carry in Prometheus (None: any; empty set: no such
    metric), scraped under `job` or, with no job, any."""
    if name in PROMETHEUS_ANY_LABELS:
        return None
    jobs = [job] if job in exposed else list(exposed)
    if name in PROMETHEUS_MADE:
        return set().union(*(TARGET_LABELS[j] for j in jobs))
    found = [exposed[j][name] | TARGET_LABELS[j] for j in jobs if name in exposed[j]]
    return set().union(*found) if found else set()


def missing(found: list[Query], exposed: Exposed) -> list[str]:
    """One line per metric a query selects that its exporter (or any, with no job) lacks,
    and per label a selector matches that the metric does not carry there."""
    problems = []
    for query in found:
        for name, job, matched in _selectors(query.promql()):
            source = f"the {job} job's /metrics" if job in exposed else "any stand-in /metrics"
            labels = _labels_of(name, job, exposed)
            if labels == set():
                problems.append(f"{query.where()}: metric {name} is not in {source}")
            elif labels is not None:
                problems += [
                    f"{query.where()}: metric {name} has no label {label} in {source}"
                    for label in sorted(matched - labels)
                ]
    return list(dict.fromkeys(problems))  # one line per panel and name


def test_every_dashboard_metric_is_exposed(exposed):
    found = all_queries()
    assert len(found) > 40
    problems = missing(found, exposed)
    assert not problems, "dashboards query metrics nothing serves:\n" + "\n".join(problems)


def _alerts():
    """operations.monitoring.alerts (helper A's module); a clear failure while it is absent."""
    try:
        return importlib.import_module("operations.monitoring.alerts")
    except ImportError as exc:
        pytest.fail(f"operations.monitoring.alerts is missing or broken: {exc}")


def test_every_alert_metric_is_exposed(exposed):
    names = _alerts().metric_names()
    assert names, "metric_names() is empty"
    everywhere = PROMETHEUS_MADE | PROMETHEUS_ANY_LABELS | {n for m in exposed.values() for n in m}
    lacking = sorted(names - everywhere)
    assert not lacking, f"alert rules query metrics no stand-in /metrics serves: {lacking}"


def test_every_alert_selector_matches_its_exporter(exposed):
    """As for the dashboards: a rule's metric comes from the job its selector pins, with the
    labels its matchers name."""
    alerts = _alerts()
    found = [Query("alerts.py", "alert rules", a.name, a.expr) for a in alerts.ALERTS]
    problems = missing(found, exposed)
    assert not problems, "\n".join(problems)


def test_alert_metric_names_cover_every_rule():
    """metric_names() (helper A's reader) lists every name this module's reader sees in the
    rules, so the name check above misses none."""
    alerts = _alerts()
    seen = set().union(*(promql_metric_names(a.expr) for a in alerts.ALERTS))
    assert seen <= alerts.metric_names(), sorted(seen - alerts.metric_names())


def test_the_sources_are_real(exposed):
    """A few names each must serve, whatever the dashboards say, with their own labels."""
    assert {"vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_bucket"} <= set(
        exposed["vllm"]
    )
    assert "model_name" in exposed["vllm"]["vllm:num_requests_waiting"]
    assert {"gpu", "UUID", "modelName"} <= exposed["dcgm"]["DCGM_FI_DEV_GPU_TEMP"]
    assert {"fstype", "mountpoint"} <= exposed["node"]["node_filesystem_avail_bytes"]
    assert not set(exposed["node"]) & set(exposed["dcgm"]), "node_exporter and DCGM share none"


# --- the check can fail -------------------------------------------------------------------


def test_a_made_up_metric_in_a_panel_is_named_with_its_dashboard_and_panel(exposed):
    name, board = "vllm-serving.json", load_dashboards()["vllm-serving.json"]
    panel = next(p for p in board["panels"] if p.get("targets"))
    panel["targets"][0]["expr"] = 'sum(rate(vllm:made_up_tokens_total{gpufleet_host=~"$host"}[5m]))'
    problems = missing([q for q in queries(name, board) if q.panel == panel["title"]], exposed)
    assert problems == [
        f"dashboard 'gpufleet / vLLM serving' (vllm-serving.json), panel {panel['title']!r}: "
        "metric vllm:made_up_tokens_total is not in any stand-in /metrics"
    ]


def test_a_metric_under_the_wrong_job_is_reported(exposed):
    query = Query("x.json", "X", "Temperature", 'DCGM_FI_DEV_GPU_TEMP{job="node"}')
    assert missing([query], exposed) == [
        "dashboard 'X' (x.json), panel 'Temperature': metric DCGM_FI_DEV_GPU_TEMP is not in "
        "the node job's /metrics"
    ]


def test_a_label_the_metric_lacks_is_reported(exposed):
    """vLLM labels its series model_name (the target adds model); `modelName` is DCGM's."""
    query = Query("x.json", "X", "Waiting", 'vllm:num_requests_waiting{modelName=~"$model"}')
    assert missing([query], exposed) == [
        "dashboard 'X' (x.json), panel 'Waiting': metric vllm:num_requests_waiting has no label "
        "modelName in any stand-in /metrics"
    ]
    fine = 'vllm:num_requests_waiting{model_name=~"$model", gpufleet_instance="a", job="vllm"}'
    assert not missing([replace(query, expr=fine)], exposed)


def test_a_renamed_exporter_metric_is_reported(exposed):
    """A stand-in (or exporter) that renames a metric the dashboards use breaks the check."""
    gone = "vllm:inter_token_latency_seconds_bucket"
    renamed = dict(exposed, vllm={k: v for k, v in exposed["vllm"].items() if k != gone})
    before = set(missing(all_queries(), exposed))
    problems = [p for p in missing(all_queries(), renamed) if p not in before]
    assert problems, f"no panel noticed {gone} missing"
    assert all(gone in p for p in problems)
    assert any("panel 'Inter-token latency'" in p for p in problems)


def test_a_histogram_needs_its_suffix():
    """Prometheus stores X_bucket/_sum/_count, never X: a bare histogram name is reported."""
    query = Query("x.json", "X", "TTFT", "vllm:time_to_first_token_seconds")
    exposed = {
        "vllm": exposition(
            'vllm:time_to_first_token_seconds_bucket{le="+Inf"} 1\n'
            "vllm:time_to_first_token_seconds_sum 0.2\n"
            "vllm:time_to_first_token_seconds_count 1\n"
        )
    }
    assert missing([query], exposed) == [
        "dashboard 'X' (x.json), panel 'TTFT': metric vllm:time_to_first_token_seconds is not "
        "in any stand-in /metrics"
    ]
    assert not missing([replace(query, expr="vllm:time_to_first_token_seconds_count")], exposed)


def test_exposition_reads_names_and_labels():
    text = (
        "# HELP x_total Things.\n# TYPE x_total counter\n"
        'x_total{a="1",b="q\\"uo,te"} 3\ny_bucket{le="+Inf"} 1\nvllm:z 0.5\n\n'
    )
    assert exposition(text) == {"x_total": {"a", "b"}, "y_bucket": {"le"}, "vllm:z": set()}
