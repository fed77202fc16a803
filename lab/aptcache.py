"""The lab's shared package cache (`python -m lab up --apt-cache`): apt-cacher-ng in a
container on the Docker bridge.

Every lab host then fetches its packages through it (`deploy_apt_proxy`, written by the
deploy's package-manager step), so N hosts download each package from the mirror once. It runs
from the lab's own host image and installs Debian's apt-cacher-ng at its first start; its
config is ours (no mirror remapping: it caches exactly the URLs the hosts ask for, on any port
the lab uses). `lab down` leaves it, with its cache.

Opt-in: with 16 hosts asking for the same cold files at once, apt-cacher-ng logged "Failure
to move file … File exists" and two hosts' `apt-get update` hung (16 minutes, then stopped by
hand); at 1, 4 and 8 hosts it worked.
"""

from __future__ import annotations

import json
import time

from lab import IMAGE, LABEL, LabError
from lab.engine import Log, docker, ip_of

CONTAINER = "gpufleet-lab-aptcache"
PORT = 3142
CACHE_DIR = "/var/cache/apt-cacher-ng"
READY_TIMEOUT = 300.0
CONFIG = (
    f"CacheDir: {CACHE_DIR}\\nLogDir: /var/log/apt-cacher-ng\\nPort: {PORT}\\n"
    "AllowUserPorts: 80 8080\\nPassThroughPattern: .*\\nExThreshold: 4\\n"
)
START = (
    "command -v apt-cacher-ng >/dev/null || { apt-get update -qq && "
    "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq apt-cacher-ng >/dev/null 2>&1; }; "
    f"mkdir -p /etc/gpufleet-acng && printf '{CONFIG}' > /etc/gpufleet-acng/acng.conf && "
    "exec /usr/sbin/apt-cacher-ng -c /etc/gpufleet-acng ForeGround=1"
)
_PROBE = f"import socket; socket.create_connection(('127.0.0.1', {PORT}), 2)"


def _inspect() -> dict | None:
    found = docker("inspect", CONTAINER, check=False)
    return json.loads(found.stdout)[0] if found.returncode == 0 else None


def ensure(log: Log = print) -> str:
    """The cache running; returns its proxy URL on the bridge (what hosts use)."""
    info = _inspect()
    if info is None:
        log(f"creating {CONTAINER} (shared apt cache)")
        docker("run", "-d", "--name", CONTAINER, "--label", f"{LABEL}.aptcache=1",
               "--entrypoint", "sh", IMAGE, "-c", START)  # fmt: skip
    elif info["State"]["Status"] != "running":
        docker("start", CONTAINER)
    deadline = time.monotonic() + READY_TIMEOUT
    while docker("exec", CONTAINER, "python3", "-c", _PROBE, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise LabError(f"{CONTAINER} does not answer: see `docker logs {CONTAINER}`")
        time.sleep(1)
    return f"http://{ip_of(_inspect() or {})}:{PORT}"


def remove() -> bool:
    return docker("rm", "-f", CONTAINER, check=False).returncode == 0
