"""The exporters every monitored host runs.

**node-exporter**: the distribution's package (Debian/Ubuntu ``prometheus-node-exporter``;
on RHEL/Rocky EPEL's ``golang-github-prometheus-node-exporter``, whose unit is
``node_exporter``: EL's own repositories ship none, and EPEL's is built from the same upstream
source, so hosts keep one package manager and its updates). Its listen address is a flag: a
systemd drop-in replaces the unit's ``ExecStart``. It does not keep the package's ``$ARGS``:
node-exporter listens on every ``--web.listen-address`` it is given, so one set in
/etc/default would open a second port.

**dcgm-exporter** (GPU hosts): NVIDIA's container, pinned, ``--gpus all --cap-add SYS_ADMIN``,
published on the configured address and port, reading the counters CSV the deploy writes
(operations/monitoring/dcgm-counters.csv: upstream's defaults plus the health counters they
leave commented out). Like vLLM's servers (pyinfra's ``docker.container`` never recreates a
changed container), it carries a spec label: the hash of its ``docker run`` arguments, the
CSV and the host's driver and toolkit; it is recreated only when that differs or it is not
running, then waited for until its /metrics answers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

from pyinfra.api import operation
from pyinfra.facts.docker import DockerImage
from pyinfra.operations import dnf, docker, systemd

from operations.config.model import FleetConfig
from operations.kit import converged, scripts
from operations.kit.common import local_url_host, url_host
from operations.kit.quoting import image_reference, shell
from operations.monitoring.facts import DCGM_CONTAINER, DCGM_LABEL, SPEC_LABEL, DcgmContainer
from operations.vllm import NO_RUNTIME, Runtime, archived_image, image_load, runtime_of


class NodeExporter(NamedTuple):
    package: str
    unit: str
    binary: str


# The one OS difference of node-exporter: package, unit and binary per package-manager family.
NODE_EXPORTER = {
    "apt": NodeExporter(
        "prometheus-node-exporter", "prometheus-node-exporter", "/usr/bin/prometheus-node-exporter"
    ),
    "dnf": NodeExporter(
        "golang-github-prometheus-node-exporter", "node_exporter", "/usr/bin/node_exporter"
    ),
}
INSTALL = {"apt": converged.apt_install, "dnf": dnf.packages}
for _found in NODE_EXPORTER.values():
    converged.managed_unit(_found.unit)
    converged.managed(f"/etc/systemd/system/{_found.unit}.service.d/gpufleet.conf")

COUNTERS_SOURCE = Path(__file__).with_name("dcgm-counters.csv")
DCGM_DIR = converged.managed("/etc/gpufleet/dcgm")
COUNTERS = converged.managed(f"{DCGM_DIR}/counters.csv")
COUNTERS_IN_CONTAINER = "/etc/dcgm-exporter/gpufleet-counters.csv"
DCGM_CONTAINER_PORT = 9400


def node_drop_in(config: FleetConfig, found: NodeExporter) -> str:
    monitoring = config.monitoring
    listen = f"{url_host(monitoring.node_exporter_address)}:{monitoring.node_exporter_port}"
    return (
        "# Written by gpufleet: the monitoring layer's node-exporter flags.\n[Service]\n"
        f"ExecStart=\nExecStart={found.binary} --web.listen-address={listen}\n"
    )


def node_exporter(config: FleetConfig, family: str) -> None:
    """The package, its listen address (drop-in, restart on change), running and enabled."""
    found = NODE_EXPORTER[family]
    INSTALL[family](name="Install node-exporter", packages=[found.package])
    path = f"/etc/systemd/system/{found.unit}.service.d/gpufleet.conf"
    text = node_drop_in(config, found)
    flags = converged.put("node-exporter flags (systemd drop-in)", text, path)
    systemd.service(
        name="Restart node-exporter on new flags", service=found.unit, running=True,
        restarted=True, daemon_reload=True, _if=flags.did_change,
    )  # fmt: skip
    converged.service("node-exporter running and enabled", found.unit, running=True, enabled=True)


def counters_csv() -> str:
    return COUNTERS_SOURCE.read_text(encoding="utf-8")


def dcgm_args(config: FleetConfig) -> list[str]:
    """``docker run`` arguments of dcgm-exporter, but the spec label."""
    monitoring = config.monitoring
    publish = f"{url_host(monitoring.dcgm_address)}:{monitoring.dcgm_port}:{DCGM_CONTAINER_PORT}"
    mount = f"type=bind,source={COUNTERS},target={COUNTERS_IN_CONTAINER},readonly"
    return [
        "--name", DCGM_CONTAINER,
        "--label", f"{DCGM_LABEL}=dcgm-exporter",
        "--restart", "unless-stopped",
        "--log-driver", "json-file",
        "--log-opt", f"max-size={config.docker.log_max_size}",
        "--log-opt", f"max-file={config.docker.log_max_file}",
        "--gpus", "all",
        "--cap-add", "SYS_ADMIN",
        "--publish", publish,
        "--mount", mount,
        image_reference(monitoring.dcgm_image, "monitoring_dcgm_image"),
        "-f", COUNTERS_IN_CONTAINER,
    ]  # fmt: skip


def dcgm_spec(config: FleetConfig, runtime: Runtime, csv: str) -> str:
    material: Any = {"args": dcgm_args(config), "counters": csv}
    if runtime != NO_RUNTIME:
        material |= {"driver": runtime.driver, "toolkit": runtime.toolkit}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _probe_address(config: FleetConfig) -> str:
    return local_url_host(config.monitoring.dcgm_address)


@operation()
def dcgm_container(config: FleetConfig, spec: str):
    """(Re)create dcgm-exporter, then wait until its /metrics answers (dcgm_ready.sh)."""
    args = " ".join(shell(arg) for arg in dcgm_args(config))
    yield f"docker rm -f {DCGM_CONTAINER} >/dev/null 2>&1 || true"
    yield f"docker run --detach --label {shell(f'{SPEC_LABEL}={spec}')} {args} >/dev/null"
    url = f"http://{_probe_address(config)}:{config.monitoring.dcgm_port}/metrics"
    yield scripts.render("dcgm_ready", NAME=DCGM_CONTAINER, URL=url, TIMEOUT=60)


def dcgm_exporter(config: FleetConfig) -> None:
    """The counters CSV, the image (pulled or loaded), the container when its spec differs."""
    csv = counters_csv()
    converged.directory("dcgm-exporter config directory", DCGM_DIR, mode="755")
    converged.put("dcgm-exporter counters", csv, COUNTERS, mode="644")
    image = image_reference(config.monitoring.dcgm_image, "monitoring_dcgm_image")
    if not converged.planned(DockerImage, object_id=shell(image)):
        archive = config.monitoring.dcgm_image_archive
        if archive:
            image_load(image, str(archive), "monitoring_dcgm_image_archive")  # refused now if bad
            archived_image(name=f"Load {image}", image=image, archive=str(archive),
                           key="monitoring_dcgm_image_archive")  # fmt: skip
        else:
            docker.image(name=f"Pull {image}", image=image, present=True)
    spec = dcgm_spec(config, runtime_of(config), csv)
    found = converged.planned(DcgmContainer)
    if found.get("spec") != spec or found.get("status") != "running":
        dcgm_container(name="dcgm-exporter container", config=config, spec=spec)
