"""The vLLM servers of the hosts a rollout drains: how loaded they are and whether they serve.

Read from the controller at each server's target address (the file_sd entry's
``host:port``), as Prometheus scrapes it: ``/metrics`` for ``vllm:num_requests_running`` and
``vllm:num_requests_waiting`` (a queued request is in flight too), ``/health`` for readiness.
A server that refuses the connection serves nothing, so it has nothing to drain; one that
answers ``/metrics`` with an error, or not at all within the timeout, is not known to be idle.
"""

from __future__ import annotations

import functools
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Probe = Callable[[str], tuple[int, str]]
"""GET a URL: (HTTP status, body), or (0, the error) when nothing answered."""

Say = Callable[[str], None]

_SAMPLE = re.compile(r"^(vllm:num_requests_(?:running|waiting))(?:\{[^}]*\})?\s+(\S+)")
POLL_S = 0.5


def http_probe(
    url: str, timeout: float = 2.0, context: ssl.SSLContext | None = None
) -> tuple[int, str]:
    """GET ``url``: (status, body); (0, why) when the connection failed or timed out.
    ``context``: what an https URL is verified with (the gateways' certificates)."""
    try:
        opened = urllib.request.urlopen(url, timeout=timeout, context=context)  # noqa: S310
        with opened as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except (OSError, ValueError) as error:
        return 0, str(getattr(error, "reason", error))


def trusting(cert_files: Sequence[str]) -> Probe:
    """http_probe verifying https servers against these certificates (a TLS gateway's own,
    self-signed or not) as well as the system's CAs; plain http_probe when there are none."""
    if not cert_files:
        return http_probe
    context = ssl.create_default_context()
    for path in cert_files:
        context.load_verify_locations(cafile=path)
    return functools.partial(http_probe, context=context)


def server_url(target: str, path: str) -> str:
    """The URL of ``path`` on a server: ``target`` is host:port (plain HTTP) or
    https://host:port (behind a TLS gateway), as Membership.targets gives it."""
    return f"{target if '://' in target else 'http://' + target}/{path}"


def requests_in_flight(metrics: str) -> tuple[int, int] | None:
    """(running, waiting) summed over a /metrics text's samples (one per engine and model);
    None when the text has neither gauge (not a vLLM server's metrics)."""
    found: dict[str, float] = {}
    for line in metrics.splitlines():
        match = _SAMPLE.match(line)
        if match:
            found[match[1]] = found.get(match[1], 0.0) + float(match[2])
    if not found:
        return None
    return (
        int(found.get("vllm:num_requests_running", 0)),
        int(found.get("vllm:num_requests_waiting", 0)),
    )


@dataclass(frozen=True)
class Load:
    """One server's requests in flight (``busy`` 0: idle), or why it is not known."""

    busy: int
    why: str = ""  # e.g. "3 running", "metrics: HTTP 404"


def load_of(target: str, probe: Probe) -> Load:
    """How many requests the server at ``target`` (host:port, or https://host:port) still runs
    or queues."""
    status, body = probe(server_url(target, "metrics"))
    if status == 0 and "refused" in body.lower():
        return Load(0)  # nothing listens: nothing to drain
    if status == 403:  # the gateway's allowlist (operations/gateway)
        return Load(1, "metrics: HTTP 403 (the gateway answers /metrics only to the monitoring "
                    "hosts and gateway_metrics_allow: add this controller's address)")  # fmt: skip
    if status != 200:
        return Load(1, f"metrics: {'HTTP ' + str(status) if status else body}")
    counts = requests_in_flight(body)
    if counts is None:
        return Load(1, "metrics: no vllm:num_requests_running")
    running, waiting = counts
    parts = [f"{running} running"] + ([f"{waiting} waiting"] if waiting else [])
    return Load(running + waiting, ", ".join(parts))


def ready_of(target: str, probe: Probe) -> str:
    """'' when the server at ``target`` answers /health 200, else why not."""
    status, body = probe(server_url(target, "health"))
    if status == 200:
        return ""
    return f"HTTP {status}" if status else body or "no answer"


def _wait(
    hosts: Mapping[str, Sequence[str]],
    check: Callable[[str], str],
    timeout: float,
    label: str,
    say: Say,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Poll ``check`` (target -> '' when done, else why) on every host's targets until all
    are done or ``timeout`` passes; say progress when it changes. {host: why} left over."""
    deadline = clock() + timeout
    shown = None
    while True:
        pending = {}
        for host, targets in hosts.items():
            whys = [why for why in (check(t) for t in targets) if why]
            if whys:
                pending[host] = "; ".join(whys)
        done = len(hosts) - len(pending)
        line = f"{label} {done}/{len(hosts)}"
        if pending:
            line += ", waiting on " + ", ".join(f"{h} ({why})" for h, why in pending.items())
        if line != shown:
            say(line)
            shown = line
        if not pending or clock() >= deadline:
            return pending
        sleep(POLL_S)


def wait_drained(
    hosts: Mapping[str, Sequence[str]], timeout: float, say: Say, probe: Probe = http_probe,
    **clock,
) -> dict[str, str]:  # fmt: skip
    """Wait until no server of ``hosts`` ({host: targets}) runs or queues a request;
    {host: what is still in flight} of those still busy at ``timeout``."""

    def check(target: str) -> str:
        load = load_of(target, probe)
        return f"draining: {load.why}" if load.busy else ""

    return _wait(hosts, check, timeout, "drained", say, **clock)


def wait_ready(
    hosts: Mapping[str, Sequence[str]], timeout: float, say: Say, probe: Probe = http_probe,
    **clock,
) -> dict[str, str]:  # fmt: skip
    """Wait until every server of ``hosts`` answers /health 200; {host: why not} at
    ``timeout`` of those that do not."""

    def check(target: str) -> str:
        why = ready_of(target, probe)
        return f"not ready: {why}" if why else ""

    return _wait(hosts, check, timeout, "ready", say, **clock)
