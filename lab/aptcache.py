"""The lab's shared package cache: apt-cacher-ng in a container on the Docker bridge.

`python -m lab up` starts it (`--no-apt-cache` leaves it out) and every lab host then
fetches its packages through it (`deploy_apt_proxy`, written by the deploy's package-manager
step), so N hosts download each package from the mirror once. It runs from the lab's own
host image and installs Debian's apt-cacher-ng at its first start; its config is ours (no
mirror remapping: it caches exactly the URLs the hosts ask for, on any port the lab uses).
`lab down` leaves it, with its cache.

`ResponseFreezeDetectTime`: Debian 12's apt-cacher-ng (3.7.4) moves a volatile file's copy
that is still downloading "out of the way" when now > download start + this time, and the
start stays 0 until the mirror's headers arrive: so every new request for a cold InRelease
moves the first one's copy aside instead of sharing it, to `<file>.<unix seconds>`. Two such
moves in the same second fail ("Failure to move file … InRelease … File exists"), that
request gets an error page and apt waits on the closed connection for ever. With 16 hosts
updating at once, 8, 1 and 11 of 16 `apt-get update`s hung in three cold runs (1, 4 and 8
hosts rarely land in the same second). A value above the current Unix time (valid until
2033; the maximum is 2^31-1) makes the test false, so all requests share one download: 5
cold runs of 16 clients and one of 32, no hang, no error. What it costs: a download that is
really stuck is failed by acng's network timeout instead of being replaced. apt's own
timeouts and retries did not help, nor did warming the indexes with one client first.
"""

from __future__ import annotations

import hashlib
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
    "ResponseFreezeDetectTime: 2000000000\\n"
)
START = (
    "command -v apt-cacher-ng >/dev/null || { apt-get update -qq && "
    "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq apt-cacher-ng >/dev/null 2>&1; }; "
    f"mkdir -p /etc/gpufleet-acng && printf '{CONFIG}' > /etc/gpufleet-acng/acng.conf && "
    "exec /usr/sbin/apt-cacher-ng -c /etc/gpufleet-acng ForeGround=1"
)
_VERSION = hashlib.sha256(START.encode()).hexdigest()[
    :12
]  # a container of another config is replaced
_PROBE = f"import socket; socket.create_connection(('127.0.0.1', {PORT}), 2)"


def _inspect() -> dict | None:
    found = docker("inspect", CONTAINER, check=False)
    return json.loads(found.stdout)[0] if found.returncode == 0 else None


def ensure(log: Log = print) -> str:
    """The cache running; returns its proxy URL on the bridge (what hosts use)."""
    info = _inspect()
    if info is not None and info["Config"]["Labels"].get(f"{LABEL}.aptcache") != _VERSION:
        log(f"replacing {CONTAINER}: its config is not the current one")
        remove()
        info = None
    if info is None:
        log(f"creating {CONTAINER} (shared apt cache)")
        docker("run", "-d", "--name", CONTAINER, "--label", f"{LABEL}.aptcache={_VERSION}",
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
