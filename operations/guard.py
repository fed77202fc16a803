"""An inventory loaded by pyinfra's own loader, with an operator's mistakes as one line each.

pyinfra's CLI takes a mistyped inventory path for an empty inventory, a group that is a dict
or a string for no group, and a ``--limit`` or ``--exclude`` that leaves no host for a run
with nothing to do: each exits 0 having done nothing. A syntax error or an exception in the
inventory or a group_data file, host data that is not a dict and ``--data key`` without ``=``
end in a traceback, most as "an internal exception ... submit a bug report".

Here each is one line naming the file, the line and the problem (InventoryError, a CliError:
pyinfra's CLI prints it as ``--> pyinfra error: ...``, without traceback or a header naming
our code), and a run that would target no host is refused, saying which inventory and which
``--limit``/``--exclude``. The loader also records which file set each host's data, so that
a refusal names the operator's file (``host_sources``).

The deploy gets this from ``install()``, which the project's config.py calls (pyinfra execs
config.py from the working directory before it reads the inventory, so it runs even when no
host is targeted and deploy.py never does); the controller-side commands call ``load()``.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from types import TracebackType
from typing import Any
from weakref import WeakKeyDictionary

import click
import pyinfra_cli.cli
import pyinfra_cli.inventory
from pyinfra import logger
from pyinfra.api import Host, Inventory, State
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_state
from pyinfra_cli.exceptions import CliError, UnexpectedExternalError

from operations.config.load import ConfigError, load_fleet
from operations.config.model import FleetConfig

# pyinfra's CLI options that set host data, by the data key they set; other keys: --data
CLI_OPTIONS = {
    "ssh_user": "--user",
    "ssh_port": "--port",
    "ssh_key": "--key",
    "ssh_key_password": "--key-password",
    "ssh_password": "--password",
}


class InventoryError(CliError, PyinfraError):
    """An operator's mistake in the inventory, group_data or the command line, in one line.

    A CliError, so pyinfra's CLI prints the message alone; a PyinfraError, so pyinfra passes
    it through from the files it execs and our own commands catch it like a ConfigError."""


class SourcedConfigError(ConfigError, CliError):
    """A ConfigError that pyinfra's CLI prints as its own message: a plain PyinfraError gets
    a header naming the code that raised it (``operations/config/load.py line 202``)."""


def cli_error(error: ConfigError) -> ConfigError:
    """``error`` as pyinfra's CLI prints it cleanly (same problems, same message)."""
    return error if isinstance(error, CliError) else SourcedConfigError(error.problems)


def shown(path: str | Path) -> str:
    """A path as the operator would write it: relative to the working directory when inside
    it, else absolute."""
    absolute = Path(path).resolve()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


@dataclass
class Loaded:
    """What loading an inventory read: the inventory file (None for a list of hosts) and
    every file pyinfra exec'd with the names it set, in load order (later ones win)."""

    inventory: str
    path: Path | None
    files: list[tuple[Path, frozenset[str]]] = field(default_factory=list)
    not_groups: list[str] = field(default_factory=list)  # public names that add no host
    empty_groups: list[str] = field(default_factory=list)
    tuple_data: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    """{group: (where, keys)} of the inventory's (hosts, data) groups"""
    data_args: frozenset[str] = frozenset()  # the override keys given as --data key=value
    setters: dict[tuple[str, str], Path] | None = None  # (group, key) -> its group_data file


LOADED: WeakKeyDictionary[Inventory, Loaded] = WeakKeyDictionary()


# --- command-line arguments -------------------------------------------------------------


def check_data_args(data: Iterable[str]) -> None:
    """Every ``--data`` argument is ``key=value`` (pyinfra's CLI fails on one without ``=``
    with an internal-error traceback). An argument is echoed only when it looks like a
    setting's name: a token pasted without its key must not end up in a log."""
    for arg in data:
        if "=" not in arg:
            shown = repr(arg) if re.fullmatch(r"[a-z][a-z_]*", arg) else "(value not shown)"
            raise InventoryError(f"--data {shown}: no '='; write it as --data key=value")
        if not arg.split("=", 1)[0].strip():
            raise InventoryError("--data with no key before '=': write it as --data key=value")


