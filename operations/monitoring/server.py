"""The Prometheus server of the monitoring group's hosts: Debian's ``prometheus`` package,
run with gpufleet's own config directory so the package's /etc/prometheus files stay the
package's (no conffile prompt on an upgrade).

``/etc/gpufleet/prometheus/`` holds ``prometheus.yml`` (global intervals, the rules, one
scrape job per JOB reading ``targets/<job>.json``: paths relative to the config, as
Prometheus resolves them), ``rules/gpufleet.yml`` (operations.monitoring.alerts) and the
three file_sd files (operations.monitoring.targets), and ``gateway-ca.pem``: the certificates of
the fleet's TLS gateways, which the ``vllm`` job verifies its https targets with (empty, and
not referenced, when no gateway serves TLS). When any of them differs from what the
config gives, the whole set is uploaded to a staging directory beside it and
``prometheus_apply.sh`` runs ``promtool check config`` and ``promtool check rules`` on it:
a refusal leaves the live files and the running server untouched and fails the host quoting
promtool (the daemon.json pattern); an accepted set is moved in and a running Prometheus is
reloaded (SIGHUP: no restart, no gap in the scrape). The listen address and the retention are
flags: a systemd drop-in replaces the unit's ``ExecStart`` (Debian's reads them from
/etc/default/prometheus, which the deploy leaves alone), and a changed drop-in restarts it.

Only apt hosts are supported: RHEL and Rocky ship no Prometheus in their own repositories.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.operations import systemd

from operations.cli.targets import gateway_cert_files
from operations.config.model import FleetConfig
from operations.kit import converged, scripts
from operations.kit.common import fail_host, local_url_host, url_host
from operations.monitoring.alerts import rules_text
from operations.monitoring.targets import JOBS, Hosts, job_targets

LIVE = "/etc/gpufleet/prometheus"
STAGED = "/etc/gpufleet/prometheus.staged"
UNIT = converged.managed_unit("prometheus")
DROP_IN = converged.managed("/etc/systemd/system/prometheus.service.d/gpufleet.conf")
CA_BUNDLE = "gateway-ca.pem"
FILES = (
    "prometheus.yml", "rules/gpufleet.yml", CA_BUNDLE, *(f"targets/{job}.json" for job in JOBS),
)  # fmt: skip
for _name in FILES:
    converged.managed(f"{LIVE}/{_name}")
# Grafana provisioning (for sites that run Grafana beside Prometheus): source -> host path
HERE = Path(__file__).parent
GRAFANA_DASHBOARDS = "/var/lib/grafana/dashboards/gpufleet"
GRAFANA = {
    HERE / "grafana" / "datasource.yml": "/etc/grafana/provisioning/datasources/gpufleet.yml",
    HERE / "grafana" / "dashboards.yml": "/etc/grafana/provisioning/dashboards/gpufleet.yml",
    **{
        source: f"{GRAFANA_DASHBOARDS}/{source.name}"
        for source in sorted((HERE / "dashboards").glob("*.json"))
    },
}
for _dest in GRAFANA.values():
    converged.managed(_dest)
# What the monitoring host's platform needs: Debian's package; None where none is shipped.
PACKAGES: dict[str, list[str] | None] = {"apt": ["prometheus"], "dnf": None}
HEADER = "# Written by gpufleet (operations/monitoring/server.py): changes here are replaced.\n"


def gateway_ca_bundle(fleet: Hosts) -> str:
    """The certificates of the fleet's TLS gateways (each distinct controller file once, in
    path order): what Prometheus trusts when it scrapes a vLLM server through one, so a
    self-signed gateway certificate verifies as well as one from the operator's CA."""
    return "".join(Path(path).read_text().rstrip("\n") + "\n" for path in gateway_cert_files(fleet))


def _scrape_job(job: str, tls: bool) -> dict[str, Any]:
    found: dict[str, Any] = {
        "job_name": job,
        "file_sd_configs": [{"files": [f"targets/{job}.json"]}],
    }
    if tls and job == "vllm":  # targets behind a TLS gateway say __scheme__: https
        found["tls_config"] = {"ca_file": CA_BUNDLE}
    return found


