"""Layer 5: monitoring. Every host gets its exporters; the hosts with ``monitoring_prometheus``
(group_data/monitoring.py sets it for the inventory group ``monitoring``) also get the
Prometheus server that scrapes the whole fleet and alerts.

- ``exporters``: node-exporter (the distribution's package) on every host, NVIDIA's
  dcgm-exporter container on GPU hosts, each bound and published as configured and changed
  only when its config differs;
- ``server``: Prometheus from the distribution's package, its config, alert rules
  (``alerts``) and file_sd targets (``targets``, from the whole inventory) checked by
  promtool before a reload; a refused config leaves the running one in place;
- Grafana provisioning files (``dashboards/``, ``grafana/``) written on the monitoring
  hosts for sites that run Grafana (README "Monitoring").
"""

from __future__ import annotations

from typing import Any

from pyinfra import state
from pyinfra.api import deploy

from operations.config.model import FleetConfig
from operations.monitoring import exporters, server
from operations.platform import family_of


@deploy("Monitoring")
def apply(config: FleetConfig, profile: dict[str, Any]) -> None:
    """The exporters; on a monitoring-group host, Prometheus with the fleet's targets."""
    family = family_of(profile)
    monitoring = config.monitoring
    if monitoring.node_exporter:
        exporters.node_exporter(config, family)
    if monitoring.dcgm_exporter and config.host.has_gpus:
        exporters.dcgm_exporter(config)
    if monitoring.prometheus:
        from operations.run import inventory_fleet

        server.apply(config, profile, family, inventory_fleet(state))
