"""pyinfra groups with host data from Terraform's ``terraform output -json`` document.

The convention (docs/terraform-inventory.md): one output, ``gpufleet_hosts`` unless
``GPUFLEET_TERRAFORM_KEY`` names another, whose value is a list of hosts. A host is a string
(its address, which is also its name, as in pyinfra's ``@terraform`` connector) or an object::

    {"name": "gpu-01", "ssh_hostname": "10.0.1.5", "ssh_user": "ubuntu", "ssh_port": 22,
     "instance_type": "p5.48xlarge", "groups": ["gpu_servers"], "data": {"driver_branch": "570"}}

Only ``name`` or ``ssh_hostname`` is required; ``groups`` defaults to ``["gpu_servers"]``;
``data`` holds the project's settings, pyinfra's connector keys and own ``_``-prefixed keys.
A known ``instance_type`` sets ``host_gpu_count`` and ``host_has_gpus`` (instance_types.py)
unless ``data`` sets them. A ``null`` anywhere a value may be means "not set".

The document is untrusted text: every name, address, group, key and value is checked, and
any problem stops the inventory (one ConfigError listing them all, naming the host, the field,
the value, what is allowed and the document) before pyinfra reaches any host. The values of a
sensitive output are never shown, nor is anything of the document outside the chosen output.
"""

from __future__ import annotations

import json
import keyword
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from operations.config.load import (
    ConfigError,
    Problem,
    checked_hosts,
    problems_from_errors,
    pyinfra_keys,
    unknown_key,
)
from operations.config.model import (
    SECTIONS,
    SETTINGS,
    FleetConfig,
    hidden_character,
    is_host_name,
    is_ip_address,
)
from operations.config.secrets import mask, secret_named
from operations.inventory_sources.instance_types import gpu_data

OUTPUT_FILE_ENV = "GPUFLEET_TERRAFORM_OUTPUT"  # a file holding `terraform output -json`
DIR_ENV = "GPUFLEET_TERRAFORM_DIR"  # a Terraform directory: `terraform output -json` is run there
KEY_ENV = "GPUFLEET_TERRAFORM_KEY"  # the output listing the hosts
DEFAULT_KEY = "gpufleet_hosts"
DEFAULT_GROUP = "gpu_servers"
TIMEOUT_S = 120  # for `terraform output -json`: it reads state, which may be remote
MAX_BYTES = 32 * 1024 * 1024
HIDDEN = "(sensitive output: not shown)"
_WHERE = "terraform"  # the "host" of a problem with the document, not with one host

_HOST_FIELDS = ("name", "ssh_hostname", "ssh_user", "ssh_port", "instance_type", "groups", "data")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}")  # Terraform's identifiers
# pyinfra connection keys a Terraform output may set; the others (ssh_config_file,
# ssh_paramiko_connect_kwargs, ssh_forward_agent, ssh_strict_host_key_checking, docker_…)
# can run commands on the controller or weaken host-key checks: group_data sets them.
SSH_FROM_TERRAFORM = ("ssh_hostname", "ssh_port", "ssh_user", "ssh_key", "ssh_known_hosts_file")
_GROUP = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_INSTANCE_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_GROUP_RULE = (
    "must be a group name: a letter, then letters, digits or '_' (a Python identifier, as "
    "pyinfra's groups are; at most 64), not a Python keyword and not 'all'"
)

Runner = Callable[[list[str], Path, float], subprocess.CompletedProcess]

# the one command run: every output as JSON, its errors without colour codes
TERRAFORM_ARGS = ("output", "-no-color", "-json")


@dataclass(frozen=True)
class Document:
    """A parsed ``terraform output -json`` document and where it came from, in words."""

    outputs: Any
    source: str


def _refuse(key: str, value: Any, allowed: str, source: str | None = None) -> ConfigError:
    return ConfigError([Problem(_WHERE, key, value, allowed, source)])


# --- reading the document ----------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (json would keep the last one silently)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def parse(text: str, source: str, key: str = OUTPUT_FILE_ENV) -> Document:
    """The document in ``text``; ConfigError when it is not JSON (never showing the text)."""
    try:
        return Document(json.loads(text, object_pairs_hook=_unique_keys), source)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}: {error.msg}"
        allowed = f"is not JSON ({where}); save `terraform output -json`"
        raise _refuse(key, source, allowed) from None
    except ValueError as error:
        raise _refuse(key, source, f"is not a valid document: {error}") from None
    except RecursionError:
        raise _refuse(key, source, "is nested too deeply to be an output document") from None


