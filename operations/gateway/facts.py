"""The gateway's fact, for the verify checks: what a client outside the host gets from it."""

from __future__ import annotations

from typing import Any

from pyinfra.api import FactBase

from operations.kit import scripts

# Routes vLLM serves without the API key that the gateway must not pass: the tokenizer, the
# engine's pause/sleep and debugging routes, and the same reached by path tricks.
FORBIDDEN = ("/tokenize", "/detokenize", "/pause", "/sleep", "/collective_rpc", "/version",
             "/v1/../tokenize", "/v1/%2e%2e/tokenize", "//tokenize")  # fmt: skip
CONF_PATH = "/etc/nginx/conf.d/gpufleet-gateway.conf"  # the gateway's nginx config


def parse_probe(lines: list[str]) -> dict[str, Any]:
    """{"nginx": state, "address", "routes": {(port, path): HTTP status}, "tls": {port:
    SHA-256 fingerprint, "none" when no certificate came}, "buffering": {"off": n, "on": n}
    (proxy_buffering lines of the gateway's config)}."""
    found: dict[str, Any] = {"nginx": "", "address": "", "routes": {}, "tls": {},
                             "buffering": {"off": 0, "on": 0}}  # fmt: skip
    for line in lines:
        key, _, value = line.partition("=")
        if key == "route" and len(value.split(" ")) == 3:
            port, path, code = value.split(" ")
            found["routes"][(int(port), path)] = code
        elif key == "tls" and " " in value:
            port, fingerprint = value.split(" ", 1)
            found["tls"][int(port)] = fingerprint
        elif key == "buffering" and value.count(" ") == 1:
            off, on = value.split(" ")
            found["buffering"] = {"off": int(off or 0), "on": int(on or 0)}
        elif key in ("nginx", "address"):
            found[key] = value
    return found


class GatewayProbe(FactBase):
    """The gateway from outside (gateway_probe.sh): ``ports`` of the servers, ``address``
    the host's own (empty: its first), ``scheme`` http or https."""

    def command(self, ports: tuple[int, ...], address: str, scheme: str) -> str:
        return scripts.render(
            "gateway_probe",
            ADDRESS=address, SCHEME=scheme, CONF=CONF_PATH,
            raw_values={"PORTS": " ".join(str(int(p)) for p in ports),
                        "PATHS": " ".join(FORBIDDEN)},
        )  # fmt: skip

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_probe(output)

    @staticmethod
    def default() -> dict[str, Any]:
        return parse_probe([])
