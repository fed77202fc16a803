"""What the monitoring group's Prometheus scrapes: one file_sd targets list per job, built
from the whole inventory's config (not only the hosts a run targets: a deploy limited to the
monitoring host must not drop the rest of the fleet from its scrape).

- ``node``: every host whose ``deploy_layers`` include ``monitoring`` and that runs
  node-exporter, at its ``monitoring_node_exporter_address``/``_port``;
- ``dcgm``: the same hosts that have GPUs and run dcgm-exporter (``monitoring_dcgm_*``);
- ``vllm``: every vLLM server, as ``python -m operations.cli.targets`` writes it (one
  function for both).

Every target carries ``gpufleet_host``, the inventory name, which the alerts and dashboards
group by. Lists are sorted, so the same fleet always gives the same files (no change planned).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from operations.cli.targets import address, file_sd
from operations.config.model import FleetConfig

Hosts = Mapping[str, tuple[Mapping[str, Any], FleetConfig]]
JOBS = ("node", "vllm", "dcgm")


def _monitored(config: FleetConfig) -> bool:
    return "monitoring" in config.deploy.layers


def node_targets(hosts: Hosts) -> list[dict]:
    entries = []
    for name, (data, config) in sorted(hosts.items()):
        found = config.monitoring
        if _monitored(config) and found.node_exporter:
            where = address(name, data, config, found.node_exporter_address)
            target = f"{where}:{found.node_exporter_port}"
            entries.append({"targets": [target], "labels": {"gpufleet_host": name}})
    return entries


def dcgm_targets(hosts: Hosts) -> list[dict]:
    entries = []
    for name, (data, config) in sorted(hosts.items()):
        found = config.monitoring
        if _monitored(config) and found.dcgm_exporter and config.host.has_gpus:
            where = address(name, data, config, found.dcgm_address)
            entries.append(
                {"targets": [f"{where}:{found.dcgm_port}"], "labels": {"gpufleet_host": name}}
            )
    return entries


def job_targets(hosts: Hosts) -> dict[str, list[dict]]:
    """{job: file_sd entries} for the scrape jobs of ``JOBS``."""
    return {"node": node_targets(hosts), "vllm": file_sd(hosts), "dcgm": dcgm_targets(hosts)}
