"""The local Docker engine: running commands, and starting one when none answers.

When `docker info` fails and we are root on Debian/Ubuntu, Debian's `docker.io` is installed
(only if `dockerd` is missing) and `dockerd` is started detached, logging to
/var/log/gpufleet-lab-dockerd.log. Anywhere else the user gets one line saying what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lab import LabError

DOCKERD_LOG = "/var/log/gpufleet-lab-dockerd.log"
DEFAULT_SOCKET = "/var/run/docker.sock"
ENGINE_START_TIMEOUT = 60.0

Log = Callable[[str], None]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    input: str | bytes | None = None,
    timeout: float | None = 300,
    text: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run a program, capturing its output; LabError (one line) when it is missing, times out
    or (with check) fails."""
    try:
        proc = subprocess.run(
            list(args),
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            env=env,
            check=False,
        )
    except FileNotFoundError:
        raise LabError(f"`{args[0]}` is not installed (not found on PATH)") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(args[:3])}` did not finish within {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        out = proc.stdout if text else proc.stdout.decode(errors="replace")
        why = _last_line(err) or _last_line(out) or f"exit status {proc.returncode}"
        raise LabError(f"`{' '.join(args[:3])}` failed: {why}")
    return proc


def docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`docker ARGS...` (see `run`)."""
    return run(["docker", *args], **kwargs)


def import_tree(
    rootfs: Path, changes: Sequence[str], image: str, tar_options: Sequence[str] = ()
) -> tuple[subprocess.CompletedProcess, int]:
    """Stream a root filesystem tree into `docker import` (no temporary tarball).

    Returns docker's result and tar's exit status; the caller decides what a failure means.
    """
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", *tar_options, "-c", "."],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    proc = subprocess.run(
        ["docker", "import", *changes, "-", image],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        check=False,
    )
    tar.stdout.close()
    return proc, tar.wait()


def engine_answers() -> bool:
    """True when the docker CLI exists and `docker info` reaches an engine."""
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of /etc/os-release (quotes removed)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value.strip().strip("\"'")
    return values


def is_debian_like(os_release: dict[str, str]) -> bool:
    ids = {os_release.get("ID", "")} | set(os_release.get("ID_LIKE", "").split())
    return bool(ids & {"debian", "ubuntu"})


def _engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def _install_docker_io(log: Log) -> None:
    log("installing Debian's docker.io with apt-get (dockerd is missing)...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], env=env, timeout=900)
    run(
        ["apt-get", "install", "-y", "--no-install-recommends", "docker.io"],
        env=env,
        timeout=1800,
    )


def _wait_for_engine(deadline: float, proc: subprocess.Popen | None) -> bool:
    while time.monotonic() < deadline:
        if engine_answers():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.5)
    return engine_answers()


def _log_tail(path: str) -> str:
    try:
        return _last_line(Path(path).read_text(errors="replace")[-4000:])
    except OSError:
        return ""


def _start_dockerd(log: Log) -> None:
    deadline = time.monotonic() + ENGINE_START_TIMEOUT
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        # systemd is PID 1 on this machine: let it own the engine.
        log("starting docker.service with systemctl...")
        started = subprocess.run(
            ["systemctl", "start", "docker.service"], capture_output=True, check=False
        )
        if started.returncode == 0 and _wait_for_engine(deadline, None):
            return
    log(f"starting dockerd in the background (log: {DOCKERD_LOG})...")
    with open(DOCKERD_LOG, "ab") as logfile:
        proc = subprocess.Popen(
            ["dockerd"],
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # setsid: it outlives this command
            close_fds=True,
        )
    if _wait_for_engine(deadline, proc):
        return
    why = _log_tail(DOCKERD_LOG) or "no output"
    if proc.poll() is None:
        raise LabError(
            f"dockerd did not answer within {ENGINE_START_TIMEOUT:.0f}s (see {DOCKERD_LOG}): {why}"
        )
    raise LabError(f"dockerd exited with status {proc.returncode} (see {DOCKERD_LOG}): {why}")


def ensure_engine(log: Log = print) -> None:
    """Make sure a Docker engine answers, starting (and if need be installing) one when we
    are root on Debian/Ubuntu. Raises LabError saying what is missing otherwise."""
    if engine_answers():
        return
    where = _engine_address()
    if os.environ.get("DOCKER_HOST"):
        raise LabError(f"no Docker engine answers at DOCKER_HOST={where}: start it or unset it")
    if os.geteuid() != 0:
        raise LabError(
            f"no Docker engine answers at {where} and you are not root: start Docker or run as root"
        )
    try:
        os_release = parse_os_release(Path("/etc/os-release").read_text())
    except OSError:
        os_release = {}
    if not is_debian_like(os_release):
        raise LabError(
            f"no Docker engine answers at {where}, and starting one automatically is only "
            "done on Debian or Ubuntu: install and start Docker"
        )
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        _install_docker_io(log)
        if engine_answers():  # the package may have started it already
            return
    _start_dockerd(log)


def cgroup_version() -> int:
    """The engine's cgroup version (1 or 2); the local /sys/fs/cgroup decides as a fallback."""
    proc = subprocess.run(
        ["docker", "info", "--format", "{{.CgroupVersion}}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    value = proc.stdout.strip()
    if proc.returncode == 0 and value in ("1", "2"):
        return int(value)
    return 2 if Path("/sys/fs/cgroup/cgroup.controllers").exists() else 1


def ip_of(info: dict) -> str:
    """A container's address on its Docker network, from `docker inspect` ("" if none)."""
    settings = info.get("NetworkSettings") or {}
    for network in (settings.get("Networks") or {}).values():
        if (network or {}).get("IPAddress"):
            return network["IPAddress"]
    return str(settings.get("IPAddress") or "")
