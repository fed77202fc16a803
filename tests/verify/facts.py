"""The deploy's facts as the verify checks read them: one constant each, shared by every check
module that declares it in its ``FACTS`` (the plugin prefetches the union of the selected
modules' declarations, one round trip per host). Each is read with the arguments the
deploy's own ``get_fact`` passes, so verify sees what the deploy decides from."""

from __future__ import annotations

from operations.docker.facts import ContainerStack
from operations.driver.facts import DriverState
from operations.gateway.facts import GatewayProbe
from operations.kit.daemon_json import DaemonJson
from operations.monitoring.exporters import NODE_EXPORTER
from operations.monitoring.facts import MonitoringProbe, probe_urls, rescrape_s
from operations.monitoring.server import LIVE as PROMETHEUS_DIR
from operations.preflight.facts import HostProfile
from operations.vllm.facts import VllmState
from tests.verify.fleet import deploy_fact

PROFILE = deploy_fact(HostProfile, path=lambda config: config.preflight.disk_path)
DRIVER = deploy_fact(DriverState)
STACK = deploy_fact(ContainerStack)  # docker and the container toolkit
DAEMON_JSON = deploy_fact(DaemonJson)
VLLM = deploy_fact(VllmState)
MONITORING = deploy_fact(
    MonitoringProbe,
    node_units=lambda config: tuple(found.unit for found in NODE_EXPORTER.values()),
    node_url=lambda config: probe_urls(config)["node_url"],
    dcgm_url=lambda config: probe_urls(config)["dcgm_url"],
    prometheus_url=lambda config: probe_urls(config)["prometheus_url"],
    config=lambda config: f"{PROMETHEUS_DIR}/prometheus.yml",
    rescrape_s=rescrape_s,
)
GATEWAY = deploy_fact(
    GatewayProbe,
    ports=lambda config: (
        tuple(server.port for server in config.vllm.servers())
        if config.gateway.enabled(config.vllm.bind_address)
        else ()
    ),  # no request at all where there is no gateway
    address=lambda config: (
        str(config.host.address or "")
        if config.vllm.bind_address.is_unspecified
        else str(config.vllm.bind_address)
    ),
    scheme=lambda config: "https" if config.gateway.tls_cert_file else "http",
)
