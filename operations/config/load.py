"""From pyinfra host data to a validated FleetConfig, with errors an operator can act on.

Every problem names the host, the data key, the value and what is allowed. Secrets are never
echoed: whatever in a value looks like a credential (operations.config.secrets.looks_secret: hf_…,
sk-…, long random tokens, a URL's password) is shown as ``***``, and so is any string under a
key named like a credential that is not one of our settings (``vllm_api_kye``).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pyinfra.api.connectors import get_all_connectors
from pyinfra.api.exceptions import PyinfraError

from operations.config.model import (
    PATTERN_HINTS,
    SECTIONS,
    SETTINGS,
    FleetConfig,
    hidden_character,
    is_host_name,
    is_ip_address,
)
from operations.config.secrets import SecretError, mask, secret_named, shared_mode, vllm_secrets


@dataclass(frozen=True)
class Problem:
    """One bad setting of one host."""

    host: str
    key: str
    value: Any
    allowed: str
    source: str | None = None  # the file (or --data) the value came from, where known

    def __str__(self) -> str:
        # any part of the key's path may name a secret (data.ssh_password, proxy.password)
        parts = [part for part in re.split(r"[\[\].]", self.key) if part]
        secret = any(secret_named(part) and part not in SETTINGS for part in parts)
        shown = repr(mask(self.value, secret))
        where = f" (from {self.source})" if self.source else ""
        host = repr(self.host) if _unprintable(self.host) else self.host
        return f"{host}: {self.key} = {shown}: {self.allowed}{where}"


def _unprintable(text: str) -> bool:
    """Text that would not read as itself on one line (a host name with a newline)."""
    return not isinstance(text, str) or hidden_character(text) is not None


class ConfigError(PyinfraError):
    """Raised before any host is touched when any targeted host has a bad setting."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid configuration, nothing was changed:\n{lines}")


@cache
def pyinfra_keys() -> frozenset[str]:
    """Data keys pyinfra's connectors read (ssh_*, docker_*, …): allowed beside our settings."""
    keys: set[str] = set()
    for connector in get_all_connectors().values():
        keys |= set(getattr(connector, "data_meta", {}))
        keys |= set(getattr(getattr(connector, "data_cls", None), "__annotations__", {}))
    return frozenset(keys)


def unknown_key(host: str, key: str, value: Any) -> Problem:
    """The problem of a setting no layer knows, naming the closest known one where there is."""
    close = difflib.get_close_matches(key, [*SETTINGS, *pyinfra_keys()], n=1, cutoff=0.75)
    allowed = (
        f"unknown setting; did you mean '{close[0]}'?"
        if close
        else ("unknown setting; see the config reference in README.md (own data: prefix it with _)")
    )
    return Problem(host, key, value, allowed)


def _allowed(error: dict, key: str) -> str:
    """What the value may be, in words, from a pydantic error about ``key``."""
    if error["type"] == "string_pattern_mismatch":
        pattern = error["ctx"]["pattern"]
        return f"must be {PATTERN_HINTS.get(pattern, f'a string matching {pattern}')}"
    return error["msg"].removeprefix("Value error, ").replace("<key>", key)


_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _key_and_value(error: dict, data: Mapping[str, Any]) -> tuple[str, Any]:
    """The data key an error is about (``vllm_port``, ``vllm_instances[1].gpus``) and the
    value given there. pydantic's own steps in the location (``list[constrained-int]``,
    ``function-after[…]``, a union member's name) are not part of the key."""
    section, field, *rest = error["loc"]
    key, value = f"{section}_{field}", data.get(f"{section}_{field}")
    for part in rest:
        if isinstance(part, int):
            key += f"[{part}]"
            if isinstance(value, list) and part < len(value):
                value = value[part]  # else: given as "a,b" text, shown whole
        elif isinstance(value, Mapping) and (part in value or _FIELD.fullmatch(part)):
            key += f".{part}"
            value = value.get(part)
    return key, value


def problems_from_errors(host: str, errors: list[dict], data: Mapping[str, Any]) -> list[Problem]:
    """One problem per bad key; a union's several complaints are joined with 'or'."""
    by_key: dict[str, tuple[Any, list[str]]] = {}
    for error in errors:
        key, value = _key_and_value(error, data)
        allowed = _allowed(error, key)
        messages = by_key.setdefault(key, (value, []))[1]
        if allowed not in messages:
            messages.append(allowed)
    return [
        Problem(host, key, value, " or ".join(messages))
        for key, (value, messages) in by_key.items()
    ]


