"""The lab hosts as Docker containers: names, ports, `docker create` arguments, and the
listing of the hosts that exist (the containers are the source of truth).

Host i (1..N) is container `gpufleet-lab-<i>` with hostname `lab-<i>`: systemd as PID 1,
sshd published on 127.0.0.1:<port> only (ports from 2221), and a named volume
`gpufleet-lab-<i>-docker` at /var/lib/docker so a Docker engine installed inside has a
real file system for its storage (overlay2 cannot sit on the container's own overlay).
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lab import IMAGE, LABEL, LabError
from lab.engine import docker, ip_of
from lab.image import STOP_SIGNAL
from lab.keys import (
    LOOPBACK,
)

KEYS_LABEL = f"{LABEL}.keys"
PORT_BASE = 2221
PORT_SPAN = 1000
MAX_HOSTS = 64
_NAME_RE = re.compile(r"^gpufleet-lab-([1-9][0-9]*)$")


def host_name(i: int) -> str:
    return f"lab-{i}"


def container_name(i: int) -> str:
    return f"gpufleet-lab-{i}"


def volume_name(i: int) -> str:
    return f"gpufleet-lab-{i}-docker"


def parse_index(name: str) -> int | None:
    """i for a container named gpufleet-lab-<i> (with or without docker's leading /)."""
    match = _NAME_RE.match(name.lstrip("/"))
    return int(match.group(1)) if match else None


@dataclass
class Container:
    index: int
    name: str
    status: str  # docker's State.Status: created, running, exited, paused, dead...
    port: int | None  # host port published for 22/tcp
    image: str  # image id
    keys: str = ""  # KEYS_LABEL: which controller key and host key were put in
    ip: str = ""  # address on the Docker bridge: where the controller reaches its services


def parse_container(info: dict) -> Container | None:
    """A Container from one `docker inspect` object, or None if it is no lab host."""
    name = str(info.get("Name", "")).lstrip("/")
    index = parse_index(name)
    if index is None:
        return None
    bindings = ((info.get("HostConfig") or {}).get("PortBindings") or {}).get("22/tcp") or []
    port = None
    for binding in bindings:
        value = str(binding.get("HostPort") or "")
        if value.isdigit():
            port = int(value)
            break
    status = str((info.get("State") or {}).get("Status", "unknown"))
    labels = (info.get("Config") or {}).get("Labels") or {}
    image = str(info.get("Image", ""))
    keys = str(labels.get(KEYS_LABEL, ""))
    return Container(index, name, status, port, image, keys, ip_of(info))


def pick_port(
    taken: Iterable[int],
    is_free: Callable[[int], bool],
    preferred: int | None = None,
    start: int = PORT_BASE,
    span: int = PORT_SPAN,
) -> int:
    """`preferred` if it is neither taken nor busy, else the lowest such port from `start`."""
    taken = set(taken)
    if preferred and preferred not in taken and is_free(preferred):
        return preferred
    for port in range(start, start + span):
        if port not in taken and is_free(port):
            return port
    raise LabError(f"no free TCP port on {LOOPBACK} between {start} and {start + span - 1}")


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on host:port (we can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def create_args(i: int, port: int, cgroup: int, image: str = IMAGE, keys: str = "") -> list[str]:
    """`docker create` arguments for host i: systemd as PID 1 without --privileged."""
    return container_args(
        container_name(i), host_name(i), volume_name(i), port, cgroup, image=image, keys=keys
    )


def container_args(
    name: str,
    hostname: str,
    volume: str,
    port: int,
    cgroup: int,
    image: str = IMAGE,
    keys: str = "",
    extra: tuple[str, ...] = (),
) -> list[str]:
    """`docker create` arguments for a lab host named `name` (create_args; lab/gpu.py's
    GPU hosts, which add their mounts and labels as `extra`)."""
    args = [
        "create",
        "--name", name,
        "--hostname", hostname,
        "--label", f"{LABEL}=1",
        "--label", f"{LABEL}.host={hostname}",
        "--label", f"{KEYS_LABEL}={keys}",
        "--restart", "no",
        "--stop-signal", STOP_SIGNAL,
        "--cap-add", "ALL",
        "--cap-drop", "SYS_RESOURCE",
        "--security-opt", "seccomp=unconfined",
        "--security-opt", "apparmor=unconfined",
        "--tmpfs", "/run",
        "--tmpfs", "/run/lock",
        "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    ]  # fmt: skip
    if cgroup == 2:
        # systemd needs to manage its own subtree: share the host's cgroup namespace, like
        # Molecule's and geerlingguy's systemd images do.
        args.append("--cgroupns=host")
    args += [
        "-v", f"{volume}:/var/lib/docker",
        "-p", f"{LOOPBACK}:{port}:22",
        *extra,
        image,
    ]  # fmt: skip
    return args


def list_containers() -> dict[int, Container]:
    """The lab's containers by host index (all states)."""
    names = docker(
        "ps", "-a", "--filter", f"label={LABEL}=1", "--format", "{{.Names}}"
    ).stdout.split()
    names = [n for n in names if parse_index(n) is not None]
    if not names:
        return {}
    infos = json.loads(docker("inspect", "--type", "container", *names).stdout or "[]")
    found = {}
    for info in infos:
        container = parse_container(info)
        if container:
            found[container.index] = container
    return found


def remove_host(i: int) -> None:
    docker("rm", "-f", container_name(i), check=False)
    docker("volume", "rm", "-f", volume_name(i), check=False)
