"""Facts of the monitoring layer: the dcgm-exporter container's state and spec label.

The files and units the layer manages are read with every other layer's in one command
(operations.kit.converged.ManagedState); only the container needs its own ``docker inspect``.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import FactBase

from operations.kit import scripts
from operations.kit.common import local_url_host

DCGM_CONTAINER = "gpufleet-dcgm-exporter"
DCGM_LABEL = "gpufleet.monitoring"
SPEC_LABEL = "gpufleet.spec"  # as on the vLLM containers: the hash of what it was made from


def parse_container(lines: list[str]) -> dict[str, Any]:
    """{"status": docker's state ("" when there is no such container), "spec": its label}."""
    for line in lines:
        if line.startswith("{"):
            inspect = json.loads(line)
            labels = (inspect.get("Config") or {}).get("Labels") or {}
            return {
                "status": (inspect.get("State") or {}).get("Status", ""),
                "spec": labels.get(SPEC_LABEL, ""),
            }
    return {"status": "", "spec": ""}


class DcgmContainer(FactBase):
    """The dcgm-exporter container (see the module doc); none without a Docker engine."""

    def command(self) -> str:
        return f"docker inspect --format '{{{{json .}}}}' {DCGM_CONTAINER} 2>/dev/null; true"

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_container(output)

    @staticmethod
    def default() -> dict[str, Any]:
        return parse_container([])


def parse_probe(lines: list[str]) -> dict[str, Any]:
    """{"node_unit", "node_metrics": set, "dcgm_status", "dcgm_metrics": set, and where
    Prometheus runs "prometheus_unit", "promtool" ("ok" or its complaint), "targets" and
    "rules" (the HTTP API's JSON, {} when it did not answer)}."""
    found: dict[str, Any] = {"node_metrics": set(), "dcgm_metrics": set()}
    for line in lines:
        key, _, value = line.partition("=")
        if key in ("node_metrics", "dcgm_metrics"):
            found[key] = set(value.split())
        elif key in ("targets", "rules"):
            try:
                found[key] = json.loads(value) if value else {}
            except ValueError:
                found[key] = {}
        elif key:
            found[key] = value
    return found


def _url(address: Any, port: int, path: str) -> str:
    return f"http://{local_url_host(address)}:{port}{path}"


def probe_urls(config: Any) -> dict[str, str]:
    """Where the host itself reaches its exporters and Prometheus ("" for what it does not
    run): the bound address, or loopback for any-address."""
    found = config.monitoring
    dcgm = found.dcgm_exporter and config.host.has_gpus
    return {
        "node_url": _url(found.node_exporter_address, found.node_exporter_port, "/metrics"),
        "dcgm_url": _url(found.dcgm_address, found.dcgm_port, "/metrics") if dcgm else "",
        "prometheus_url": (
            _url(found.prometheus_address, found.prometheus_port, "") if found.prometheus else ""
        ),
    }


_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_s(text: str) -> float:
    """Seconds of a Prometheus duration as the config model allows it (``15s``, ``5m``)."""
    number = text.rstrip("msdhwy")
    return int(number) * _UNIT_S[text[len(number) :]]


def rescrape_s(config: Any) -> int:
    """How long verify's probe gives a down target to be scraped again: one scrape interval
    and 2 s, held under half of deploy_fact_timeout_s (a sick fleet's probe still answers
    within its bound) and 30 s."""
    interval = duration_s(config.monitoring.scrape_interval)
    return max(0, min(int(interval) + 2, config.deploy.fact_timeout_s // 2, 30))


class MonitoringProbe(FactBase):
    """What the monitoring layer runs here, asked from the host itself (monitoring_probe.sh);
    the verify checks' fact. ``node_units``: the node-exporter unit names of every platform."""

    def command(self, node_units: tuple[str, ...], node_url: str, dcgm_url: str,
                prometheus_url: str, config: str, wait_s: int = 20,
                rescrape_s: int = 0) -> str:  # fmt: skip
        return scripts.render(
            "monitoring_probe",
            NODE_URL=node_url, DCGM="yes" if dcgm_url else "no", DCGM_NAME=DCGM_CONTAINER,
            DCGM_URL=dcgm_url, CONFIG=config, PROMETHEUS="yes" if prometheus_url else "no",
            PROMETHEUS_URL=prometheus_url, WAIT_S=int(wait_s), RESCRAPE_S=int(rescrape_s),
            raw_values={"NODE_UNITS": " ".join(node_units)},
        )  # fmt: skip

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_probe(output)

    @staticmethod
    def default() -> dict[str, Any]:
        return parse_probe([])
