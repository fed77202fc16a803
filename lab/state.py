"""`.lab/state.json`: what `python -m lab up` brought up, read by inventory/lab.py.

    {"hosts": [{"name": "lab-1", "container": "gpufleet-lab-1", "port": 2221}, ...],
     "ssh_key": "/abs/.lab/id_ed25519", "known_hosts": "/abs/.lab/known_hosts",
     "image": "gpufleet-lab:debian12"}

Only the standard library is used, so pyinfra inventories can import this module cheaply.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lab import IMAGE, LabError, lab_dir

STATE_FILE = "state.json"


def state_path(root: str | Path) -> Path:
    return lab_dir(Path(root)) / STATE_FILE


def validate_state(data: Any, where: str = STATE_FILE) -> dict[str, Any]:
    """`data` if it has the state file's shape; LabError naming `where` otherwise."""
    problem = None
    if not isinstance(data, dict):
        problem = "not a JSON object"
    elif not isinstance(data.get("hosts"), list):
        problem = "no 'hosts' list"
    elif not all(isinstance(data.get(k), str) for k in ("ssh_key", "known_hosts")):
        problem = "no 'ssh_key'/'known_hosts' paths"
    else:
        for host in data["hosts"]:
            if not (
                isinstance(host, dict)
                and isinstance(host.get("name"), str)
                and isinstance(host.get("container"), str)
                and isinstance(host.get("port"), int)
                and not isinstance(host.get("port"), bool)
                and 0 < host["port"] < 65536
            ):
                problem = f"bad host entry {host!r}"
                break
    if problem:
        raise LabError(
            f"{where} is damaged ({problem}): run `python -m lab down` then `python -m lab up`"
        )
    return data


def load_state(root: str | Path) -> dict[str, Any] | None:
    """The lab state under `root` (the repository root), or None when no fleet is up.
    Raises LabError when the file exists but cannot be used."""
    path = state_path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LabError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    return validate_state(data, str(path))


def make_state(
    hosts: list[tuple[str, str, int]], ssh_key: Path, known_hosts: Path, image: str = IMAGE
) -> dict[str, Any]:
    """The state for `hosts` given as (name, container, port)."""
    return {
        "hosts": [{"name": n, "container": c, "port": p} for n, c, p in hosts],
        "ssh_key": str(Path(ssh_key).resolve()),
        "known_hosts": str(Path(known_hosts).resolve()),
        "image": image,
    }


def save_state(root: str | Path, state: dict[str, Any]) -> Path:
    """Write the state atomically; returns its path."""
    path = state_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{STATE_FILE}.tmp")
    tmp.write_text(json.dumps(validate_state(state), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def remove_state(root: str | Path) -> bool:
    """Delete the state file; True if there was one."""
    try:
        state_path(root).unlink()
    except FileNotFoundError:
        return False
    return True


def inventory_hosts(state: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """pyinfra inventory entries `(name, data)` for the hosts of `state`: SSH as root to
    127.0.0.1:<port> with the lab key, host keys checked strictly against known_hosts."""
    return [
        (
            host["name"],
            {
                "ssh_hostname": "127.0.0.1",
                "ssh_port": host["port"],
                "ssh_user": "root",
                "ssh_key": state["ssh_key"],
                "ssh_known_hosts_file": state["known_hosts"],
                "ssh_strict_host_key_checking": "yes",
            },
        )
        for host in state["hosts"]
    ]