def read_file(path: str) -> Document:
    """The document saved in ``path`` (``terraform output -json > path``)."""
    file = Path(path).expanduser()
    try:
        if file.stat().st_size > MAX_BYTES:
            raise _refuse(OUTPUT_FILE_ENV, path, f"is larger than {MAX_BYTES} bytes")
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(OUTPUT_FILE_ENV, path, "is not UTF-8 text (JSON from terraform)") from None
    except OSError as error:
        raise _refuse(OUTPUT_FILE_ENV, path, f"cannot be read ({error.strerror})") from None
    return parse(text, f"file {path}")


def _last_line(text: bytes) -> str:
    """terraform's last stderr line, masked, printable and short (it may quote the state)."""
    lines = [line.strip() for line in text.decode("utf-8", "replace").splitlines() if line.strip()]
    line = mask(lines[-1] if lines else "no message")
    shown = "".join(char if hidden_character(char) is None else "?" for char in line)
    return shown[:200]


def run_bounded(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """``argv`` run without a shell in its own process group, its output captured; the whole
    group is killed at ``timeout`` (a child holding the pipes cannot outlive it)."""
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
    with subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def run_terraform(directory: str, run: Runner = run_bounded, timeout: float = TIMEOUT_S):
    """The document ``terraform output -json`` prints in ``directory`` (an argv, no shell,
    bounded by ``timeout``); ConfigError when terraform is missing, fails or hangs."""
    if not Path(directory).expanduser().is_dir():
        raise _refuse(DIR_ENV, directory, "no such directory on the controller")
    terraform = shutil.which("terraform")
    if terraform is None:
        raise _refuse(DIR_ENV, directory, "terraform is not on PATH: install it, or save "
                      f"`terraform output -json` to a file and set {OUTPUT_FILE_ENV}")  # fmt: skip
    try:
        done = run([terraform, *TERRAFORM_ARGS], Path(directory).expanduser(), timeout)
    except subprocess.TimeoutExpired:
        raise _refuse(DIR_ENV, directory, f"`terraform output -json` did not finish in "
                      f"{timeout:g} s") from None  # fmt: skip
    except OSError as error:
        raise _refuse(DIR_ENV, directory, f"terraform could not run ({error.strerror})") from None
    if done.returncode != 0:
        raise _refuse(DIR_ENV, directory, f"`terraform output -json` exited "
                      f"{done.returncode}: {_last_line(done.stderr)}")  # fmt: skip
    return parse(done.stdout.decode("utf-8", "replace"), f"`terraform output -json` in "
                 f"{directory}", DIR_ENV)  # fmt: skip


def read_document(env: Mapping[str, str] | None = None, run: Runner = run_bounded) -> Document:
    """The document named by the environment: a file, or a directory to run terraform in."""
    env = os.environ if env is None else env
    path, directory = env.get(OUTPUT_FILE_ENV), env.get(DIR_ENV)
    if path and directory:
        raise _refuse(DIR_ENV, directory, f"set only one of {OUTPUT_FILE_ENV} and {DIR_ENV}")
    if path:
        return read_file(path)
    if directory:
        return run_terraform(directory, run)
    raise _refuse(OUTPUT_FILE_ENV, None, f"is not set: set it to a file holding `terraform "
                  f"output -json`, or set {DIR_ENV} to a Terraform directory")  # fmt: skip


# --- the chosen output --------------------------------------------------------------------


def output_value(document: Document, key: str) -> tuple[list, bool]:
    """The hosts list of output ``key`` and whether the output is sensitive."""
    outputs, source = document.outputs, document.source
    if not isinstance(outputs, dict):
        raise _refuse(key, type(outputs).__name__, "the document must be a JSON object of "
                      "outputs, as `terraform output -json` prints", source)  # fmt: skip
    if key not in outputs:
        names = ", ".join(repr(name) for name in sorted(outputs)[:20]) or "none"
        raise _refuse(key, None, f"no such output (outputs: {names})", source)
    output = outputs[key]
    if not isinstance(output, dict) or "value" not in output:
        allowed = ("must be an output object with a 'value' (and 'sensitive', 'type'), as "
                   "`terraform output -json` prints")  # fmt: skip
        raise _refuse(key, type(output).__name__, allowed, source)
    sensitive = output.get("sensitive", False)
    if not isinstance(sensitive, bool):
        raise _refuse(f"{key}.sensitive", sensitive, "must be true or false", source)
    value = output["value"]
    if not isinstance(value, list) or not value:
        shown = HIDDEN if sensitive else type(value).__name__
        raise _refuse(f"{key}.value", shown, "must be a non-empty list of hosts (address "
                      "strings or objects with name or ssh_hostname)", source)  # fmt: skip
    return value, sensitive


# --- one host -----------------------------------------------------------------------------


@dataclass
class Entry:
    """One host of the output: its name, its pyinfra data and its groups; or its problems."""

    label: str  # the name, or "<output>[index]" while no usable name is known
    name: str | None = None
    data: dict[str, Any] | None = None
    groups: tuple[str, ...] = ()
    problems: tuple[tuple[str, Any, str], ...] = ()  # (field, value, allowed)


def _text_problem(value: Any) -> str | None:
    """A string with a control or invisible character (anywhere inside lists and objects)."""
    if isinstance(value, str):
        hidden = hidden_character(value)
        if hidden:
            return f"must not contain control or invisible characters (found {hidden})"
        return None
    if isinstance(value, list):
        return next(filter(None, map(_text_problem, value)), None)
    if isinstance(value, dict):
        return next(filter(None, map(_text_problem, [*value, *value.values()])), None)
    return None


def _name_problem(name: Any) -> str | None:
    if is_host_name(name) or is_ip_address(name):
        return None
    return ("must be a host name or IP address (letters, digits, '-' and '.'; no spaces, "
            "quotes, '_', shell characters or control characters)")  # fmt: skip


def _is_group(group: Any) -> bool:
    """A name pyinfra takes as a group: a module-level name of the inventory file, neither
    private (``_x``, which pyinfra ignores) nor ``all`` (which it builds itself)."""
    return (
        isinstance(group, str)
        and _GROUP.fullmatch(group) is not None
        and not keyword.iskeyword(group)
        and group != "all"
    )


def _group_problems(groups: Any) -> list[tuple[str, Any, str]]:
    if not isinstance(groups, list) or not groups:
        return [("groups", groups, "must be a non-empty list of group names")]
    return [
        (f"groups[{index}]", group, _GROUP_RULE)
        for index, group in enumerate(groups)
        if not _is_group(group)
    ]


def _data_key_problem(key: str) -> str | None:
    """A data key must be one of our settings, a pyinfra connector key or own (``_x``)."""
    if not _IDENTIFIER.fullmatch(key):
        return "must be a data key: letters, digits and '_', not starting with a digit"
    if secret_named(key) and key not in SETTINGS:
        return ("must not come from Terraform (a credential in inventory data); use an SSH "
                "agent or key file, and the secrets files for vLLM")  # fmt: skip
    if key in SETTINGS or key in SSH_FROM_TERRAFORM or key.startswith("_"):
        return None
    if key in pyinfra_keys():
        return (f"is a connection setting Terraform may not set (allowed: "
                f"{', '.join(SSH_FROM_TERRAFORM)}): set it in group_data")  # fmt: skip
    return str(unknown_key("", key, None).allowed)


def _setting_problems(data: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The project's settings in ``data``, each checked by the model on its own (other hosts'
    group_data is merged later, so combinations are checked by the deploy, as always)."""
    nested: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for key, value in data.items():
        if key in SETTINGS:
            section, field = SETTINGS[key]
            nested[section][field] = value
    try:
        FleetConfig.model_validate(nested)
    except ValidationError as error:
        found = problems_from_errors("", error.errors(), data)
        return [(f"data.{problem.key}", problem.value, problem.allowed) for problem in found]
    return []


def _data_problems(data: Any) -> list[tuple[str, Any, str]]:
    if not isinstance(data, dict):
        return [("data", data, "must be an object of data keys and values")]
    problems = []
    for key, value in data.items():
        found = _data_key_problem(key) or _text_problem(value)
        if found:  # shown under "data.", which Problem does not see as a credential's name
            shown = mask(value, secret_named(key) and key not in SETTINGS)
            problems.append((f"data.{key}", shown, found))
    return problems or _setting_problems({k: v for k, v in data.items() if v is not None})


def _fields(item: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, Any, str]]]:
    """The host object's fields without its nulls, and its unknown fields as problems."""
    fields = {key: value for key, value in item.items() if value is not None}
    unknown = [
        (str(key), value, f"unknown field; a host object has {', '.join(_HOST_FIELDS)}")
        for key, value in fields.items()
        if key not in _HOST_FIELDS
    ]
    return fields, unknown


def _host_data(fields: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, Any, str]]]:
    """pyinfra data of the host: its ``data`` (nulls dropped), the SSH fields and what its
    instance type says about its GPUs."""
    raw = fields.get("data", {})
    problems = _data_problems(raw)
    data = {k: v for k, v in raw.items() if v is not None} if isinstance(raw, dict) else {}
    for key in ("ssh_hostname", "ssh_user", "ssh_port"):
        if key in fields and key in data:
            problems.append((key, fields[key], f"is given twice (also as data.{key})"))
        elif key in fields:
            data[key] = fields[key]
    instance_type = fields.get("instance_type")
    if instance_type is not None:
        if not (isinstance(instance_type, str) and _INSTANCE_TYPE.fullmatch(instance_type)):
            problems.append(("instance_type", instance_type, "must be an instance type name "
                             "(letters, digits, '.', '_' and '-'; at most 64)"))  # fmt: skip
            return data, problems
        data["_instance_type"] = instance_type
        data.update(gpu_data(instance_type, data))
    return data, problems


