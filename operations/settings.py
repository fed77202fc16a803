"""From pyinfra host data to a validated FleetConfig, with errors an operator can act on.

Every problem names the host, the data key, the value and what is allowed. Secrets are never
echoed: a value whose key looks like a credential is shown as ``'***'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pyinfra.api.connectors import get_all_connectors
from pyinfra.api.exceptions import PyinfraError

from operations.config import _SECRET_WORDS, PATTERN_HINTS, SECTIONS, SETTINGS, FleetConfig
from operations.secrets import SecretError, vllm_secrets


@dataclass(frozen=True)
class Problem:
    """One bad setting of one host."""

    host: str
    key: str
    value: Any
    allowed: str
    source: str | None = None  # the file (or --data) the value came from, where known

    def __str__(self) -> str:
        shown = "'***'" if _SECRET_WORDS.search(self.key) else repr(self.value)
        where = f" (from {self.source})" if self.source else ""
        return f"{self.host}: {self.key} = {shown}: {self.allowed}{where}"


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


def _unknown_key(host: str, key: str, value: Any) -> Problem:
    close = difflib.get_close_matches(key, [*SETTINGS, *pyinfra_keys()], n=1, cutoff=0.75)
    allowed = (
        f"unknown setting; did you mean '{close[0]}'?"
        if close
        else ("unknown setting; see the config reference in README.md (own data: prefix it with _)")
    )
    return Problem(host, key, value, allowed)


def _allowed(error: dict) -> str:
    """What the value may be, in words, from a pydantic error."""
    if error["type"] == "string_pattern_mismatch":
        pattern = error["ctx"]["pattern"]
        return f"must be {PATTERN_HINTS.get(pattern, f'a string matching {pattern}')}"
    return error["msg"].removeprefix("Value error, ")


def _key_and_value(error: dict, data: Mapping[str, Any]) -> tuple[str, Any]:
    """The data key an error is about (``vllm_port``, ``vllm_instances[1].gpus``) and the
    value given there."""
    section, field, *rest = error["loc"]
    key, value = f"{section}_{field}", data.get(f"{section}_{field}")
    for part in rest:
        if isinstance(part, int):
            key += f"[{part}]"
            if isinstance(value, list) and part < len(value):
                value = value[part]  # else: given as "a,b" text, shown whole
        elif isinstance(part, str) and not part.startswith(("function-", "literal[")):
            key += f".{part}"
            value = value.get(part) if isinstance(value, Mapping) else value
    return key, value


def _problems_from_errors(host: str, errors: list[dict], data: Mapping[str, Any]) -> list[Problem]:
    """One problem per bad key; a union's several complaints are joined with 'or'."""
    by_key: dict[str, tuple[Any, list[str]]] = {}
    for error in errors:
        key, value = _key_and_value(error, data)
        allowed = _allowed(error)
        messages = by_key.setdefault(key, (value, []))[1]
        if allowed not in messages:
            messages.append(allowed)
    return [
        Problem(host, key, value, " or ".join(messages))
        for key, (value, messages) in by_key.items()
    ]


# pyinfra's SSH data that pyinfra itself does not check before connecting: a missing key file
# ends in a traceback in its connector, and port 70000 silently becomes port 4464.
_SSH_STRICT = ("yes", "no", "accept-new", "off", "ask")
_SSH_CHECKS: dict[str, tuple[Any, str]] = {
    "ssh_port": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536,
        "must be a port number from 1 to 65535",
    ),
    "ssh_hostname": (
        lambda v: isinstance(v, str) and v.strip() == v and v != "" and " " not in v,
        "must be a host name or address (no spaces)",
    ),
    "ssh_user": (
        lambda v: isinstance(v, str) and v != "" and not any(c.isspace() for c in v),
        "must be a user name (no spaces)",
    ),
    "ssh_key": (
        lambda v: isinstance(v, str) and Path(v).expanduser().is_file(),
        "must be a private key file that exists on the controller",
    ),
    "ssh_known_hosts_file": (
        lambda v: isinstance(v, str) and Path(v).expanduser().is_file(),
        "must be a known_hosts file that exists on the controller",
    ),
    "ssh_strict_host_key_checking": (
        lambda v: v in _SSH_STRICT,
        f"must be one of {', '.join(_SSH_STRICT)}",
    ),
}


def ssh_problems(host: str, data: Mapping[str, Any]) -> list[Problem]:
    """Broken SSH data of one host (only the keys it sets)."""
    return [
        Problem(host, key, data[key], allowed)
        for key, (ok, allowed) in _SSH_CHECKS.items()
        if key in data and data[key] is not None and not ok(data[key])
    ]


def checked_hosts(hosts: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """An inventory group, returned as given once its SSH data is sound; else ConfigError.

    Call it in inventory files (``gpu_servers = checked_hosts([...])``): pyinfra reads the
    inventory before it connects, so broken SSH data stops the run before any host is reached.
    """
    problems = [problem for name, data in hosts for problem in ssh_problems(name, data)]
    if problems:
        raise ConfigError(problems)
    return hosts


def _controller_problems(host: str, config: FleetConfig) -> list[Problem]:
    """What the vLLM layer reads on the controller (secrets, an image archive) must be there."""
    if "vllm" not in config.deploy.layers:
        return []
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
            problems.append(_unknown_key(host, key, value))
    try:
        config = FleetConfig.model_validate(nested)
    except ValidationError as error:
        problems += _problems_from_errors(host, error.errors(), data)
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
    configs, problems = {}, []
    for name, data in hosts:
        config, host_problems = load_config(name, data)
        where = (sources or {}).get(name, {})
        problems += [_with_source(problem, where) for problem in host_problems]
        configs[name] = config
    if problems:
        raise ConfigError(problems)
    return configs
