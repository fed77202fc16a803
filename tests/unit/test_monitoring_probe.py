"""MonitoringProbe (operations/kit/scripts/monitoring_probe.sh) run by dash with stub
commands: what a healthy host reports, and what a host whose exporters or Prometheus fail
reports, parsed as the verify checks read it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from operations.config.model import FleetConfig
from operations.monitoring.facts import (
    MonitoringProbe,
    duration_s,
    parse_probe,
    probe_urls,
    rescrape_s,
)

DASH = shutil.which("dash")
pytestmark = pytest.mark.skipif(DASH is None, reason="dash is not installed")
TARGETS = {"data": {"activeTargets": [{"labels": {"job": "node"}, "health": "up"}]}}


def stubs(directory: Path, healthy: bool) -> str:
    state = "active" if healthy else "inactive"
    bodies = {
        "systemctl": f'case "$1" in cat) [ "$2" = node_exporter ] && exit 1; exit 0;; '
        f"is-active) echo {state};; esac",
        "curl": 'case "$*" in *9100*) printf "node_cpu_seconds_total{cpu=\\"0\\"} 1\\n'
        'node_filesystem_avail_bytes 2\\n# HELP x\\n";; *9400*) echo "DCGM_FI_DEV_GPU_TEMP 40";; '
        f"*targets*) echo '{json.dumps(TARGETS)}';; *rules*) echo '{{}}';; esac"
        if healthy
        else "exit 7",
        "docker": f"echo {'running' if healthy else 'exited'}",
        "promtool": "exit 0" if healthy else "echo 'FAILED: parsing YAML'; exit 1",
    }
    directory.mkdir()
    for name, body in bodies.items():
        (directory / name).write_text(f"#!/bin/sh\n{body}\n")
        (directory / name).chmod(0o755)
    return f"{directory}:/usr/bin:/bin"


def probe(tmp_path: Path, healthy: bool) -> dict:
    config = FleetConfig.model_validate(
        {"host": {"has_gpus": True}, "monitoring": {"prometheus": True}}
    )
    script = MonitoringProbe().command(
        ("prometheus-node-exporter", "node_exporter"), config=f"{tmp_path}/p.yml", wait_s=2,
        **probe_urls(config),
    )  # fmt: skip
    env = {"PATH": stubs(tmp_path / "bin", healthy), "LC_ALL": "C"}
    done = subprocess.run([DASH, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return parse_probe(done.stdout.splitlines())


def test_a_healthy_host_reports_its_units_metric_names_and_targets(tmp_path):
    found = probe(tmp_path, healthy=True)
    assert found["node_unit"] == "active" and found["prometheus_unit"] == "active"
    assert found["node_metrics"] == {"node_cpu_seconds_total", "node_filesystem_avail_bytes"}
    assert found["dcgm_status"] == "running" and found["dcgm_metrics"] == {"DCGM_FI_DEV_GPU_TEMP"}
    assert found["promtool"] == "ok" and found["targets"] == TARGETS


def test_a_failing_host_reports_what_failed(tmp_path):
    found = probe(tmp_path, healthy=False)
    assert found["node_unit"] == "inactive" and found["node_metrics"] == set()
    assert found["dcgm_status"] == "exited" and found["dcgm_metrics"] == set()
    assert found["promtool"].startswith("FAILED: parsing YAML")
    assert found["targets"] == {} and found["rules"] == {}


def test_urls_follow_the_bind_addresses_and_what_the_host_runs():
    config = FleetConfig.model_validate(
        {
            "host": {"has_gpus": False},
            "monitoring": {"node_exporter_address": "10.0.0.5", "node_exporter_port": 9111},
        }
    )
    urls = probe_urls(config)
    assert urls == {"node_url": "http://10.0.0.5:9111/metrics", "dcgm_url": "",
                    "prometheus_url": ""}  # fmt: skip


DOWN = {"data": {"activeTargets": [{"labels": {"job": "vllm"}, "health": "down"}]}}


def probe_targets(tmp_path: Path, answers: list[dict], down_s: int) -> tuple[dict, float, int]:
    """The probe where Prometheus' targets API gives ``answers`` in turn (the last one from
    then on; compact JSON, as Prometheus writes it): what it reports, how long it took and
    how many times it asked."""
    config = FleetConfig.model_validate({"monitoring": {"prometheus": True}})
    path = stubs(tmp_path / "bin", healthy=True)
    for number, answer in enumerate(answers):
        (tmp_path / f"answer{number}").write_text(json.dumps(answer, separators=(",", ":")))
    calls, last = tmp_path / "calls", len(answers) - 1
    (tmp_path / "bin" / "curl").write_text(
        f'#!/bin/sh\ncase "$*" in *targets*) echo x >> {calls}; n=$(( $(wc -l < {calls}) - 1 )); '
        f'[ "$n" -gt {last} ] && n={last}; cat {tmp_path}/answer"$n";; *) echo "{{}}";; esac\n'
    )
    script = MonitoringProbe().command(
        ("prometheus-node-exporter",), config=f"{tmp_path}/p.yml", wait_s=2,
        rescrape_s=down_s, **probe_urls(config),
    )  # fmt: skip
    started = time.monotonic()
    done = subprocess.run([DASH, "-c", script], env={"PATH": path, "LC_ALL": "C"},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    took = time.monotonic() - started
    return parse_probe(done.stdout.splitlines()), took, calls.read_text().count("x")


def test_a_target_down_at_its_last_scrape_and_up_at_the_next_is_reported_up(tmp_path):
    found, took, asked = probe_targets(tmp_path, [DOWN, DOWN, TARGETS], down_s=10)
    assert found["targets"] == TARGETS and asked == 3
    assert took < 5  # it stopped waiting at the first fresh scrape


def test_a_target_still_down_after_a_scrape_interval_is_reported_down(tmp_path):
    found, took, asked = probe_targets(tmp_path, [DOWN], down_s=2)
    assert found["targets"] == DOWN and asked == 3  # the first read and 2 more, a second apart
    assert 2 <= took < 6


def test_no_wait_when_every_target_is_up(tmp_path):
    found, took, asked = probe_targets(tmp_path, [TARGETS], down_s=10)
    assert found["targets"] == TARGETS and asked == 1 and took < 2


@pytest.mark.parametrize(
    ("interval", "fact_timeout_s", "expected"),
    [("15s", 60, 17), ("5s", 60, 7), ("1m", 60, 30), ("500ms", 60, 2), ("15s", 10, 5),
     ("2h", 300, 30)],
)  # fmt: skip
def test_the_rescrape_wait_is_one_interval_under_the_fact_bound(interval, fact_timeout_s, expected):
    config = FleetConfig.model_validate(
        {"monitoring": {"scrape_interval": interval}, "deploy": {"fact_timeout_s": fact_timeout_s}}
    )
    assert rescrape_s(config) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15), ("500ms", 0.5), ("5m", 300), ("1h", 3600), ("15d", 1296000), ("1w", 604800)],
)
def test_durations_in_seconds(text, seconds):
    assert duration_s(text) == seconds