def entry(item: Any, label: str) -> Entry:
    """One list item of the output as a host, or its problems."""
    if isinstance(item, str):
        item = {"ssh_hostname": item}
    if not isinstance(item, dict):
        allowed = "must be a host: an address string or an object with name or ssh_hostname"
        return Entry(label, problems=(("host", type(item).__name__, allowed),))
    fields, problems = _fields(item)
    name = fields.get("name", fields.get("ssh_hostname"))
    if name is None:
        problems.append(("name", None, "is missing: give name or ssh_hostname"))
    elif _name_problem(name) or _text_problem(name):
        problems.append(("name", name, _name_problem(name) or str(_text_problem(name))))
    else:
        label = name
    data, more = _host_data(fields)
    groups = fields.get("groups", [DEFAULT_GROUP])
    problems += more + _group_problems(groups)
    return Entry(label, label if label == name else None, data, tuple(groups), tuple(problems))


# --- the whole output ---------------------------------------------------------------------


def _problems(entries: list[Entry]) -> list[tuple[str, str, Any, str]]:
    """Every entry's problems and names given twice, as (host, field, value, allowed)."""
    problems = [(e.label, *found) for e in entries for found in e.problems]
    named = [e.name for e in entries if e.name]
    problems += [
        (name, "name", name, "is listed twice in the output (each machine once)")
        for index, name in enumerate(named)
        if name in named[:index]
    ]
    return problems


