"""The gateway's probe script (gateway_probe.sh) run here by dash: the proxy_buffering lines
it counts in the gateway's config, and the verify check that reads them failing on a config
that buffers streams."""

from __future__ import annotations

import subprocess

import pytest

from operations.config.model import FleetConfig
from operations.gateway import facts
from tests.verify import test_gateway
from tests.verify.fleet import FleetHost


def probe(monkeypatch, conf) -> dict:
    monkeypatch.setattr(facts, "CONF_PATH", str(conf))
    command = facts.GatewayProbe().command((), "127.0.0.1", "http")
    done = subprocess.run(["dash", "-c", command], capture_output=True, text=True, check=True)
    return facts.parse_probe(done.stdout.splitlines())


def test_buffering_lines_are_counted(monkeypatch, tmp_path):
    conf = tmp_path / "gateway.conf"
    conf.write_text("location /v1/ {\n  proxy_buffering off;  # streamed\n}\n" * 2)
    assert probe(monkeypatch, conf)["buffering"] == {"off": 2, "on": 0}
    conf.write_text("location /v1/ {\n\tproxy_buffering on;\n}\n# proxy_buffering off;\n")
    assert probe(monkeypatch, conf)["buffering"] == {"off": 0, "on": 1}
    assert probe(monkeypatch, tmp_path / "absent")["buffering"] == {"off": 0, "on": 0}


def _check(buffering: dict) -> None:
    config = FleetConfig(gateway={"mode": "on", "plain_http": True})
    host = FleetHost("@local", config, {})
    host.read = lambda spec: {"buffering": buffering}  # type: ignore[method-assign]
    test_gateway.test_gateway_passes_streams_unbuffered(host)


def test_the_check_fails_a_gateway_that_buffers_streams():
    _check({"off": 1, "on": 0})
    with pytest.raises(AssertionError, match="proxy_buffering on in 1 place"):
        _check({"off": 0, "on": 1})
    with pytest.raises(AssertionError, match="off in 0 of 1"):
        _check({"off": 0, "on": 0})  # the line removed: nginx's default buffers