# pyinfra's SSH data that pyinfra itself does not check before connecting: a missing key file
# ends in a traceback in its connector, port 70000 silently becomes port 4464, and a newline
# in ssh_hostname added a line (a ProxyCommand) to the ssh_config the verify suite writes.
_SSH_STRICT = ("yes", "no", "accept-new", "off", "ask")
_SSH_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}")


def _port_problem(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
    return None if ok else "must be a port number from 1 to 65535"


def _hostname_problem(value: Any) -> str | None:
    if is_host_name(value) or is_ip_address(value):
        return None
    return (
        "must be a host name or IP address (letters, digits, '-' and '.', or IPv4/IPv6; "
        "no spaces, quotes, '%', leading '-' or control characters)"
    )


def _user_problem(value: Any) -> str | None:
    if isinstance(value, str) and _SSH_USER.fullmatch(value):
        return None
    return "must be a user name (letters, digits, . _ - @; no spaces, not starting with '-')"


def _key_problem(value: Any) -> str | None:
    if not (isinstance(value, str) and Path(value).expanduser().is_file()):
        return "must be a private key file that exists on the controller"
    mode = shared_mode(value)
    if mode:
        return (
            f"must be readable by its owner only (mode {mode}; OpenSSH refuses it too): "
            f"chmod 600 {value}"
        )
    return None


def _known_hosts_problem(value: Any) -> str | None:
    if isinstance(value, str) and Path(value).expanduser().is_file():
        return None
    return "must be a known_hosts file that exists on the controller"


def _strict_problem(value: Any) -> str | None:
    return None if value in _SSH_STRICT else f"must be one of {', '.join(_SSH_STRICT)}"


_SSH_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "ssh_port": _port_problem,
    "ssh_hostname": _hostname_problem,
    "ssh_user": _user_problem,
    "ssh_key": _key_problem,
    "ssh_known_hosts_file": _known_hosts_problem,
    "ssh_strict_host_key_checking": _strict_problem,
}


def ssh_problems(host: str, data: Mapping[str, Any]) -> list[Problem]:
    """Broken SSH data of one host (only the keys it sets); any connector's text data with a
    control character too (it would reach an ssh_config line or a command line)."""
    problems = []
    for key, value in data.items():
        if key not in pyinfra_keys() or value is None:
            continue
        hidden = hidden_character(value) if isinstance(value, str) else None
        found = (
            f"must not contain control or invisible characters (found {hidden})"
            if hidden
            else _SSH_CHECKS.get(key, lambda _value: None)(value)
        )
        if found:
            problems.append(Problem(host, key, value, found))
    return problems


def _address(name: str, data: Mapping[str, Any]) -> tuple[str, Any] | None:
    """(address, port) pyinfra's SSH connector reaches a host at; None for other connectors
    (``@local``, ``@docker/…``) and for an address that is not a text."""
    address = data.get("ssh_hostname") or (None if name.startswith("@") else name)
    if not isinstance(address, str):
        return None
    address = address.lower().rstrip(".")
    if is_ip_address(address):
        address = str(ipaddress.ip_address(address))
    return address, data.get("ssh_port") or 22


def _same_machine(hosts: Iterable[tuple[str, Mapping[str, Any]]]) -> list[Problem]:
    """A problem per host whose SSH address and port an earlier host already has: two names
    for one machine deploy to it twice, with one of the two configurations winning."""
    first: dict[tuple[str, Any], str] = {}
    problems = []
    for name, data in hosts:
        address = _address(name, data)
        if address is None:
            continue
        if address in first and first[address] != name:
            key = "ssh_hostname" if data.get("ssh_hostname") else "name"
            problems.append(
                Problem(
                    name,
                    key,
                    data.get("ssh_hostname") or name,
                    f"is also the address of host {first[address]} (port {address[1]}): "
                    "list each machine once",
                )
            )
        first.setdefault(address, name)
    return problems


def _listed_twice(hosts: list[tuple[str, Any]]) -> list[Problem]:
    """Hosts named twice in one group: pyinfra would keep the second entry's data only."""
    names = [entry[0] if isinstance(entry, tuple) else entry for entry in hosts]
    return [
        Problem(
            name,
            "name",
            name,
            "is listed twice in this group (the second entry would silently replace the first)",
        )
        for index, name in enumerate(names)
        if name in names[:index]
    ]


