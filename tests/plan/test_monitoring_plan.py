"""Plan tests of the monitoring layer: what a fresh host and a monitoring-group host get,
that a converged one gets nothing, and what changes recreate dcgm-exporter."""

from __future__ import annotations

import json
import shlex

from operations.config.model import FleetConfig
from operations.kit.converged import MARK
from operations.monitoring import exporters, server
from operations.monitoring.facts import DCGM_CONTAINER, SPEC_LABEL
from operations.vllm import NO_RUNTIME
from tests.plan.harness import FakeFleet
from tests.plan.test_converged_plan import path_line
from tests.plan.test_docker_plan import by_name, dpkg, profile

NODE = exporters.NODE_EXPORTER["apt"]
NODE_DROP_IN = f"/etc/systemd/system/{NODE.unit}.service.d/gpufleet.conf"
IMAGE = FleetConfig().monitoring.dcgm_image


def units(*names: str) -> list[str]:
    lines = []
    for name in names:
        lines += [f"{MARK}\tunit\tId={name}.service", f"{MARK}\tunit\tSubState=running",
                  f"{MARK}\tunit\tUnitFileState=enabled"]  # fmt: skip
    return lines


def dcgm_inspect(spec: str, status: str = "running") -> str:
    return json.dumps({"State": {"Status": status}, "Config": {"Labels": {SPEC_LABEL: spec}}})


def plan(tmp_path, responses=None, group="plan", gpu=True, **data):
    tmp_path.mkdir(parents=True, exist_ok=True)
    host = {
        "fake_responses": {
            "os-release": [line for line in profile() if gpu or not line.startswith("pci=")],
            "docker image inspect": ['[{"Id": "sha256:abc"}]'],
            **(responses or {}),
        },
        "deploy_layers": "monitoring",
        "host_has_gpus": gpu,
        **data,
    }
    return by_name(FakeFleet(tmp_path, {"h": host}, group=group).plan()["h"])


def test_a_fresh_gpu_host_gets_node_exporter_and_dcgm_exporter_but_no_prometheus(tmp_path):
    planned = plan(tmp_path)
    assert "Install node-exporter" in planned
    assert any("prometheus-node-exporter" in c for c in planned["Install node-exporter"])
    assert not any(name.startswith("Prometheus") for name in planned)
    run = next(c for c in planned["dcgm-exporter container"] if c.startswith("docker run"))
    words = shlex.split(run.removesuffix(" >/dev/null"))
    for flag in (["--gpus", "all"], ["--cap-add", "SYS_ADMIN"],
                 ["--publish", "0.0.0.0:9400:9400"], ["--restart", "unless-stopped"]):  # fmt: skip
        at = words.index(flag[0])
        assert words[at : at + 2] == flag, flag
    mount = words[words.index("--mount") + 1]
    assert mount == (f"type=bind,source={exporters.COUNTERS},"
                     f"target={exporters.COUNTERS_IN_CONTAINER},readonly")  # fmt: skip
    assert words[-3:] == [IMAGE, "-f", exporters.COUNTERS_IN_CONTAINER]
    assert "DCGM metric" in planned["dcgm-exporter container"][-1]  # the readiness wait


def test_a_gpu_less_host_gets_no_dcgm_exporter(tmp_path):
    planned = plan(tmp_path, gpu=False)
    assert "Install node-exporter" in planned
    assert not any("dcgm" in name for name in planned)


def test_node_exporter_listens_where_configured():
    config = FleetConfig.model_validate(
        {"monitoring": {"node_exporter_address": "::1", "node_exporter_port": 9111}}
    )
    text = exporters.node_drop_in(config, NODE)
    assert f"ExecStart=\nExecStart={NODE.binary} --web.listen-address=[::1]:9111\n" in text


def test_a_monitoring_host_gets_prometheus_its_flags_and_a_promtool_checked_config(tmp_path):
    planned = plan(tmp_path, group="monitoring", gpu=False, monitoring_prometheus_retention="30d")
    assert any("prometheus" in c for c in planned["Install Prometheus"])
    config = planned["Prometheus config, rules and targets (promtool-checked)"]
    assert (
        config[0]
        == f"rm -rf {server.STAGED} && mkdir -p {server.STAGED}/rules {server.STAGED}/targets"
    )
    apply = config[-1]
    assert "promtool check config" in apply and "promtool check rules" in apply
    assert "systemctl reload prometheus" in apply
    drop_in = server.drop_in(
        FleetConfig.model_validate({"monitoring": {"prometheus_retention": "30d"}})
    )
    assert "--storage.tsdb.retention.time=30d" in drop_in
    assert f"--config.file={server.LIVE}/prometheus.yml" in drop_in


def converged_responses(config: FleetConfig, fleet) -> dict:
    """Facts of a host whose monitoring layer (and, in the monitoring group, Prometheus) is
    as ``config`` gives it."""
    files = server.config_files(config, fleet)
    state = [
        path_line(NODE_DROP_IN, "file", "644 root root", exporters.node_drop_in(config, NODE)),
        path_line(server.DROP_IN, "file", "644 root root", server.drop_in(config)),
        path_line(exporters.DCGM_DIR, "directory", "755 root root"),
        path_line(exporters.COUNTERS, "file", "644 root root", exporters.counters_csv()),
        *(
            path_line(f"{server.LIVE}/{name}", "file", "644 root root", text)
            for name, text in files.items()
        ),  # fmt: skip
        *(
            path_line(dest, "file", "644 root root", text)
            for dest, text in server.grafana_files(config).items()
        ),  # fmt: skip
        *units(NODE.unit, server.UNIT),
    ]
    spec = exporters.dcgm_spec(config, NO_RUNTIME, exporters.counters_csv())
    return {
        MARK: state,
        "dpkg -l": dpkg("prometheus-node-exporter 1.5.0-1", "prometheus 2.42.0+ds-5"),
        DCGM_CONTAINER: [dcgm_inspect(spec)],
    }


def test_a_converged_monitoring_host_is_planned_nothing(tmp_path):
    data = {"host_has_gpus": True}
    config = FleetConfig.model_validate(
        {"host": {"has_gpus": True}, "deploy": {"layers": ["monitoring"]},
         "monitoring": {"prometheus": True, "grafana_provisioning": True}}
    )  # fmt: skip
    fleet = {"@fake/h": ({}, config)}
    planned = plan(tmp_path, converged_responses(config, fleet), group="monitoring",
                   monitoring_grafana_provisioning=True, **data)  # fmt: skip
    changing = {name: cmds for name, cmds in planned.items() if cmds and "[if changed]" not in name}
    assert changing == {}


def test_a_changed_counters_file_or_a_stopped_container_recreates_dcgm_exporter(tmp_path):
    config = FleetConfig.model_validate(
        {"host": {"has_gpus": True}, "deploy": {"layers": ["monitoring"]}}
    )
    responses = converged_responses(config, {"@fake/h": ({}, config)})
    spec = exporters.dcgm_spec(config, NO_RUNTIME, exporters.counters_csv())
    responses[DCGM_CONTAINER] = [dcgm_inspect(spec, status="exited")]
    assert "dcgm-exporter container" in plan(tmp_path / "a", responses)
    responses[DCGM_CONTAINER] = [dcgm_inspect("0123456789abcdef")]  # made from another CSV
    assert "dcgm-exporter container" in plan(tmp_path / "b", responses)
