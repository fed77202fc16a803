"""Verify, the gateway in front of vLLM (operations/gateway): nginx runs; from the host's own
outside address, every route vLLM serves without the key (and the same reached by path
tricks) answers 404 through it; with TLS it presents the configured certificate. The servers'
loopback-only binding and /v1's 401 without the key are checked by test_vllm, through the
gateway when it is on; streams pass unbuffered. Not applicable where the gateway is off."""

from __future__ import annotations

import subprocess

import pytest

from operations.gateway.facts import FORBIDDEN
from tests.verify.facts import GATEWAY
from tests.verify.fleet import FleetHost

pytestmark = pytest.mark.vllm
FACTS = (GATEWAY,)


def _on(fleet_host: FleetHost) -> dict:
    config = fleet_host.config
    if not config.gateway.enabled(config.vllm.bind_address):
        pytest.skip("not applicable: the gateway is off (gateway_mode, or a loopback bind)")
    return fleet_host.read(GATEWAY)


def test_gateway_nginx_is_running(fleet_host: FleetHost):
    assert _on(fleet_host)["nginx"] == "active", "nginx (the gateway) is not running"


def test_gateway_answers_404_to_every_route_outside_the_allowlist(fleet_host: FleetHost):
    found = _on(fleet_host)
    open_ = [
        f"{path} on port {port}: {found['routes'].get((port, path), 'no answer')}"
        for port in (server.port for server in fleet_host.config.vllm.servers())
        for path in FORBIDDEN
        if found["routes"].get((port, path)) != "404"
    ]
    assert not open_, f"routes not refused at {found['address']}: " + "; ".join(open_)


def test_gateway_passes_streams_unbuffered(fleet_host: FleetHost):
    """Every /v1/ location keeps proxy_buffering off: buffered, nginx holds streamed tokens
    back until its buffer fills or the generation ends (test_vllm checks a stream arrives)."""
    buffering = _on(fleet_host)["buffering"]
    servers = len(fleet_host.config.vllm.servers())
    assert buffering["on"] == 0 and buffering["off"] >= servers, (
        f"the gateway's config buffers streams: proxy_buffering on in {buffering['on']} "
        f"place(s), off in {buffering['off']} of {servers} /v1/ location(s)"
    )


def _fingerprint(path: str) -> str:
    done = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", path],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip().partition("=")[2]


def test_gateway_presents_the_configured_certificate(fleet_host: FleetHost):
    found = _on(fleet_host)
    cert = fleet_host.config.gateway.tls_cert_file
    if not cert:
        pytest.skip("not applicable: gateway_plain_http (no TLS)")
    want = _fingerprint(cert)
    for server in fleet_host.config.vllm.servers():
        got = found["tls"].get(server.port, "none")
        assert got == want, f"port {server.port} presents {got}, not {cert} ({want})"
