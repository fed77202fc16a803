"""Bring lab hosts up, down, and report on them.

Host i (1..N) is container `gpufleet-lab-<i>` with hostname `lab-<i>`: systemd as PID 1,
sshd published on 127.0.0.1:<port> only (ports from 2221), and a named volume
`gpufleet-lab-<i>-docker` at /var/lib/docker so a Docker engine installed inside has a
real file system for its storage (overlay2 cannot sit on the container's own overlay).
The containers are the source of truth; `.lab/state.json` is written from them.

Next to the hosts, the container `gpufleet-lab-repo` (lab/repo.py) serves the STAND-IN NVIDIA
Container Toolkit repository to them over the Docker bridge. It carries the lab label too, but
its name is no host's, so the host listing below never sees it.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lab import IMAGE, LABEL, LabError, aptcache, lab_dir
from lab.engine import Log, cgroup_version, docker, engine_answers, ensure_engine, ip_of
from lab.image import STOP_SIGNAL, ensure_image, image_id
from lab.keys import (
    CONTROLLER_KEY,
    HOSTKEY_DIR,
    KNOWN_HOSTS,
    LOOPBACK,
    ensure_keypair,
    injection_tar,
    known_hosts_line,
    public_key,
    ssh_command,
    write_known_hosts,
)
from lab.repo import ensure_repo, remove_repo, status_line
from lab.state import load_state, make_state, remove_state, save_state, state_path

PORT_BASE = 2221
PORT_SPAN = 1000
MAX_HOSTS = 64
READY_TIMEOUT = 90.0
KEYS_LABEL = f"{LABEL}.keys"
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
    args = [
        "create",
        "--name", container_name(i),
        "--hostname", host_name(i),
        "--label", f"{LABEL}=1",
        "--label", f"{LABEL}.host={host_name(i)}",
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
        "-v", f"{volume_name(i)}:/var/lib/docker",
        "-p", f"{LOOPBACK}:{port}:22",
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


def _remove_host(i: int) -> None:
    docker("rm", "-f", container_name(i), check=False)
    docker("volume", "rm", "-f", volume_name(i), check=False)


@dataclass
class _Paths:
    key: Path
    known_hosts: Path
    hostkeys: Path

    @classmethod
    def of(cls, root: Path) -> _Paths:
        base = lab_dir(root)
        return cls(base / CONTROLLER_KEY, base / KNOWN_HOSTS, base / HOSTKEY_DIR)

    def hostkey(self, i: int) -> Path:
        return self.hostkeys / host_name(i)


def keys_id(paths: _Paths, i: int) -> str:
    """Fingerprint of the controller key and host i's key, as put into its container.

    A container made by another checkout (another .lab/) carries other keys: `up` sees the
    mismatch and recreates it instead of waiting for an SSH login that cannot succeed.
    """
    material = public_key(paths.key) + public_key(paths.hostkey(i))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _keys_payload(paths: _Paths, i: int) -> bytes:
    """The tar that puts host i's pinned host key and root's authorized_keys in place."""
    hostkey = paths.hostkey(i)
    return injection_tar(
        hostkey.read_bytes(),
        Path(f"{hostkey}.pub").read_bytes(),
        (public_key(paths.key) + " gpufleet-lab\n").encode(),
    )


def _create_host(i: int, paths: _Paths, cgroup: int, taken: set[int], preferred: int | None) -> int:
    """(Re)create host i from scratch, put its keys in, start it; returns its port."""
    payload = _keys_payload(paths, i)
    _remove_host(i)
    for _attempt in range(5):
        port = pick_port(taken, port_is_free, preferred)
        docker("volume", "create", "--label", f"{LABEL}=1", volume_name(i))
        docker(*create_args(i, port, cgroup, keys=keys_id(paths, i)))
        # Before sshd ever runs: its host key and root's authorized_keys.
        docker("cp", "-", f"{container_name(i)}:/", input=payload, text=False)
        started = docker("start", container_name(i), check=False)
        if started.returncode == 0:
            taken.add(port)
            return port
        docker("rm", "-f", container_name(i), check=False)
        why = started.stderr.strip()
        if "already allocated" in why or "address already in use" in why:
            taken.add(port)  # lost a race for the port: try the next one
            preferred = None
            continue
        raise LabError(f"cannot start {container_name(i)}: {why.splitlines()[-1:] or '?'}")
    raise LabError(f"cannot find a free port for {container_name(i)}")


def _ensure_keys(paths: _Paths, count: int) -> None:
    ensure_keypair(paths.key, "gpufleet-lab-controller")
    for i in range(1, count + 1):
        ensure_keypair(paths.hostkey(i), host_name(i))


def _previous_ports(root: Path) -> dict[str, int]:
    try:
        state = load_state(root) or {"hosts": []}
    except LabError:
        return {}
    return {h["name"]: h["port"] for h in state["hosts"]}


def _reconcile(root: Path, count: int, existing: dict[int, Container], log: Log) -> dict[int, int]:
    """Make hosts 1..count exist and run; returns {index: port}."""
    for i in sorted(existing):
        if i > count:
            log(f"removing {container_name(i)}")
            _remove_host(i)
    paths = _Paths.of(root)
    cgroup = cgroup_version()
    previous = _previous_ports(root)
    keep = {i: c for i, c in existing.items() if i <= count}
    taken = {c.port for c in keep.values() if c.port}
    ports = {}
    for i in range(1, count + 1):
        c = keep.get(i)
        preferred = previous.get(host_name(i))
        stale_keys = c is not None and c.keys != keys_id(paths, i)
        if c and (c.status in ("created", "dead", "removing") or not c.port or stale_keys):
            # never started, broken, or holding other keys: make it again
            taken.discard(c.port)
            preferred, c = c.port, None
        if c is None:
            log(f"creating {container_name(i)}")
            ports[i] = _create_host(i, paths, cgroup, taken, preferred)
            continue
        if c.status == "paused":
            docker("unpause", c.name)
        elif c.status != "running":
            log(f"starting {c.name}")
            docker("start", c.name)
        ports[i] = c.port
    return ports


def _probe(paths: _Paths, port: int, command: str = "systemctl is-system-running") -> tuple:
    """(ssh worked, stdout, last stderr line) for `command` on the host at port."""
    try:
        proc = subprocess.run(
            ssh_command(paths.key, paths.known_hosts, port, command),
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "", "ssh timed out"
    if proc.returncode == 255:
        lines = proc.stderr.strip().splitlines()
        return False, "", lines[-1] if lines else "ssh failed"
    return True, proc.stdout.strip(), ""


# What ssh says when a host holds other keys than the lab pinned for it (the last line)
TRUST_REFUSED = ("Host key verification failed", "Permission denied")


def restore_keys(paths: _Paths, i: int) -> bool:
    """Put host i's pinned host key and root's authorized_keys back into its container (as at
    creation) and restart its sshd: the repair of a host whose SSH host key was changed (a
    reinstalled openssh-server, `ssh-keygen -A` after the key went). Its deployed state
    stays. Whether docker did both."""
    name = container_name(i)
    copied = docker("cp", "-", f"{name}:/", input=_keys_payload(paths, i), text=False, check=False)
    if copied.returncode != 0:
        return False
    return docker("exec", name, "systemctl", "restart", "ssh.service", check=False).returncode == 0


def _trust_hint(i: int, port: int) -> str:
    """How to repair a host whose keys the lab could not put back: recreate it."""
    return (
        f"; {host_name(i)} does not hold the lab's pinned SSH keys (.lab/{HOSTKEY_DIR}/"
        f"{host_name(i)}, .lab/{CONTROLLER_KEY}.pub) and putting them back did not repair it: "
        f"recreate it "
        f"with `docker rm -f {container_name(i)}` then `python -m lab up` (then deploy); "
        f"the pin is in .lab/{KNOWN_HOSTS} ([{LOOPBACK}]:{port}), rewritten by every `lab up`"
    )


def wait_ready(root: Path, ports: dict[int, int], timeout: float = READY_TIMEOUT, log=print):
    """Wait until every host answers SSH (strict host key check) and systemd says running
    or degraded. A host that refuses the lab's keys (its host key changed, say) gets them put
    back once (restore_keys). Returns {index: system state}; LabError naming the laggards
    on timeout, with how to recreate a host whose keys could not be put back."""
    paths = _Paths.of(root)
    pending = dict(ports)
    states: dict[int, str] = {}
    why: dict[int, str] = {}
    restored: dict[int, bool] = {}
    deadline = time.monotonic() + timeout
    while pending:
        with ThreadPoolExecutor(max_workers=min(16, len(pending))) as pool:
            results = dict(
                zip(pending, pool.map(lambda p: _probe(paths, p), pending.values()), strict=True)
            )
        for i, (ok, out, err) in results.items():
            state = out.splitlines()[-1] if out else ""
            if ok and state in ("running", "degraded"):
                states[i] = state
                del pending[i]
            else:
                why[i] = f"systemd is {state or '?'}" if ok else err
                if not ok and i not in restored and err.startswith(TRUST_REFUSED):
                    restored[i] = restore_keys(paths, i)
                    log(
                        f"  {host_name(i)}: {err.rstrip('.')} (not the lab's pinned keys): "
                        + (
                            "put them back, sshd restarted"
                            if restored[i]
                            else "cannot put them back"
                        )
                    )
        if not pending:
            break
        if time.monotonic() > deadline:
            names = ", ".join(f"{host_name(i)} ({why.get(i, '?')})" for i in sorted(pending))
            raise LabError(
                f"not ready after {timeout:.0f}s: {names}; see `docker logs gpufleet-lab-N`"
                + "".join(_trust_hint(i, ports[i]) for i in sorted(pending) if i in restored)
                + _exited_hint(pending)
            )
        time.sleep(1.0)
    for i in sorted(states):
        if states[i] == "degraded":
            _ok, failed, _err = _probe(
                paths, ports[i], "systemctl list-units --failed --plain --no-legend"
            )
            units = " ".join(line.split()[0] for line in failed.splitlines() if line.strip())
            log(f"  {host_name(i)} is degraded; failed units: {units or '(none listed)'}")
    return states


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


def _exited_hint(pending: dict[int, int]) -> str:
    """Why hosts whose container exited at start may have: each host's systemd takes inotify
    instances, and with the common default of 128 the 23rd host's systemd exits (status 255,
    no output) on the lab machine; 512 ran 32 hosts."""
    found = list_containers()
    exited = [container_name(i) for i in pending if i in found and found[i].status == "exited"]
    if not exited or not INOTIFY_INSTANCES.exists():
        return ""
    limit = INOTIFY_INSTANCES.read_text().strip()
    return (
        f"; {len(exited)} container(s) exited at start: with fs.inotify.max_user_instances = "
        f"{limit}, systemd may have run out of inotify instances (128 ran 22 hosts here): "
        "sysctl -w fs.inotify.max_user_instances=512"
    )


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain left-aligned text table."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _write_trust_and_state(
    root: Path,
    paths: _Paths,
    ports: dict[int, int],
    repo: dict | None = None,
    vllm: dict | None = None,
    apt_proxy: str | None = None,
) -> Path:
    lines = [known_hosts_line(ports[i], public_key(paths.hostkey(i))) for i in sorted(ports)]
    write_known_hosts(paths.known_hosts, lines)
    ips = {i: c.ip for i, c in list_containers().items()}
    hosts = [(host_name(i), container_name(i), ports[i], ips.get(i, "")) for i in sorted(ports)]
    state = make_state(
        hosts, paths.key, paths.known_hosts, toolkit_repo=repo, vllm_standin=vllm,
        apt_proxy=apt_proxy,
    )  # fmt: skip
    return save_state(root, state)


def ensure_standin_vllm(root: Path, log: Log = print) -> dict:
    """The STAND-IN vLLM image (tests/standins/vllm), built if needed and saved as a tarball
    the deploy loads into each host's engine (vllm_image_archive): the lab has no registry."""
    try:
        from tests.standins.vllm.image import IMAGE as VLLM_IMAGE
        from tests.standins.vllm.image import save_tar
    except ImportError as exc:  # the lab runs from a checkout, which has tests/
        raise LabError(f"cannot load the stand-in vLLM image builder: {exc}") from None
    return {"image": VLLM_IMAGE, "archive": str(save_tar(root, log=log))}


