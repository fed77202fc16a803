"""Pieces every layer uses."""

from __future__ import annotations

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
