"""Plan tests of the gateway (operations/gateway): nginx in front of the vLLM servers, which
move to loopback; its config checked by nginx -t before a reload; TLS files uploaded, never
printed; nothing planned when the host has it; refused without TLS or plain HTTP."""

from __future__ import annotations

import pytest

from operations.config.load import ConfigError
from operations.config.model import FleetConfig
from operations.gateway import CERT, CONF, KEY, nginx_conf
from operations.kit.converged import MARK
from tests.plan.test_converged_plan import path_line
from tests.plan.test_docker_plan import dpkg
from tests.plan.test_vllm_plan import docker_run
from tests.plan.test_vllm_plan import plan_of as _plan_of

ON = {"gateway_mode": "on", "gateway_plain_http": True}


def plan_of(tmp_path, monkeypatch, **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return _plan_of(tmp_path, monkeypatch, **kwargs)


def test_the_gateway_moves_vllm_to_loopback_and_fronts_its_port(tmp_path, monkeypatch):
    planned = plan_of(tmp_path, monkeypatch, **ON)
    run = " ".join(docker_run(planned["vLLM vllm-main"]))
    assert "--publish 127.0.0.1:18000:8000" in run and "0.0.0.0:8000" not in run
    assert "url=http://127.0.0.1:18000" in planned["vLLM vllm-main"][-1]  # the readiness gate
    assert any("nginx" in command for command in planned["Install nginx"])
    staged, apply = planned["Gateway config (nginx -t checked)"]
    assert staged.startswith(f"upload {CONF}.staged: ")
    assert "listen 0.0.0.0:8000;" in staged and "server 127.0.0.1:18000" in staged
    assert "nginx -t" in apply and f"mv -f {CONF}.prev {CONF}" in apply


def test_the_config_allowlists_routes_and_streams_unbuffered():
    config = FleetConfig.model_validate(
        {"gateway": {"mode": "on", "plain_http": True, "metrics_allow": "10.9.0.0/16"},
         "vllm": {"instances": [{"name": "a", "gpus": [0]},
                                {"name": "b", "gpus": [1], "port": 8001}]}}
    )  # fmt: skip
    prometheus = FleetConfig.model_validate({"monitoring": {"prometheus": True}})
    fleet = {"mon": ({"ssh_hostname": "10.1.2.3"}, prometheus), "me": ({}, config)}
    text = nginx_conf(config, fleet)
    # both instances serve the same model: one upstream, behind each port
    assert text.count("upstream ") == 1
    assert "server 127.0.0.1:18000" in text and "server 127.0.0.1:18001" in text
    assert "listen 0.0.0.0:8000;" in text and "listen 0.0.0.0:8001;" in text
    assert text.count("location / { return 404; }") == 2
    assert text.count("proxy_buffering off;") == 2
    for allowed in ("127.0.0.1/32", "10.1.2.3/32", "10.9.0.0/16"):
        assert f"allow {allowed};" in text
    assert "deny all;" in text and "ssl" not in text


def test_tls_files_are_uploaded_root_only_and_nginx_listens_with_ssl(tmp_path, monkeypatch):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIcert\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIIkey\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    planned = plan_of(tmp_path / "p", monkeypatch, raw=True, gateway_mode="on",
                      gateway_tls_cert_file=str(cert), gateway_tls_key_file=str(key))  # fmt: skip
    upload = planned["Gateway TLS certificate and key"]
    assert (
        f"chmod 600 {KEY}.new && chown root:root {KEY}.new && mv -f {KEY}.new {KEY}" in upload[-1]
    )
    assert any(c.startswith(f"upload {CERT}.new") for c in upload)
    staged = planned["Gateway config (nginx -t checked)"][0]
    assert "listen 0.0.0.0:8000 ssl;" in staged and f"ssl_certificate_key {KEY};" in staged


def test_a_key_others_can_read_or_no_tls_at_all_is_refused(tmp_path, monkeypatch):
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("c")
    key.write_text("k")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="gateway_tls_key_file.*chmod 600"):
        plan_of(tmp_path / "a", monkeypatch, gateway_mode="on", gateway_tls_cert_file=str(cert),
                gateway_tls_key_file=str(key))  # fmt: skip
    with pytest.raises(ConfigError, match="gateway_plain_http = True"):
        plan_of(tmp_path / "b", monkeypatch, gateway_mode="on")
    with pytest.raises(ConfigError, match="gateway_tls_key_file.*must be set too"):
        plan_of(tmp_path / "c", monkeypatch, gateway_mode="on", gateway_tls_cert_file=str(cert))


def test_a_host_with_the_gateway_gets_nothing_planned_for_it(tmp_path, monkeypatch):
    config = FleetConfig.model_validate(
        {"gateway": {"mode": "on", "plain_http": True}, "deploy": {"layers": ["vllm"]}}
    )
    text = nginx_conf(config, {"@fake/h": ({}, config)})
    facts = {
        MARK: [
            path_line(CONF, "file", "644 root root", text),
            f"{MARK}\tunit\tId=nginx.service",
            f"{MARK}\tunit\tSubState=running",
            f"{MARK}\tunit\tUnitFileState=enabled",
        ],  # fmt: skip
        "dpkg -l": dpkg("nginx 1.22.1-9", "curl 7.88.1-10"),
    }
    planned = by_name_of(plan_of(tmp_path, monkeypatch, raw=True, facts=facts, **ON))
    assert not [name for name in planned if "ateway" in name or "nginx" in name], planned


def by_name_of(planned: dict) -> dict:
    """The operations that would run a command."""
    return {name: commands for name, commands in planned.items() if commands}


def test_the_gateway_off_removes_its_config_only_where_it_is(tmp_path, monkeypatch):
    facts = {MARK: [path_line(CONF, "file", "644 root root", "old")]}
    planned = plan_of(tmp_path / "a", monkeypatch, raw=True, facts=facts, gateway_mode="off")
    assert f"rm -f {CONF}\n" in planned["Remove the gateway config (gateway off)"][0]
    facts = {MARK: [path_line(CONF, "absent")]}
    planned = plan_of(tmp_path / "b", monkeypatch, raw=True, facts=facts, gateway_mode="off")
    assert "Remove the gateway config (gateway off)" not in planned
