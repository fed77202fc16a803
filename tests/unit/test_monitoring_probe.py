"""MonitoringProbe (operations/kit/scripts/monitoring_probe.sh) run by dash with stub
commands: what a healthy host reports, and what a host whose exporters or Prometheus fail
reports, parsed as the verify checks read it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from operations.config.model import FleetConfig
from operations.monitoring.facts import MonitoringProbe, parse_probe, probe_urls

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