def _ssh_problems(entries: list[Entry]) -> list[tuple[str, str, Any, str]]:
    """What ``checked_hosts`` finds in the named hosts (SSH data, one address per machine):
    every host goes through it, once, whichever groups it is in."""
    first: dict[str, Any] = {}
    for host in entries:  # a name given twice is a problem already (_problems)
        if host.name:
            first.setdefault(host.name, host.data)
    try:
        checked_hosts(list(first.items()))
    except ConfigError as error:
        return [(p.host, p.key, p.value, p.allowed) for p in error.problems]
    return []


def groups_of(document: Document, key: str = DEFAULT_KEY) -> dict[str, list[tuple[str, dict]]]:
    """{group: [(name, data), …]} from the document's output ``key``; ConfigError listing
    every problem (each host, field, value, what is allowed and the document)."""
    hosts, sensitive = output_value(document, key)
    source = f"terraform output {key!r} of {document.source}"
    entries = [entry(item, f"{key}[{index}]") for index, item in enumerate(hosts)]
    problems = _problems(entries) + _ssh_problems(entries)
    if problems:
        raise ConfigError([
            Problem(host, field, HIDDEN if sensitive else value, allowed, source)
            for host, field, value, allowed in problems
        ])  # fmt: skip
    groups: dict[str, list[tuple[str, dict]]] = {}
    for host in entries:
        for group in dict.fromkeys(host.groups):
            groups.setdefault(group, []).append((host.name, host.data))
    return groups


def terraform_groups(
    env: Mapping[str, str] | None = None, run: Runner | None = None
) -> dict[str, list[tuple[str, dict]]]:
    """The inventory's groups from the document the environment names (see the module doc)."""
    env = os.environ if env is None else env
    key = env.get(KEY_ENV) or DEFAULT_KEY
    if not _OUTPUT_NAME.fullmatch(key):
        raise _refuse(KEY_ENV, key, "must be a Terraform output name (letters, digits, '_', '-')")
    return groups_of(read_document(env, run or run_bounded), key)
