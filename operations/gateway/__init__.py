"""The gateway in front of the vLLM servers: the distribution's nginx on each vLLM host.

vLLM's API key guards ``/v1`` only: every other route of the server (``/tokenize``,
``/pause``, ``/collective_rpc``…) answers anyone who reaches its port, and vLLM's security
notes say to put it behind an allowlisting proxy. With the gateway on (``gateway_mode``: auto
= whenever ``vllm_bind_address`` is not loopback), each server's container is published on
loopback only, at its port + ``gateway_backend_port_offset`` (operations.vllm asks
``GatewayConfig.published``), and nginx listens where the server used to, on
``vllm_bind_address`` and the server's port, with:

- TLS from the operator's certificate and key files on the controller (the key uploaded
  root-only, never shown), or plain HTTP only with ``gateway_plain_http = True``;
- an allowlist: ``/v1/`` and ``/health`` to the servers of the port's model (instances of one
  host serving the same model are load-balanced: one upstream per model), ``/metrics`` of the
  port's own server only from loopback, the inventory's Prometheus hosts and
  ``gateway_metrics_allow``; every other path 404, whatever its encoding (nginx matches the
  normalised path);
- long generations and streams: no proxy buffering, ``gateway_read_timeout_s``,
  ``gateway_max_body_size``.

The config is one file, ``/etc/nginx/conf.d/gpufleet-gateway.conf``. A changed one is staged
beside it and put in place only once ``nginx -t`` accepts the whole nginx config with it, then
nginx reloads (kit/scripts/nginx_apply.sh): a refusal puts the previous file back, fails the
host quoting nginx and leaves nginx serving the old one. With the gateway off, the file is
removed and nginx reloaded; nginx itself and its other sites are left alone.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from io import StringIO
from pathlib import Path
from typing import Any

from pyinfra import state
from pyinfra.api import FileUploadCommand, StringCommand, deploy, operation
from pyinfra.operations import dnf

from operations.config.model import FleetConfig, VllmInstance
from operations.gateway.facts import CONF_PATH
from operations.kit import converged, scripts
from operations.kit.common import url_host
from operations.platform import family_of

CONF = converged.managed(CONF_PATH)
STAGED = f"{CONF}.staged"
PREV = f"{CONF}.prev"
TLS_DIR = converged.managed("/etc/gpufleet/gateway")
CERT = converged.managed(f"{TLS_DIR}/tls.crt")
KEY = converged.managed(f"{TLS_DIR}/tls.key")
UNIT = converged.managed_unit("nginx")
# The one OS difference of this layer: how nginx is installed, per package-manager family.
PACKAGES = {"apt": converged.apt_install, "dnf": dnf.packages}
HEADER = "# Written by gpufleet (operations/gateway): changes here are replaced.\n"


def _upstream_name(model: str) -> str:
    return "gpufleet_" + hashlib.sha256(model.encode()).hexdigest()[:12]


def _backend(config: FleetConfig, server: VllmInstance) -> str:
    address, port = config.gateway.published(config.vllm.bind_address, server.port)
    return f"{url_host(address)}:{port}"


def metrics_sources(config: FleetConfig, fleet: Mapping[str, tuple[Mapping, FleetConfig]]):
    """Who may read /metrics through the gateway: loopback, the inventory's Prometheus hosts
    (their declared address, or an IP ``ssh_hostname``) and gateway_metrics_allow."""
    found = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")]
    for _name, (data, other) in sorted(fleet.items()):
        if not other.monitoring.prometheus:
            continue
        address = other.host.address or data.get("ssh_hostname")
        try:
            found.append(ipaddress.ip_network(str(address)))
        except ValueError:
            continue  # a host name: nginx allows addresses only (gateway_metrics_allow)
    found += config.gateway.metrics_allow
    return list(dict.fromkeys(found))


def _upstreams(config: FleetConfig) -> list[str]:
    models: dict[str, list[str]] = {}
    for server in config.vllm.servers():
        models.setdefault(server.served_name, []).append(_backend(config, server))
    out = []
    for model, backends in models.items():
        out.append(f"upstream {_upstream_name(model)} {{")
        out += [f"    server {backend} max_fails=1 fail_timeout=5s;" for backend in backends]
        out += ["    keepalive 16;", "}"]
    return out


def _server_block(config: FleetConfig, server: VllmInstance, allowed: list) -> list[str]:
    gateway = config.gateway
    tls = bool(gateway.tls_cert_file)
    listen = f"{url_host(config.vllm.bind_address)}:{server.port}" + (" ssl" if tls else "")
    pool = f"http://{_upstream_name(server.served_name)}"
    lines = [
        "server {",
        f"    listen {listen};",
        "    server_tokens off;",
        f"    client_max_body_size {gateway.max_body_size};",
        "    proxy_http_version 1.1;",
        '    proxy_set_header Connection "";',
        "    proxy_set_header Host $host;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        f"    proxy_read_timeout {gateway.read_timeout_s}s;",
        f"    proxy_send_timeout {gateway.read_timeout_s}s;",
    ]
    if tls:
        lines += [f"    ssl_certificate {CERT};", f"    ssl_certificate_key {KEY};",
                  "    ssl_protocols TLSv1.2 TLSv1.3;"]  # fmt: skip
    lines += [
        "    location /v1/ {",
        "        proxy_buffering off;  # streamed tokens reach the client as they come",
        "        proxy_cache off;",
        f"        proxy_pass {pool};",
        "    }",
        f"    location = /health {{ proxy_pass {pool}; }}",
        "    location = /metrics {",
        *(f"        allow {network};" for network in allowed),
        "        deny all;",
        f"        proxy_pass http://{_backend(config, server)};",
        "    }",
        "    location / { return 404; }",
        "}",
    ]
    return lines


def nginx_conf(config: FleetConfig, fleet: Mapping[str, tuple[Mapping, FleetConfig]]) -> str:
    """The gateway's nginx config for this host's servers (see the module doc)."""
    allowed = metrics_sources(config, fleet)
    lines = _upstreams(config)
    for server in config.vllm.servers():
        lines += ["", f"# {server.container}", *_server_block(config, server, allowed)]
    return HEADER + "\n".join(lines) + "\n"


@operation()
def checked_conf(text: str):
    """Stage the config, then put it in place only if nginx -t accepts it (nginx_apply.sh)."""
    yield FileUploadCommand(StringIO(text), STAGED, remote_temp_filename=STAGED)
    yield scripts.render("nginx_apply", MODE="apply", STAGED=STAGED, LIVE=CONF, PREV=PREV)


@operation()
def tls_files(cert: str, key: str):
    """The certificate (0644) and key (0600, root) in a 0700 directory: uploaded as files,
    never printed (files.put's --diff would show the key)."""
    yield StringCommand(f"mkdir -p {TLS_DIR} && chmod 700 {TLS_DIR}")
    for path, text, mode in ((CERT, cert, "644"), (KEY, key, "600")):
        temp = f"{path}.new"
        yield FileUploadCommand(StringIO(text), temp, remote_temp_filename=temp)
        yield StringCommand(
            f"chmod {mode} {temp} && chown root:root {temp} && mv -f {temp} {path} || "
            f"{{ rm -f {temp}; exit 1; }}"
        )


@operation()
def removed():
    """The gateway turned off: its config removed, nginx reloaded (and its new workers
    serving before the vLLM servers take their ports back)."""
    yield scripts.render("nginx_apply", MODE="remove", STAGED=STAGED, LIVE=CONF, PREV=PREV)


def _tls(config: FleetConfig) -> bool:
    """Upload the TLS files when the host's differ; whether they do."""
    gateway = config.gateway
    if not gateway.tls_cert_file:
        return False
    cert = Path(gateway.tls_cert_file).read_text(encoding="utf-8")  # readable: checked at load
    key = Path(gateway.tls_key_file).read_text(encoding="utf-8")
    if converged.holds(CERT, cert) and converged.holds(KEY, key):
        return False
    tls_files(name="Gateway TLS certificate and key", cert=cert, key=key)
    return True


@deploy("Gateway")
def apply(config: FleetConfig, profile: dict[str, Any]) -> None:
    """nginx in front of this host's vLLM servers, or its config removed when off."""
    if not config.gateway.enabled(config.vllm.bind_address):
        found = converged.path_state(CONF)
        if found is not None and found.kind != "absent":  # unknown: left for the next run
            removed(name="Remove the gateway config (gateway off)")
        return
    from operations.run import inventory_fleet

    PACKAGES[family_of(profile)](name="Install nginx", packages=["nginx"])
    new_tls = _tls(config)
    text = nginx_conf(config, inventory_fleet(state))
    if new_tls or not converged.holds(CONF, text):  # new TLS files: checked and reloaded as well
        checked_conf(name="Gateway config (nginx -t checked)", text=text)
    converged.service("nginx running and enabled", UNIT, running=True, enabled=True)