def looks_like_a_file(inventory: str) -> bool:
    """A name pyinfra would read as a file if it existed: ends in .py or holds a path
    separator, and is no list of hosts (``,``) nor a connector (``@``)."""
    if "," in inventory or "@" in inventory:
        return False
    return inventory.endswith(".py") or "/" in inventory or os.sep in inventory


def check_inventory_arg(inventory: str) -> None:
    """A mistyped inventory path is refused: pyinfra would run on no host, or on a host
    named like the path."""
    path = Path(inventory)
    if path.is_dir():
        raise InventoryError(f"inventory {inventory}: is a directory, not an inventory file")
    if looks_like_a_file(inventory) and not path.exists():
        raise InventoryError(f"inventory {inventory}: no such file (in {Path.cwd()})")


# --- files pyinfra execs ----------------------------------------------------------------


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _line_in(path: Path, traceback: TracebackType | None) -> int | None:
    """The line of ``path`` the error came from (the last call made in that file)."""
    line = None
    while traceback is not None:
        if Path(traceback.tb_frame.f_code.co_filename).resolve() == path:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def describe(path: Path, error: BaseException) -> str:
    """'group_data/gpu.py line 3: NameError: name 'x' is not defined'."""
    if isinstance(error, SyntaxError) and error.filename:
        where = f"{shown(error.filename)} line {error.lineno}"
        return f"{where}: {type(error).__name__}: {_one_line(error.msg)}"
    line = _line_in(path, error.__traceback__)
    where = f"{shown(path)} line {line}" if line else shown(path)
    if isinstance(error, OSError):
        return f"{where}: cannot read it: {error.strerror or _one_line(str(error))}"
    text = _one_line(str(error))
    return f"{where}: {type(error).__name__}" + (f": {text}" if text else "")


def _assignment_lines(path: Path) -> dict[str, int]:
    """{top-level name: line of its last assignment} of a Python file that compiled."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    lines = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            if isinstance(target, ast.Name):
                lines[target.id] = node.lineno
    return lines


def _host_problem(index: int, host: Any) -> str | None:
    """What is wrong with one entry of a group's host list (never its data's values: they
    may hold secrets)."""
    if isinstance(host, str):
        return None if host.strip() else f"host {index} is an empty name"
    if isinstance(host, tuple):
        if len(host) != 2 or not isinstance(host[0], str) or not host[0].strip():
            return f"host {index} is a tuple of {len(host)} but not (name, data)"
        if not isinstance(host[1], dict):
            return f"host {host[0]!r}: its data is a {type(host[1]).__name__}, not a dict"
        return None
    return f"host {index} is a {type(host).__name__}: a host is a name or a (name, data) pair"


def group_problem(value: list | tuple) -> str | None:
    """What is wrong with a module-level list or tuple that pyinfra takes for a group."""
    hosts = value
    if isinstance(value, tuple):
        if len(value) != 2 or not isinstance(value[0], list):
            return "is a tuple but not (list of hosts, data)"
        if not isinstance(value[1], dict):
            return f"is (hosts, data) but its data is a {type(value[1]).__name__}, not a dict"
        hosts = value[0]
    for index, host in enumerate(hosts, start=1):
        problem = _host_problem(index, host)
        if problem:
            return problem
    return None


NOT_A_GROUP = (dict, str, set, frozenset, bytes)  # values that look like hosts, given wrongly
GROUP_HINT = "a group is a module-level list of hosts, or a (hosts, data) pair"


def check_groups(path: Path, attrs: Mapping[str, Any], loaded: Loaded) -> None:
    """Refuse a group pyinfra would choke on or silently drop; note the names that add no
    host (a dict or a string where a group was meant, an empty group)."""
    lines = _assignment_lines(path)
    for name, value in attrs.items():
        if name.startswith("_"):
            continue
        where = f"{shown(path)} line {lines[name]}" if name in lines else shown(path)
        if isinstance(value, (list, tuple)):
            problem = group_problem(value)
            if problem:
                raise InventoryError(f"{where}: group {name!r} {problem} ({GROUP_HINT})")
            if not (value[0] if isinstance(value, tuple) else value):
                loaded.empty_groups.append(f"{where}: group {name!r} is empty")
            if isinstance(value, tuple):
                loaded.tuple_data[name] = (where, frozenset(value[1]))
        elif isinstance(value, NOT_A_GROUP):
            loaded.not_groups.append(
                f"{where}: {name!r} is a {type(value).__name__}, not a group, so it adds no host"
            )


def _refused_in(path: Path, error: ConfigError) -> ConfigError:
    """A ConfigError raised while exec'ing a file (checked_hosts in an inventory), naming it."""
    problems = [
        problem if problem.source else dataclasses.replace(problem, source=shown(path))
        for problem in error.problems
    ]
    return SourcedConfigError(problems)


