"""Plan nothing for what a host already has, and read each planning fact once per host.

pyinfra 3.10 keeps no fact cache: every operation that asks for a fact runs its command
again. On a converged lab host a no-change run sent 41 commands: ``dpkg -l`` seven times
(each ``apt.packages`` and each layer's own look at the package list), three per
``files.put`` (stat of the file, stat of its directory, its sha1), two per
``systemd.service``, two per ``apt.key``, the daemon.json files twice. Here:

- ``planned(Fact)`` reads a fact once per host while the deploy is planned (an operation
  that reads a fact as it executes still reads it afresh);
- ``ManagedState`` reads, in one command, the kind, mode, owner and sha1 of every file the
  layers declare with ``managed(path)`` and the state of every unit declared with
  ``managed_unit(name)``;
- ``put``, ``absent``, ``directory``, ``service`` and ``apt_install`` emit pyinfra's own
  operation only when the host lacks what it asserts, or when its state is unknown (a path
  or unit not declared, a fact that could not be read). That operation then reads its facts
  and makes the change as usual. A skipped one returns ``unchanged()``: complete, no
  change, so ``_if=op.did_change`` chains read it like any operation.

The planning facts are those of the host before the run, as pyinfra's own change
detection uses them. An operation skipped on them could only be wrong if an earlier
operation of the same run undid what it asserts; none here does (the Docker layer removes
only packages no layer installs).
"""

from __future__ import annotations

import hashlib
import shlex
from io import StringIO
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

from pyinfra import host, state
from pyinfra.api import FactBase
from pyinfra.api.operation import OperationMeta
from pyinfra.connectors.util import CommandOutput
from pyinfra.context import ctx_host
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations import apt, files, systemd

_PATHS: dict[str, None] = {}  # declared by the layers at import; an ordered set
_UNITS: dict[str, None] = {}
_MEMO: WeakKeyDictionary[Any, dict] = WeakKeyDictionary()  # host -> {fact key: value}
MARK = "@@gpufleet-state@@"


def managed(path: str) -> str:
    """Declare a file or directory a layer manages (so one command reads them all)."""
    _PATHS[path] = None
    return path


def managed_unit(unit: str) -> str:
    """Declare a systemd service a layer manages."""
    _UNITS[unit] = None
    return unit


class PathState(NamedTuple):
    kind: str  # file, directory, link, other, absent
    mode: str = ""  # octal, as stat %a prints it
    user: str = ""
    group: str = ""
    sha1: str = ""


class ManagedState(FactBase):
    """{"paths": {path: PathState}, "units": {unit: {"SubState", "UnitFileState"}}}."""

    def command(self, paths: tuple[str, ...], units: tuple[str, ...]) -> str:
        # NUL-free, one line per path and per unit property, each after the marker
        path_loop = (
            f"for p in {' '.join(shlex.quote(p) for p in paths)}; do "
            'm=; s=; if [ -L "$p" ]; then k=link; elif [ -f "$p" ]; then k=file; '
            'elif [ -d "$p" ]; then k=directory; elif [ -e "$p" ]; then k=other; '
            "else k=absent; fi; "
            'case $k in file|directory) m=$(stat -c "%a %U %G" "$p");; esac; '
            '[ $k = file ] && s=$(sha1sum < "$p" | cut -c1-40); '
            f'printf \'{MARK}\\tpath\\t%s\\t%s\\t%s\\t%s\\n\' "$p" "$k" "$m" "$s"; done'
        )
        if not units:
            return f"{path_loop}; true"
        names = " ".join(shlex.quote(f"{u}.service") for u in units)
        unit_loop = (
            f"systemctl show --property Id --property SubState --property UnitFileState "
            f"{names} 2>/dev/null | sed -n 's/^/{MARK}\\tunit\\t/p'"
        )
        return f"{path_loop}; {unit_loop}; true"

    @staticmethod
    def default() -> dict:
        return {"paths": {}, "units": {}}

    def process(self, output: list[str]) -> dict:
        found: dict = {"paths": {}, "units": {}}
        unit = None
        for line in output:
            fields = line.split("\t")
            if fields[0] != MARK:
                continue
            if fields[1:2] == ["path"] and len(fields) == 6:
                path, kind, owner, sha1 = fields[2:]
                found["paths"][path] = PathState(kind, *(owner.split() + ["", "", ""])[:3], sha1)
            elif fields[1:2] == ["unit"] and len(fields) == 3 and "=" in fields[2]:
                key, value = fields[2].split("=", 1)
                if key == "Id":
                    unit = found["units"].setdefault(value.removesuffix(".service"), {})
                elif unit is not None:
                    unit[key] = value
        return found


