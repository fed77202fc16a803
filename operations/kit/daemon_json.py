"""Docker's ``/etc/docker/daemon.json``, owned as a merge: never clobbered, never lost.

Each layer says which keys it manages (``{("log-opts", "max-size"): "100m", …}``: a key
path and its value). The merge keeps every other key in the file, the user's and other
tools' alike, and removes only keys this layer set on an earlier run and no longer wants
(recorded in ``OWNED``). Nested objects are merged key by key (``runtimes.nvidia`` leaves
other runtimes alone); lists and scalars are replaced whole.

A changed file is applied with a rollback: the new file is validated with ``dockerd
--validate`` where dockerd has it (Docker 23+); the previous file is kept, Docker restarted
and given ``docker_restart_timeout_s`` to answer ``docker info``; if it does not, the
previous file is put back, Docker restarted on it, and the host fails with dockerd's own
words. Docker is restarted only when the parsed content changed. A file that is no longer
valid JSON (edited by hand) is set aside as ``daemon.json.corrupt-<time>`` and rebuilt on
the last good file (``LAST_GOOD``), so the user's keys of then survive. That copy is taken
when a merge applies, and by a run that finds the user changed a valid file by hand (one
small change, then none until the file changes again).

Layers in one run merge in turn: the second merge starts from what the first planned, not
from the file read before the run.
"""

from __future__ import annotations

import copy
import json
from io import StringIO
from typing import Any
from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.api.command import FileUploadCommand, StringCommand
from pyinfra.context import ctx_host

from operations.kit import files, scripts
from operations.kit.quoting import json_text

DAEMON_JSON = "/etc/docker/daemon.json"
STATE_DIR = "/etc/gpufleet"
OWNED = f"{STATE_DIR}/daemon-json-owned.json"  # {layer: [key path, ...]}
LAST_GOOD = f"{STATE_DIR}/daemon.json.last-good"
STAGED = f"{STATE_DIR}/daemon.json.staged"
STAGED_OWNED = f"{STATE_DIR}/daemon-json-owned.json.staged"
_FILES = {"current": DAEMON_JSON, "last_good": LAST_GOOD, "owned": OWNED}

KeyPath = tuple[str, ...]
Managed = dict[KeyPath, Any]


class DaemonJson(FactBase):
    """{"current": text | None, "last_good": …, "owned": …}: the three files, one command."""

    def command(self) -> str:
        return files.cat_command(" ".join(_FILES.values()))

    def process(self, output: list[str]) -> dict[str, str | None]:
        texts = files.split(output)
        return {key: _joined(texts.get(path)) for key, path in _FILES.items()}

    @staticmethod
    def default() -> dict[str, str | None]:
        return dict.fromkeys(_FILES)