@contextmanager
def _guarded_exec(loaded: Loaded):
    """While pyinfra loads the inventory: each file it execs turns its errors into one line,
    is recorded with the names it set, and the inventory file's groups are checked."""
    original = pyinfra_cli.inventory.exec_file

    def exec_file(filename, return_locals: bool = False, is_deploy_code: bool = False):
        path = Path(filename).resolve()
        try:
            attrs = original(filename, return_locals=return_locals, is_deploy_code=is_deploy_code)
        except ConfigError as error:
            raise _refused_in(path, error) from None
        except CliError:
            raise
        except UnexpectedExternalError as error:  # pyinfra's wrapper of an error in the file
            raise InventoryError(describe(path, error.exception)) from None
        except Exception as error:  # SyntaxError, unreadable file, a pyinfra error in it
            raise InventoryError(describe(path, error)) from None
        if path == loaded.path:
            check_groups(path, attrs, loaded)
        loaded.files.append((path, frozenset(attrs)))
        return attrs

    pyinfra_cli.inventory.exec_file = exec_file
    try:
        yield
    finally:
        pyinfra_cli.inventory.exec_file = original


def load_inventory(
    inventory: str,
    override_data: Mapping[str, Any] | None = None,
    cwd: str | None = None,
    group_data_directories: Sequence[str] | None = None,
    make: Callable[..., Inventory] = pyinfra_cli.inventory.make_inventory,
    data_args: Iterable[str] | None = None,
) -> Inventory:
    """pyinfra's inventory of ``inventory`` (``make``: its CLI loader), or InventoryError.
    ``data_args``: the override keys given with --data (default: every override key)."""
    check_inventory_arg(inventory)
    path = Path(inventory).resolve() if Path(inventory).is_file() else None
    given = override_data if data_args is None else data_args
    loaded = Loaded(inventory, path, data_args=frozenset(given or ()))
    with _guarded_exec(loaded):
        try:
            made = make(
                inventory,
                override_data=dict(override_data or {}),
                cwd=cwd,
                group_data_directories=group_data_directories,
            )
        except CliError:  # ours, already one line; or pyinfra's own
            raise
        except Exception as error:  # building hosts: an unknown @connector, bad host data
            text = _one_line(str(error))
            raise InventoryError(f"inventory {inventory}: {type(error).__name__}: {text}") from None
    LOADED[made] = loaded
    return made


# --- what a run targets -----------------------------------------------------------------


def _matches(inventory: Inventory, pattern: str) -> list[Host]:
    """pyinfra's --limit/--exclude matching: a group's hosts, else hosts whose name matches
    the (fnmatch) pattern. ``groups`` is read without creating entries (a defaultdict)."""
    group = inventory.groups.get(pattern)
    if group:
        return list(group)
    return [host for host in inventory if fnmatch(host.name, pattern)]


def targeted_hosts(
    inventory: Inventory, limit: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Host]:
    """The hosts a run with these --limit and --exclude patterns targets, in --limit order
    (inventory order without a limit); InventoryError when that is none."""
    hosts = list(inventory)
    if limit:
        hosts = list(dict.fromkeys(h for pattern in limit for h in _matches(inventory, pattern)))
    excluded = {h for pattern in exclude for h in _matches(inventory, pattern)}
    targeted = [host for host in hosts if host not in excluded]
    if not targeted:
        raise InventoryError(no_host_message(inventory, limit, exclude, len(hosts)))
    return targeted


def unmatched(inventory: Inventory, patterns: Iterable[str], option: str) -> list[str]:
    """A warning per pattern that matches nothing (the run goes on with the others)."""
    return [
        f"{option} {pattern!r} matches no host or group of the inventory"
        for pattern in patterns
        if not _matches(inventory, pattern)
    ]


def _name(inventory: Inventory) -> str:
    loaded = LOADED.get(inventory)
    if loaded is None:
        return "the inventory"
    return shown(loaded.path) if loaded.path else f"inventory {loaded.inventory!r}"