def _name_problem(name: Any) -> Problem | None:
    """A host without ssh_hostname is reached at its name: it must be one (or a connector's
    ``@local``, ``@docker/…``)."""
    if isinstance(name, str) and (name.startswith("@") or _hostname_problem(name) is None):
        return None
    return Problem(
        str(name),
        "name",
        name,
        "must be a host name or IP address, as no ssh_hostname is set "
        "(letters, digits, '-' and '.', or IPv4/IPv6)",
    )


def checked_hosts(hosts: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """An inventory group, returned as given once its SSH data is sound; else ConfigError.

    Call it in inventory files (``gpu_servers = checked_hosts([...])``): pyinfra reads the
    inventory before it connects, so broken SSH data, a host listed twice and two hosts with
    one address stop the run before any host is reached."""
    entries = [(entry, {}) if isinstance(entry, str) else entry for entry in hosts]
    problems = [problem for name, data in entries for problem in ssh_problems(name, data)]
    problems += [_name_problem(name) for name, data in entries if not data.get("ssh_hostname")]
    problems += _listed_twice(entries)
    problems += _same_machine(entries)
    problems = [problem for problem in problems if problem is not None]
    if problems:
        raise ConfigError(problems)
    return hosts


def _tls_problems(host: str, config: FleetConfig) -> list[Problem]:
    """The gateway's TLS files must be readable files on the controller; the key its owner's
    only, as the secrets files (it is uploaded root-only and never shown)."""
    gateway = config.gateway
    if not gateway.enabled(config.vllm.bind_address):
        return []
    found = []
    for key, path in (("gateway_tls_cert_file", gateway.tls_cert_file),
                      ("gateway_tls_key_file", gateway.tls_key_file)):  # fmt: skip
        if path and not os.access(path, os.R_OK):
            found.append(
                Problem(host, key, path, "no readable file at this path on the controller")
            )
        elif path and key == "gateway_tls_key_file" and shared_mode(path):
            found.append(Problem(host, key, path, f"must be readable by its owner only "
                                 f"(mode {shared_mode(path)}): chmod 600 {path}"))  # fmt: skip
    return found


def _controller_problems(host: str, config: FleetConfig) -> list[Problem]:
    """What the vLLM layer reads on the controller (secrets, an image archive, the gateway's
    TLS files) must be there."""
    if "vllm" not in config.deploy.layers:
        return []
    tls = _tls_problems(host, config)
    if tls:
        return tls
    archive = config.vllm.image_archive
    if archive and not Path(archive).is_file():
        return [Problem(host, "vllm_image_archive", archive, "no such file on the controller")]
    try:
        vllm_secrets(config.vllm)
    except SecretError as error:
        return [Problem(host, error.key, error.value, error.allowed)]
    return []


def load_config(host: str, data: Mapping[str, Any]) -> tuple[FleetConfig | None, list[Problem]]:
    """Validate one host's effective data; returns the config, or None and its problems."""
    nested: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    problems = []
    for key, value in data.items():
        if key in SETTINGS:
            section, field = SETTINGS[key]
            nested[section][field] = value
        elif not key.startswith("_") and key not in pyinfra_keys():
            problems.append(unknown_key(host, key, value))
    try:
        config = FleetConfig.model_validate(nested)
    except ValidationError as error:
        problems += problems_from_errors(host, error.errors(), data)
        config = None
    problems += ssh_problems(host, data)
    if config is not None:
        problems += [Problem(host, *conflict) for conflict in config.conflicts()]
        problems += _controller_problems(host, config)
    return (None if problems else config), problems


def _with_source(problem: Problem, sources: Mapping[str, str]) -> Problem:
    """The problem, naming the file its top-level data key came from (when known)."""
    if problem.source is not None:
        return problem
    key = re.split(r"[\[.]", problem.key, maxsplit=1)[0]
    return dataclasses.replace(problem, source=sources.get(key))


def load_fleet(
    hosts: Iterable[tuple[str, Mapping[str, Any]]],
    sources: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, FleetConfig]:
    """Validate every host; raise one ConfigError listing all problems of all hosts.

    ``sources`` ({host: {data key: file or '--data'}}) names where each value came from."""
    configs, problems, hosts = {}, [], list(hosts)
    for name, data in hosts:
        config, host_problems = load_config(name, data)
        where = (sources or {}).get(name, {})
        problems += [_with_source(problem, where) for problem in host_problems]
        configs[name] = config
    problems += [
        _with_source(problem, (sources or {}).get(problem.host, {}))
        for problem in _same_machine(hosts)
    ]
    if problems:
        raise ConfigError(problems)
    return configs