def up(
    root: Path,
    count: int = 3,
    mirror: str | None = None,
    log: Log = print,
    apt_cache: bool = True,
) -> dict:
    """Engine, image, `count` hosts reachable over SSH, state file. Idempotent.
    Returns {"timings": {phase: seconds}, "hosts": {name: system state}}."""
    if not 1 <= count <= MAX_HOSTS:
        raise LabError(f"--hosts must be between 1 and {MAX_HOSTS}, not {count}")
    root = Path(root)
    timings = {}
    t = time.monotonic()
    ensure_engine(log)
    timings["engine"] = time.monotonic() - t
    t = time.monotonic()
    ensure_image(root, mirror=mirror, log=log)
    timings["image"] = time.monotonic() - t
    t = time.monotonic()
    repo = ensure_repo(root, log)
    timings["repo"] = time.monotonic() - t
    t = time.monotonic()
    vllm = ensure_standin_vllm(root, log)
    timings["vllm_image"] = time.monotonic() - t
    t = time.monotonic()
    apt_proxy = aptcache.ensure(log) if apt_cache else None
    timings["apt_cache"] = time.monotonic() - t
    t = time.monotonic()
    paths = _Paths.of(root)
    _ensure_keys(paths, count)
    ports = _reconcile(root, count, list_containers(), log)
    _write_trust_and_state(root, paths, ports, repo, vllm, apt_proxy)
    timings["hosts"] = time.monotonic() - t
    t = time.monotonic()
    states = wait_ready(root, ports, log=log)
    timings["ssh"] = time.monotonic() - t
    current = image_id()
    stale = [c.name for i, c in list_containers().items() if current and c.image != current]
    rows = [[host_name(i), container_name(i), str(ports[i]), states[i]] for i in sorted(ports)]
    log(format_table(["HOST", "CONTAINER", "SSH PORT", "SYSTEMD"], rows))
    log(f"stand-in toolkit repo: {repo['url']} (key {repo['fingerprint']})")
    if stale:
        log(f"note: {', '.join(stale)} run an older image; `python -m lab down` then `up`")
    log(
        "ready in "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        + ": pyinfra inventory/lab.py deploy.py"
    )
    hosts = {host_name(i): states[i] for i in ports}
    return {"timings": timings, "hosts": hosts, "toolkit_repo": repo}


