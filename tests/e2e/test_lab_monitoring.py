"""End to end, layer 5 (monitoring) on the lab fleet: Debian's node-exporter on every host and
Debian's Prometheus on lab-1 (inventory/lab.py's group `monitoring`), for real.

Prometheus scrapes every lab host's node-exporter and STAND-IN vLLM server; its targets API
shows them up; the alert rules are loaded; stopping one vLLM container makes VllmServerDown
go pending, then firing (group_data/lab.py keeps `for:` at 10 s and the scrape at 5 s), and
resolve once it serves again; a config promtool refuses leaves the running one in place. The
controller asks Prometheus at lab-1's bridge address (the lab publishes nothing else).
"""

from __future__ import annotations

import json
import shlex
import time
import urllib.request

import pytest

from operations.kit import scripts
from operations.monitoring.alerts import ALERTS
from operations.monitoring.server import LIVE, STAGED, UNIT
from tests.e2e.helpers import HOSTS, deploy, on_host, verify
from tests.e2e.test_lab_vllm import address, api

pytestmark = pytest.mark.lab
MONITOR = HOSTS[0]  # inventory/lab.py: the group `monitoring`


def prometheus(path: str) -> dict:
    url = f"http://{address(MONITOR)}:9090{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def targets() -> list[dict]:
    return prometheus("/api/v1/targets?state=active")["data"]["activeTargets"]


def alert_state(name: str, host: str) -> str | None:
    for alert in prometheus("/api/v1/alerts")["data"]["alerts"]:
        if (
            alert["labels"].get("alertname") == name
            and alert["labels"].get("gpufleet_host") == host
        ):
            return alert["state"]
    return None


def wait_for(what, predicate, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(1)


@pytest.fixture(scope="module")
def monitored(lab):
    done = deploy("-y")
    assert done.returncode == 0, done.output[-3000:]
    return lab


def _all_up() -> bool:
    found = targets()
    return len(found) == 2 * len(HOSTS) and all(t["health"] == "up" for t in found)


def test_prometheus_scrapes_every_hosts_node_exporter_and_vllm_server(monitored):
    wait_for("every target up", _all_up, timeout=60)
    found = {(t["labels"]["job"], t["labels"]["gpufleet_host"]) for t in targets()}
    assert found == {(job, name) for job in ("node", "vllm") for name in HOSTS}


def test_every_alert_rule_is_loaded_and_verify_passes_the_layer(monitored):
    groups = prometheus("/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == {alert.name for alert in ALERTS}
    done = verify("-m", "monitoring")
    assert done.returncode == 0, done.output[-3000:]


def test_a_stopped_vllm_server_fires_its_alert_and_it_resolves(monitored):
    host = HOSTS[1]
    assert on_host(host, "docker stop vllm-main").returncode == 0
    try:
        wait_for("VllmServerDown pending", lambda: alert_state("VllmServerDown", host) == "pending")
        wait_for("VllmServerDown firing", lambda: alert_state("VllmServerDown", host) == "firing")
        assert alert_state("VllmServerDown", HOSTS[2]) is None  # only that host's
    finally:
        assert on_host(host, "docker start vllm-main").returncode == 0
    wait_for("vLLM answers again", lambda: api(host, "/health")[0] == 200)
    wait_for("VllmServerDown resolved", lambda: alert_state("VllmServerDown", host) is None)


def test_a_config_promtool_refuses_leaves_the_running_one(monitored):
    """A rule file with a broken expression (as a bad release or hand edit would stage it):
    the deploy's apply step refuses it and Prometheus keeps serving on the old set."""
    staged = STAGED
    before = on_host(MONITOR, f"sha1sum {LIVE}/rules/gpufleet.yml").stdout
    script = (
        f"rm -rf {staged} && cp -r {LIVE} {staged} && "
        f"printf 'groups:\\n- name: x\\n  rules:\\n  - alert: X\\n    expr: up ==\\n' "
        f"> {staged}/rules/gpufleet.yml && "
    )
    apply = scripts.render("prometheus_apply", STAGED=STAGED, LIVE=LIVE, UNIT=UNIT)
    done = on_host(MONITOR, script + f"sh -c {shlex.quote(apply)}")
    assert done.returncode != 0
    assert "promtool check" in done.output and "refused" in done.output, done.output
    assert on_host(MONITOR, f"sha1sum {LIVE}/rules/gpufleet.yml").stdout == before
    assert on_host(MONITOR, f"test -e {staged}").returncode != 0  # the staged copy removed
    assert on_host(MONITOR, "systemctl is-active prometheus").stdout.strip() == "active"
    assert prometheus("/api/v1/status/buildinfo")["status"] == "success"


def test_verify_fails_a_stopped_node_exporter_and_its_down_target(monitored):
    """node-exporter stopped on lab-3: its own check fails on lab-3, and Prometheus on lab-1
    reports the target down (HostDown's series); the next deploy starts it again."""
    host = HOSTS[2]
    assert on_host(host, "systemctl stop prometheus-node-exporter").returncode == 0
    try:
        wait_for("the node target down", lambda: any(
            t["labels"]["gpufleet_host"] == host and t["labels"]["job"] == "node"
            and t["health"] == "down" for t in targets()))  # fmt: skip
        done = verify("-m", "monitoring")
        assert done.returncode != 0
        assert f"test_node_exporter_runs_and_serves_node_metrics[{host}]" in done.output
        assert "node-exporter is inactive" in done.output, done.output[-3000:]
        assert f"test_every_prometheus_target_is_up[{MONITOR}]" in done.output
        assert f"node {host} (http://" in done.output
    finally:
        done = deploy("-y", "--limit", host)
    assert done.returncode == 0, done.output[-3000:]
    assert on_host(host, "systemctl is-active prometheus-node-exporter").stdout.strip() == "active"
    wait_for("every target up again", _all_up, timeout=60)
