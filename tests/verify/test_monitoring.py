"""Verify, layer 5 (monitoring): node-exporter and, on GPU hosts, dcgm-exporter run and serve
the metrics the alerts and dashboards query; where Prometheus runs (monitoring_prometheus),
its live config passes promtool, every alert rule is loaded and every target it scrapes is
up. Each check asks from the host itself (MonitoringProbe), in the one prefetch round trip."""

from __future__ import annotations

import pytest

from operations.monitoring.alerts import ALERTS
from operations.monitoring.targets import JOBS
from tests.verify.facts import MONITORING
from tests.verify.fleet import FleetHost

pytestmark = pytest.mark.monitoring
FACTS = (MONITORING,)
NODE_METRICS = {
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "node_cpu_seconds_total",
}
# what every GPU reports, whatever its model (NVLink fields are absent on PCIe GPUs)
DCGM_METRICS = {"DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_POWER_USAGE"}


def _prometheus(fleet_host: FleetHost) -> dict:
    if not fleet_host.config.monitoring.prometheus:
        pytest.skip("not applicable: monitoring_prometheus is False (not in the monitoring group)")
    return fleet_host.read(MONITORING)


def test_node_exporter_runs_and_serves_node_metrics(fleet_host: FleetHost):
    if not fleet_host.config.monitoring.node_exporter:
        pytest.skip("not applicable: monitoring_node_exporter is False")
    found = fleet_host.read(MONITORING)
    assert found.get("node_unit") == "active", (
        f"node-exporter is {found.get('node_unit', 'not installed')}"
    )
    missing = NODE_METRICS - found["node_metrics"]
    assert not missing, f"node-exporter's /metrics lacks {sorted(missing)}"


def test_dcgm_exporter_runs_and_serves_gpu_metrics(fleet_host: FleetHost):
    config = fleet_host.config
    if not (config.host.has_gpus and config.monitoring.dcgm_exporter):
        pytest.skip("not applicable: no GPU, or monitoring_dcgm_exporter is False")
    found = fleet_host.read(MONITORING)
    assert found.get("dcgm_status") == "running", (
        f"dcgm-exporter container is {found.get('dcgm_status') or 'missing'}"
    )
    missing = DCGM_METRICS - found["dcgm_metrics"]
    assert not missing, f"dcgm-exporter's /metrics lacks {sorted(missing)}"


def test_prometheus_runs_on_a_config_promtool_accepts(fleet_host: FleetHost):
    found = _prometheus(fleet_host)
    assert found.get("prometheus_unit") == "active", f"Prometheus is {found.get('prometheus_unit')}"
    assert found.get("promtool") == "ok", f"promtool check config: {found.get('promtool')}"


def test_prometheus_loaded_every_alert_rule(fleet_host: FleetHost):
    groups = _prometheus(fleet_host).get("rules", {}).get("data", {}).get("groups", [])
    loaded = {rule.get("name") for group in groups for rule in group.get("rules", [])}
    missing = {alert.name for alert in ALERTS} - loaded
    assert not missing, f"alert rules not loaded by Prometheus: {sorted(missing)}"


def test_every_prometheus_target_is_up(fleet_host: FleetHost):
    targets = _prometheus(fleet_host).get("targets", {}).get("data", {}).get("activeTargets")
    assert targets is not None, "Prometheus' targets API did not answer"
    jobs = {target["labels"].get("job") for target in targets}
    assert "node" in jobs, f"no node-exporter target is scraped (jobs: {sorted(jobs)})"
    down = [
        f"{t['labels'].get('job')} {t['labels'].get('gpufleet_host')} ({t.get('scrapeUrl')}): "
        f"{t.get('health')} {t.get('lastError', '')}".strip()
        for t in targets
        if t.get("health") == "down"  # "unknown": not scraped yet since the last reload
    ]
    assert not down, f"{len(down)} of {len(targets)} target(s) down: " + "; ".join(down)
    assert jobs <= set(JOBS)