def serve_repo(root: Path, log: Log = print) -> dict:
    """Only the stand-in toolkit repository: build it (cached), serve it, and record it in
    the state file when a fleet is up. The hosts are not touched. Returns its state entry."""
    root = Path(root)
    ensure_engine(log)
    ensure_image(root, log=log)
    started = time.monotonic()
    repo = ensure_repo(root, log)
    state = load_state(root)
    if state is not None and state.get("toolkit_repo") != repo:
        save_state(root, {**state, "toolkit_repo": repo})
        log(f"updated {state_path(root)}")
    log(
        f"stand-in toolkit repo: {repo['url']} (key {repo['fingerprint']}) "
        f"in {time.monotonic() - started:.1f}s"
    )
    return repo


def down(root: Path, log: Log = print) -> int:
    """Remove the lab containers (hosts and the stand-in repository's), their volumes, the
    state file and known_hosts (the image, the keys and the built repository stay).
    Idempotent; returns how many host containers were removed."""
    root = Path(root)
    removed = 0
    try:
        ensure_engine(log)
    except LabError as exc:
        log(f"warning: {exc}; only the state file is removed")
    else:
        containers = list_containers()
        if containers:
            docker("rm", "-f", *(c.name for c in containers.values()))
            removed = len(containers)
        volumes = docker("volume", "ls", "-q", "--filter", f"label={LABEL}=1").stdout.split()
        volumes += [volume_name(i) for i in containers if volume_name(i) not in volumes]
        for volume in volumes:
            docker("volume", "rm", "-f", volume, check=False)
        if remove_repo():
            log("removed the stand-in toolkit repository container")
    remove_state(root)
    paths = _Paths.of(root)
    if paths.known_hosts.exists():
        paths.known_hosts.unlink()
    log(f"lab is down ({removed} host{'s' if removed != 1 else ''} removed)")
    return removed


