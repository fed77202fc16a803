"""Servers behind a TLS gateway are read over https, verified against the gateway's own
certificate: the file_sd targets say ``__scheme__: https``, the monitoring layer's Prometheus
trusts the fleet's gateway certificates (checked by the real promtool), and a rollout's drain
and readiness probes verify them (against a real TLS server on loopback)."""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from operations.cli.targets import file_sd
from operations.config.model import FleetConfig
from operations.monitoring import server
from operations.rollout.membership import Membership
from operations.rollout.serving import http_probe, load_of, ready_of, trusting
from tests.unit.test_alert_rules import promtool


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, as an operator's gateway might present."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=gateway", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    key.chmod(0o600)
    return cert, key


def host(mode: str, cert: tuple[Path, Path] | None = None, plain: bool = False) -> FleetConfig:
    gateway = {"mode": mode, "plain_http": plain}
    if cert:
        gateway |= {"tls_cert_file": str(cert[0]), "tls_key_file": str(cert[1])}
    return FleetConfig(host={"address": "127.0.0.1"}, gateway=gateway,
                       deploy={"layers": ["vllm", "monitoring"]})  # fmt: skip


def test_only_servers_behind_a_tls_gateway_are_scraped_over_https(cert):
    fleet = {"tls": ({}, host("on", cert)), "plain": ({}, host("on", plain=True)),
             "off": ({}, host("off"))}  # fmt: skip
    schemes = {e["labels"]["gpufleet_host"]: e["labels"].get("__scheme__") for e in file_sd(fleet)}
    assert schemes == {"tls": "https", "plain": None, "off": None}
    assert Membership(fleet).targets(["tls", "plain"]) == {
        "tls": ["https://127.0.0.1:8000"], "plain": ["127.0.0.1:8000"]}  # fmt: skip


def _staged(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path / "prometheus.yml"


def test_prometheus_trusts_the_gateway_certificates_and_promtool_accepts_it(cert, tmp_path):
    monitor = FleetConfig(monitoring={"prometheus": True})
    fleet = {"a": ({}, host("on", cert)), "b": ({}, host("on", cert)), "c": ({}, host("off"))}
    files = server.config_files(monitor, fleet)
    assert files[server.CA_BUNDLE] == cert[0].read_text()  # one certificate, once
    jobs = {j["job_name"]: j for j in json.loads(files["prometheus.yml"].split("\n", 1)[1])[
        "scrape_configs"]}  # fmt: skip
    assert jobs["vllm"]["tls_config"] == {"ca_file": server.CA_BUNDLE}
    assert "tls_config" not in jobs["node"] and "tls_config" not in jobs["dcgm"]
    done = promtool("check", "config", str(_staged(tmp_path, files)), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_without_a_tls_gateway_the_bundle_is_empty_and_unreferenced(tmp_path):
    monitor = FleetConfig(monitoring={"prometheus": True})
    files = server.config_files(monitor, {"a": ({}, host("on", plain=True))})
    assert files[server.CA_BUNDLE] == "" and "tls_config" not in files["prometheus.yml"]
    done = promtool("check", "config", str(_staged(tmp_path, files)), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


class _Vllm(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = b"vllm:num_requests_running 2.0\n" if self.path == "/metrics" else b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def https_server(cert):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Vllm)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert[0]), str(cert[1]))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_the_rollout_reads_a_tls_gateway_verifying_its_certificate(cert, https_server):
    probe = trusting([str(cert[0])])
    assert load_of(https_server, probe).why == "2 running"
    assert ready_of(https_server, probe) == ""
    status, why = http_probe(f"{https_server}/health")  # the system's CAs alone
    assert status == 0 and "CERTIFICATE_VERIFY_FAILED" in why
    assert trusting([]) is http_probe
