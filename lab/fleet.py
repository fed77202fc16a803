"""Bring lab hosts up, down, and report on them.

The hosts are containers (lab/hosts.py), reached over SSH with pinned keys once ready
(lab/ready.py); `.lab/state.json` is written from the containers, the source of truth.

Next to the hosts, the container `gpufleet-lab-repo` (lab/repo.py) serves the STAND-IN NVIDIA
Container Toolkit repository to them over the Docker bridge. It carries the lab label too, but
its name is no host's, so the host listing below never sees it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab import LABEL, LabError, aptcache, gpu
from lab.engine import Log, cgroup_version, docker, engine_answers, ensure_engine
from lab.hosts import (
    MAX_HOSTS,
    Container,
    container_name,
    create_args,
    host_name,
    list_containers,
    parse_index,
    pick_port,
    port_is_free,
    remove_host,
    volume_name,
)
from lab.image import ensure_image, image_id
from lab.keys import (
    known_hosts_line,
    public_key,
    write_known_hosts,
)
from lab.ready import Paths, ensure_keys, keys_id, keys_payload, probe, wait_ready
from lab.repo import ensure_repo, remove_repo, status_line
from lab.state import load_state, make_state, remove_state, save_state, state_path


def _create_host(i: int, paths: Paths, cgroup: int, taken: set[int], preferred: int | None) -> int:
    """(Re)create host i from scratch, put its keys in, start it; returns its port."""
    payload = keys_payload(paths, i)
    remove_host(i)
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
            remove_host(i)
    paths = Paths.of(root)
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
    paths: Paths,
    ports: dict[int, int],
    repo: dict | None = None,
    vllm: dict | None = None,
    apt_proxy: str | None = None,
    dcgm: dict | None = None,
) -> Path:
    lines = [known_hosts_line(ports[i], public_key(paths.hostkey(i))) for i in sorted(ports)]
    write_known_hosts(paths.known_hosts, lines)
    ips = {i: c.ip for i, c in list_containers().items()}
    hosts = [(host_name(i), container_name(i), ports[i], ips.get(i, "")) for i in sorted(ports)]
    state = make_state(
        hosts, paths.key, paths.known_hosts, toolkit_repo=repo, vllm_standin=vllm,
        apt_proxy=apt_proxy, dcgm_standin=dcgm,
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


def ensure_standin_dcgm(root: Path, log: Log = print) -> dict:
    """The STAND-IN dcgm-exporter image (tests/standins/dcgm), built if needed (its recipe
    hash: nothing is rebuilt while server.py, the counters CSV and the recipe stay the same)
    and saved as a tarball the deploy loads on GPU hosts (monitoring_dcgm_image_archive)."""
    try:
        from tests.standins.dcgm.image import IMAGE as DCGM_IMAGE
        from tests.standins.dcgm.image import save_tar
    except ImportError as exc:  # the lab runs from a checkout, which has tests/
        raise LabError(f"cannot load the stand-in dcgm-exporter image builder: {exc}") from None
    return {"image": DCGM_IMAGE, "archive": str(save_tar(root, log=log))}


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
    dcgm = ensure_standin_dcgm(root, log)
    timings["dcgm_image"] = time.monotonic() - t
    t = time.monotonic()
    apt_proxy = aptcache.ensure(log) if apt_cache else None
    timings["apt_cache"] = time.monotonic() - t
    t = time.monotonic()
    paths = Paths.of(root)
    ensure_keys(paths, count)
    ports = _reconcile(root, count, list_containers(), log)
    _write_trust_and_state(root, paths, ports, repo, vllm, apt_proxy, dcgm)
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
        gpu.down(root, log)  # the STAND-IN GPU hosts beside them (lab/gpu.py)
        volumes = docker("volume", "ls", "-q", "--filter", f"label={LABEL}=1").stdout.split()
        volumes += [volume_name(i) for i in containers if volume_name(i) not in volumes]
        for volume in volumes:
            docker("volume", "rm", "-f", volume, check=False)
        if remove_repo():
            log("removed the stand-in toolkit repository container")
    remove_state(root)
    paths = Paths.of(root)
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
    paths = Paths.of(root)
    rows = []
    indices = sorted(set(in_state) | set(containers))
    running = {i: c.port for i, c in containers.items() if c.status == "running" and c.port}
    reach = {}
    if running and state and paths.known_hosts.exists():
        with ThreadPoolExecutor(max_workers=min(16, len(running))) as pool:
            results = pool.map(lambda p: probe(paths, p, "true")[0], running.values())
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