def status(root: Path, log: Log = print) -> list[list[str]]:
    """Print and return rows of (host, container, state, ssh port, reachable)."""
    root = Path(root)
    state = load_state(root)
    engine = engine_answers()
    containers = list_containers() if engine else {}
    in_state = {}
    for host in (state or {}).get("hosts", []):
        index = parse_index(host["container"])
        if index is not None:
            in_state[index] = host["port"]
    paths = _Paths.of(root)
    rows = []
    indices = sorted(set(in_state) | set(containers))
    running = {i: c.port for i, c in containers.items() if c.status == "running" and c.port}
    reach = {}
    if running and state and paths.known_hosts.exists():
        with ThreadPoolExecutor(max_workers=min(16, len(running))) as pool:
            results = pool.map(lambda p: _probe(paths, p, "true")[0], running.values())
            reach = dict(zip(running, results, strict=True))
    for i in indices:
        c = containers.get(i)
        cstate = c.status if c else ("missing" if engine else "unknown (no engine)")
        port = (c.port if c else None) or in_state.get(i)
        reachable = "yes" if reach.get(i) else "no"
        rows.append([host_name(i), container_name(i), cstate, str(port or "-"), reachable])
    if rows:
        log(format_table(["HOST", "CONTAINER", "STATE", "SSH PORT", "REACHABLE"], rows))
    else:
        log("no lab hosts: run `python -m lab up`")
    log(status_line((state or {}).get("toolkit_repo"), engine))
    if not engine:
        log("note: no Docker engine answers")
    return rows
