"""Pieces every layer uses."""

from __future__ import annotations

import ipaddress

from pyinfra.operations import server

from operations.kit.quoting import shell, shell_say


def fail_host(name: str, message: str) -> None:
    """One operation that fails this host at execution with ``message`` on stderr.

    The reasons are known while planning; failing in an operation (not by raising) lets
    ``--dry`` show the failure in the plan and a real run fail only this host.
    """
    server.shell(name=name, commands=[f"{shell_say(shell(message))}; exit 1"])


def url_host(address: object) -> str:
    """A host name or address ready for ``:port``: IPv6 addresses in brackets (once)."""
    text = str(address)
    return f"[{text}]" if ":" in text and not text.startswith("[") else text


def local_url_host(address: object) -> str:
    """Where the host itself reaches a listener bound to ``address``, ready for ``:port``:
    that address, or the loopback address of its family for any-address (0.0.0.0, ::)."""
    found = ipaddress.ip_address(str(address))
    if found.is_unspecified:
        found = ipaddress.ip_address("::1" if found.version == 6 else "127.0.0.1")
    return url_host(found)