def planned(fact: type[FactBase], **kwargs: Any) -> Any:
    """``host.get_fact``, read once per host and run while the deploy is planned."""
    if state.is_executing:
        return host.get_fact(fact, **kwargs)
    memo = _MEMO.setdefault(ctx_host.get(), {})
    key = (fact, tuple(sorted(kwargs.items())))
    if key not in memo:
        memo[key] = host.get_fact(fact, **kwargs)
    return memo[key]


def _managed_state() -> dict:
    return planned(ManagedState, paths=tuple(_PATHS), units=tuple(_UNITS))


def path_state(path: str) -> PathState | None:
    """What the host had at ``path`` before the run; None when not known."""
    return _managed_state()["paths"].get(path) if path in _PATHS else None


def unchanged() -> OperationMeta:
    """What a skipped operation returns: executed, succeeded, changed nothing."""
    meta = OperationMeta("gpufleet-converged", is_change=False)
    meta.set_complete(True, [], CommandOutput([]))
    return meta


def _owned(found: PathState, mode: str | None, user: str | None, group: str | None) -> bool:
    return (
        (mode is None or (found.mode != "" and int(found.mode, 8) == int(str(mode), 8)))
        and (user is None or found.user == user)
        and (group is None or found.group == group)
    )


def holds(path: str, text: str) -> bool:
    """Whether the host had a file at ``path`` holding exactly ``text`` before the run
    (False when it did not, or when that is not known)."""
    found = path_state(path)
    digest = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324 - what ManagedState reads
    return bool(found and found.kind == "file" and found.sha1 == digest)


def put(name: str, text: str, dest: str, mode=None, user=None, group=None):
    """``files.put`` of ``text``, unless ``dest`` already holds exactly it (and mode, owner)."""
    if holds(dest, text) and _owned(path_state(dest), mode, user, group):
        return unchanged()
    return files.put(name=name, src=StringIO(text), dest=dest, mode=mode, user=user, group=group)


def absent(name: str, path: str):
    """``files.file(present=False)``, unless nothing is at ``path``."""
    found = path_state(path)
    if found and found.kind == "absent":
        return unchanged()
    return files.file(name=name, path=path, present=False)


def directory(name: str, path: str, mode=None, user=None, group=None):
    """``files.directory``, unless ``path`` is already a directory with that mode and owner."""
    found = path_state(path)
    if found and found.kind == "directory" and _owned(found, mode, user, group):
        return unchanged()
    return files.directory(name=name, path=path, present=True, mode=mode, user=user, group=group)


def service(name: str, unit: str, running: bool, enabled: bool):
    """``systemd.service``, unless the unit is already (not) running and enabled as asked (by
    the states pyinfra's own facts count as running and enabled)."""
    found = _managed_state()["units"].get(unit) if unit in _UNITS else None
    if found and "SubState" in found and "UnitFileState" in found:
        now_running = found["SubState"] in SystemdStatus.state_values
        now_enabled = found["UnitFileState"] in SystemdEnabled.state_values
        if now_running == running and now_enabled == enabled:
            return unchanged()
    return systemd.service(name=name, service=unit, running=running, enabled=enabled)


def apt_install(name: str, packages: list[str] | tuple[str, ...]):
    """``apt.packages`` (no recommends), unless every package is installed (``name=version``:
    at that version)."""
    installed = planned(DebPackages)  # {} without dpkg (the fact's default)
    if all(_has(installed, spec) for spec in packages):
        return unchanged()
    return apt.packages(name=name, packages=list(packages), no_recommends=True)


def _has(installed: dict[str, list[str]], spec: str) -> bool:
    package, _, version = spec.partition("=")
    return package in installed and (not version or version in installed[package])