def _why_empty(inventory: Inventory) -> str:
    loaded = LOADED.get(inventory)
    if loaded is None:
        return "the inventory has no hosts"
    if loaded.path is None:
        return (
            f"inventory {loaded.inventory!r} is no inventory file, host list or connector"
            " pyinfra could use (it names no file, host or module)"
        )
    reasons = [line.split(": ", 1)[1] for line in loaded.not_groups + loaded.empty_groups]
    found = "; ".join(reasons) or "it defines no group"
    return f"{shown(loaded.path)} has no hosts: {found} ({GROUP_HINT})"


def no_host_message(inventory: Inventory, limit, exclude, limited: int) -> str:
    """Why a run targets no host: the inventory is empty, the limit matches none, or the
    exclude removes every host the limit (or the inventory) gave."""
    if not len(inventory):
        return f"no host to run on: {_why_empty(inventory)}"
    name, total = _name(inventory), len(inventory)
    groups = sorted(group for group, hosts in inventory.groups.items() if hosts)
    if limit and not limited:
        names = [*groups, *(host.name for host in inventory)]
        close = [m for p in limit for m in difflib.get_close_matches(p, names, n=1, cutoff=0.75)]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return (
            f"no host to run on: --limit {', '.join(limit)} matches no host or group of {name}"
            f" ({total} host(s); groups: {', '.join(groups)}){hint}"
        )
    chosen = (
        f"the {limited} host(s) --limit {', '.join(limit)} selects"
        if limit
        else (f"all {total} host(s) of {name}")
    )
    return f"no host to run on: --exclude {', '.join(exclude)} excludes {chosen}"


# --- group_data files for no group ------------------------------------------------------


def _inventory_names(directory: Path, skip: Path | None) -> set[str]:
    """Group names other inventories in ``directory`` may give: each file's stem (pyinfra's
    file group) and its public top-level names (read, not run)."""
    names: set[str] = set()
    for other in directory.glob("*.py") if directory.is_dir() else ():
        if other.resolve() != skip:
            names |= {other.stem, *_assignment_lines(other)}
    return names