def prometheus_yml(config: FleetConfig, tls: bool = False) -> str:
    """The server's config: JSON, which is YAML, after a comment line. ``tls``: some vLLM
    target is behind a TLS gateway, verified against the bundle of gateway certificates."""
    interval = config.monitoring.scrape_interval
    document = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": ["rules/gpufleet.yml"],
        "scrape_configs": [_scrape_job(job, tls) for job in JOBS],
    }
    return HEADER + json.dumps(document, indent=2) + "\n"


def config_files(config: FleetConfig, fleet: Hosts) -> dict[str, str]:
    """{path under LIVE: content} of every file the server reads."""
    targets = job_targets(fleet)
    bundle = gateway_ca_bundle(fleet)
    return {
        "prometheus.yml": prometheus_yml(config, tls=bool(bundle)),
        CA_BUNDLE: bundle,
        "rules/gpufleet.yml": rules_text(
            config.monitoring.alert_for, fatal_xids=config.gpu.fatal_xids
        ),
        **{
            f"targets/{job}.json": json.dumps(targets[job], indent=2, sort_keys=True) + "\n"
            for job in JOBS
        },
    }


def drop_in(config: FleetConfig) -> str:
    """The unit's ExecStart with gpufleet's config, listen address and retention."""
    found = config.monitoring
    listen = f"{url_host(found.prometheus_address)}:{found.prometheus_port}"
    return (
        "# Written by gpufleet: the monitoring layer's Prometheus flags.\n[Service]\nExecStart=\n"
        f"ExecStart=/usr/bin/prometheus --config.file={LIVE}/prometheus.yml "
        "--storage.tsdb.path=/var/lib/prometheus/metrics2/ "
        f"--storage.tsdb.retention.time={found.prometheus_retention} "
        f"--web.listen-address={listen}\n"
    )


def grafana_files(config: FleetConfig) -> dict[str, str]:
    """{host path: content} of the Grafana provisioning: the datasource points at this host's
    Prometheus (loopback when it listens on every address)."""
    found = config.monitoring
    where = local_url_host(found.prometheus_address)
    values = {
        "${GPUFLEET_PROMETHEUS_URL}": f"http://{where}:{found.prometheus_port}",
        "${GPUFLEET_SCRAPE_INTERVAL}": found.scrape_interval,
    }
    files = {}
    for source, dest in GRAFANA.items():
        text = source.read_text(encoding="utf-8")
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        files[dest] = text
    return files


def _differs(files: dict[str, str]) -> bool:
    """Whether any file is not on the host as given (or its state is unknown)."""
    return not all(converged.holds(f"{LIVE}/{name}", text) for name, text in files.items())


@operation()
def checked_config(files: dict[str, str]):
    """Stage every file, then promtool-check and move them in (prometheus_apply.sh)."""
    yield StringCommand(f"rm -rf {STAGED} && mkdir -p {STAGED}/rules {STAGED}/targets")
    for name, text in files.items():
        temp = f"{STAGED}/{name}"
        yield FileUploadCommand(StringIO(text), temp, remote_temp_filename=temp)
    yield scripts.render("prometheus_apply", STAGED=STAGED, LIVE=LIVE, UNIT=UNIT)


def apply(config: FleetConfig, profile: dict[str, Any], family: str, fleet: Hosts) -> None:
    """Install and configure Prometheus on a monitoring host (see the module doc)."""
    packages = PACKAGES[family]
    if packages is None:
        fail_host(
            "Prometheus: no package for this OS",
            f"monitoring_prometheus = True: {profile.get('os_id')} "
            f"{profile.get('os_version')} ships no Prometheus in its own repositories; run "
            "it on a Debian or Ubuntu host",
        )
        return
    converged.apt_install(name="Install Prometheus", packages=packages)
    flags = converged.put("Prometheus flags (systemd drop-in)", drop_in(config), DROP_IN)
    files = config_files(config, fleet)
    if _differs(files):
        checked_config(name="Prometheus config, rules and targets (promtool-checked)", files=files)
    if config.monitoring.grafana_provisioning:
        for dest, text in grafana_files(config).items():
            converged.put(f"Grafana provisioning {Path(dest).name}", text, dest, mode="644")
    systemd.service(
        name="Restart Prometheus on new flags", service=UNIT, running=True, restarted=True,
        daemon_reload=True, _if=flags.did_change,
    )  # fmt: skip
    converged.service("Prometheus running and enabled", UNIT, running=True, enabled=True)