def _joined(lines: list[str] | None) -> str | None:
    return None if lines is None else "\n".join(lines)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def parse(text: str | None) -> dict[str, Any] | None:
    """A daemon.json's object; {} for no file; None when it is not a JSON object (Python's
    NaN and Infinity extensions included: dockerd refuses them)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text, parse_constant=_not_json)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def render(config: dict[str, Any]) -> str:
    """The file's text: stable key order, so equal configs give equal files; strict JSON
    (what JSON cannot say is refused, never written)."""
    return json_text(config, "daemon.json", indent=2, sort_keys=True) + "\n"


def _set(config: dict[str, Any], path: KeyPath, value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(config.get(key), dict):
            config[key] = {}
        config = config[key]
    config[path[-1]] = copy.deepcopy(value)


def _delete(config: dict[str, Any], path: KeyPath) -> None:
    parents = [config]
    for key in path[:-1]:
        child = parents[-1].get(key)
        if not isinstance(child, dict):
            return
        parents.append(child)
    parents[-1].pop(path[-1], None)
    for parent, key in zip(reversed(parents[:-1]), reversed(path[:-1]), strict=True):
        if parent.get(key) == {}:
            del parent[key]  # an object left empty by our removal goes too


def merge(base: dict[str, Any], managed: Managed, no_longer: list[KeyPath]) -> dict[str, Any]:
    """``base`` with ``managed`` set and the ``no_longer`` managed paths removed."""
    result = copy.deepcopy(base)
    for path in no_longer:
        _delete(result, path)
    for path, value in managed.items():
        _set(result, path, value)
    return result


def holds(config: dict[str, Any], managed: Managed) -> list[str]:
    """The managed keys whose value in ``config`` differs (``a.b``); empty when all hold."""
    wrong = []
    for path, value in managed.items():
        node: Any = config
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node != value:
            wrong.append(".".join(path))
    return wrong


# Per run and host, in planning order: (layer, the file and ownership its merge leads to).
# pyinfra may evaluate an operation more than once (change detection, then execution), so
# a layer's merge always starts from the merge planned before it, never from its own.
_PLANNED: WeakKeyDictionary[Any, tuple[Any, list]] = WeakKeyDictionary()


def _starting_point(layer: str) -> tuple[dict[str, Any], dict[str, list], str | None, Any]:
    """(base object, owned paths, corrupt text or None, the last-good object) for this
    layer's merge on this host; the last-good object only for the merge that read the files
    (the run's first), else None."""
    state, chain = _PLANNED.get(ctx_host.get(), (None, []))
    if state is not host.state:
        chain = []
        _PLANNED[ctx_host.get()] = (host.state, chain)
    layers = [name for name, _ in chain]
    before = chain[: layers.index(layer)] if layer in layers else chain
    if before:
        new, new_owned = before[-1][1]
        return new, new_owned, None, None
    files = host.get_fact(DaemonJson)
    owned = parse(files["owned"]) or {}
    current = parse(files["current"])
    last_good = parse(files["last_good"])
    if current is None:
        return last_good or {}, owned, files["current"], last_good
    return current, owned, None, last_good


def _first_merge(layer: str) -> bool:
    """This layer's merge is the run's first on this host (the one that read the files)."""
    _, chain = _PLANNED[ctx_host.get()]
    return chain[0][0] == layer


def _record(layer: str, new: dict[str, Any], new_owned: dict[str, list]) -> None:
    _, chain = _PLANNED[ctx_host.get()]
    if layer not in [name for name, _ in chain]:
        chain.append((layer, (new, new_owned)))


@operation()
def merged(layer: str, managed: Managed, restart_timeout_s: int = 90):
    """Merge ``layer``'s keys into daemon.json; apply with validation, restart and rollback.

    + layer: who owns these keys (``docker``, ``toolkit``): a later run removes what it drops
    + managed: key path -> value this layer wants in the file
    + restart_timeout_s: how long dockerd may take to answer after the restart
    """
    base, owned, corrupt, last_good = _starting_point(layer)
    paths = sorted(managed)
    no_longer = [tuple(p) for p in owned.get(layer, []) if tuple(p) not in managed]
    new = merge(base, managed, no_longer)
    new_owned = {**owned, layer: [list(p) for p in paths]}
    _record(layer, new, new_owned)
    if new == base and new_owned == owned and corrupt is None:
        if _first_merge(layer) and last_good != new:
            yield StringCommand(f"mkdir -p {STATE_DIR} && cp -p {DAEMON_JSON} {LAST_GOOD}")
            return
        host.noop(f"daemon.json already holds the {layer} keys")
        return
    staged, staged_owned = render(new), render(new_owned)  # before anything is sent
    yield StringCommand(f"mkdir -p {STATE_DIR}")
    yield _upload(staged, STAGED)
    yield _upload(staged_owned, STAGED_OWNED)
    restart = new != base or corrupt is not None
    yield StringCommand(apply_script(restart, restart_timeout_s, corrupt is not None))


def _upload(text: str, dest: str) -> FileUploadCommand:
    return FileUploadCommand(
        StringIO(text), dest, remote_temp_filename=host.get_temp_filename(dest)
    )


def apply_script(restart: bool, timeout_s: int, corrupt: bool) -> str:
    """Shell that puts the staged files in place, restarting Docker with rollback
    (operations/kit/scripts/daemon_json_apply.sh)."""
    return scripts.render(
        "daemon_json_apply",
        STAGED=STAGED,
        STAGED_OWNED=STAGED_OWNED,
        LIVE=DAEMON_JSON,
        PREV=f"{STATE_DIR}/daemon.json.prev",
        LAST_GOOD=LAST_GOOD,
        OWNED=OWNED,
        RESTART="yes" if restart else "no",
        CORRUPT="yes" if corrupt else "no",
        TIMEOUT=int(timeout_s),
    )