def unknown_group_data(inventory: Inventory) -> list[str]:
    """A warning per group_data file whose group neither this inventory nor any inventory
    beside it (or in the project's inventory/) has: its settings reach no host. A warning,
    not an error: group_data is shared by every inventory of the project, and a connector
    may attach a group at run time."""
    loaded = LOADED.get(inventory)
    if loaded is None:
        return []
    known = {"all"} | {group for group, hosts in inventory.groups.items() if hosts}
    directories = {Path.cwd() / "inventory"} | ({loaded.path.parent} if loaded.path else set())
    for directory in directories:
        known |= _inventory_names(directory, loaded.path)
    warnings = []
    for path, _ in loaded.files:
        if path == loaded.path or path.stem in known:
            continue
        close = difflib.get_close_matches(path.stem, sorted(inventory.groups), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(
            f"{shown(path)}: no inventory has a group {path.stem!r}, so it applies to no host{hint}"
        )
    return warnings


def overridden_tuple_data(loaded: Loaded) -> list[str]:
    """A warning per key of an inventory's (hosts, data) group that a group_data file of the
    same group sets too: pyinfra lets the file win, so the inventory's value is never used
    (group_data/all.py sets every setting, so all of an ``all`` group's data)."""
    warnings = []
    for group, (where, keys) in loaded.tuple_data.items():
        for key in sorted(keys):
            path = _group_file(loaded, group, key)
            if path:
                warnings.append(
                    f"{where}: {key} of group {group!r} is never used: {shown(path)} sets it"
                    " and group_data wins over an inventory's group data"
                )
    return warnings


def warnings_of(inventory: Inventory) -> list[str]:
    """Everything loading noticed that adds no host but is no reason to stop."""
    loaded = LOADED.get(inventory)
    if loaded is None or not len(inventory):
        return unknown_group_data(inventory)
    hint = f" ({GROUP_HINT}; start a helper's name with _)"
    notes = [line + hint for line in loaded.not_groups] + loaded.empty_groups
    return notes + overridden_tuple_data(loaded) + unknown_group_data(inventory)


# --- where each value came from ---------------------------------------------------------


def _group_file(loaded: Loaded, group: str, key: str) -> Path | None:
    """The group_data file that set ``key`` for ``group`` (the last one read wins)."""
    if loaded.setters is None:  # indexed once: every host of a run asks for every key
        loaded.setters = {
            (path.stem, name): path
            for path, names in loaded.files
            if path != loaded.path
            for name in names
        }
    return loaded.setters.get((group, key))


def _option(key: str, data_args: frozenset[str]) -> str:
    """The command-line option that gave an override: --data, or pyinfra's --user etc."""
    return "--data" if key in data_args or key not in CLI_OPTIONS else CLI_OPTIONS[key]


def host_sources(host: Host) -> dict[str, str]:
    """{data key: the file (or --data) that gave the host's effective value}, following
    pyinfra's precedence: override data, host data, groups in order, then 'all'."""
    inventory = host.inventory
    loaded = LOADED.get(inventory)
    overrides = inventory.get_override_data()
    if loaded is None:
        return {key: _option(key, frozenset(overrides)) for key in overrides}
    file = shown(loaded.path) if loaded.path else f"inventory {loaded.inventory!r}"

    def origin(group: str, key: str) -> str:
        path = _group_file(loaded, group, key)
        return shown(path) if path else file

    where = {key: origin("all", key) for key in inventory.get_data()}
    for group in host.groups:
        where |= {key: origin(group, key) for key in inventory.get_group_data(group)}
    where |= dict.fromkeys(inventory.get_host_data(host.name), file)
    return where | {key: _option(key, loaded.data_args) for key in overrides}


# --- the two entry points ---------------------------------------------------------------


def load(
    inventory: str,
    limit: Sequence[str] = (),
    exclude: Sequence[str] = (),
    override_data: Mapping[str, Any] | None = None,
    cwd: str | None = None,
) -> tuple[Inventory, list[Host]]:
    """For the controller-side commands: the inventory and its targeted hosts, loaded the way
    a deploy loads them (group_data from ``cwd`` and beside the inventory), or one-line
    InventoryError."""
    with ctx_state.use(State()):  # pyinfra's loader records the file it execs on a state
        made = load_inventory(inventory, override_data, cwd)
    return made, targeted_hosts(made, limit, exclude)


_INSTALLED: set[int] = set()
# configs validated by the CLI guard before pyinfra connects: {inventory: {host: config}}
VALIDATED: WeakKeyDictionary[Inventory, dict[str, FleetConfig]] = WeakKeyDictionary()


def validate(inventory: Inventory, hosts: list[Host]) -> dict[str, FleetConfig]:
    """Validate the targeted hosts' configs, each problem naming its file; one-line
    SourcedConfigError. Run by the CLI guard before pyinfra connects to any host, so an
    unreachable fleet is refused for its config too, and no host is reached with one."""
    sources = {host.name: host_sources(host) for host in hosts}
    try:
        configs = load_fleet(((host.name, host.data.dict()) for host in hosts), sources)
    except ConfigError as error:
        raise cli_error(error) from None
    VALIDATED[inventory] = configs
    return configs


def install() -> None:
    """Guard the running pyinfra CLI (called from the project's config.py): refuse bad
    ``--data`` and a mistyped inventory now, and wrap its inventory loader so that errors in
    the inventory or group_data are one line, and a run that targets no host stops."""
    context = click.get_current_context(silent=True)
    if context is None or "inventory" not in context.params or id(context) in _INSTALLED:
        return  # not pyinfra's CLI (the API, a test harness), or guarded already
    if not callable(getattr(pyinfra_cli.cli, "make_inventory", None)):
        logger.warning("gpufleet: this pyinfra has no CLI inventory loader to guard")
        return
    _INSTALLED.add(id(context))
    params = context.params
    check_data_args(params.get("data") or ())
    check_inventory_arg(params["inventory"])
    original = pyinfra_cli.cli.make_inventory

    def make_inventory(inventory, override_data=None, cwd=None, group_data_directories=None):
        data_args = [arg.split("=", 1)[0] for arg in params.get("data") or ()]
        made = load_inventory(
            inventory, override_data, cwd, group_data_directories, original, data_args
        )
        for line in warnings_of(made):
            logger.warning(line)
        targeted = targeted_hosts(made, params.get("limit") or (), params.get("exclude") or ())
        validate(made, targeted)
        return made

    pyinfra_cli.cli.make_inventory = make_inventory
