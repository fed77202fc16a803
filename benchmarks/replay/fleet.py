"""A STAND-IN fleet of simulated hosts: start the replay server, write the inventory for it.

The inventory (``DIR/sim.py``, reading ``DIR/hosts.json``) lists every simulated host in the
group ``lab``, so group_data/lab.py applies as to the recorded lab host, with the recorded
host's data, its own name and address, and SSH to its loopback port with the replay client
key, host keys checked strictly against the replay's known_hosts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.replay.server import known_hosts

ROOT = Path(__file__).resolve().parents[2]
_INVENTORY = '''"""STAND-IN inventory: simulated replay hosts (benchmarks/replay), no real fleet."""

import json as _json
import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, {root!r})
from operations.config.load import checked_hosts as _checked_hosts  # noqa: E402

_hosts = _json.loads((_Path({here!r}) / "hosts.json").read_text())
lab = _checked_hosts([(name, data) for name, data in _hosts["hosts"]])
monitoring = list(_hosts["monitoring"])
'''


def start(
    work: Path, names: list[str], recording: Path | None, proxy: Path | None = None,
    nofile: int = 0, timeout: float = 120,
) -> tuple[subprocess.Popen, dict[str, int]]:  # fmt: skip
    """The replay server as its own process (its CPU apart from the controller's) and the
    port of each simulated host, once it listens."""
    ready = work / "ports.json"
    ready.unlink(missing_ok=True)
    (work / "misses.log").unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.replay", "serve", "--dir", str(work),
               "--names", ",".join(names), "--nofile", str(nofile)]  # fmt: skip
    command += ["--recording", str(recording)] if recording else ["--proxy", str(proxy)]
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"replay server did not start: see {work / 'server.log'}")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())


def ssh_data(work: Path, port: int) -> dict[str, Any]:
    """SSH to a simulated host's port with the replay client key, its host key pinned."""
    return {
        "ssh_hostname": "127.0.0.1", "ssh_port": port, "ssh_user": "root",
        "ssh_key": str(work / "client_key"), "ssh_known_hosts_file": str(work / "known_hosts"),
        "ssh_strict_host_key_checking": "yes",
    }  # fmt: skip


def write_inventory(
    work: Path, ports: dict[str, int], hosts: list[tuple[str, dict[str, Any]]],
    monitoring: list[str] = (),
) -> Path:  # fmt: skip
    """``DIR/sim.py``: ``hosts`` [(name, data)] in group ``lab``, those in ``ports`` ({name:
    port}) reached at their simulated port through the pinned replay host key."""
    known_hosts(work, ports)
    entries = [(name, {**data, **ssh_data(work, ports[name])} if name in ports else data)
               for name, data in hosts]  # fmt: skip
    (work / "hosts.json").write_text(json.dumps({"hosts": entries, "monitoring": monitoring}))
    path = work / "sim.py"
    path.write_text(_INVENTORY.format(root=str(ROOT), here=str(work)))
    os.chmod(path, 0o644)
    return path
