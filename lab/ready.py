"""Trust and readiness of the lab hosts: the controller key and each host's pinned host key
(put into its container before sshd first runs), and the wait until every host answers
SSH with systemd up, repairing or explaining a host whose keys no longer match.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lab import LabError, lab_dir
from lab.engine import docker
from lab.hosts import container_name, host_name, list_containers
from lab.keys import (
    CONTROLLER_KEY,
    HOSTKEY_DIR,
    KNOWN_HOSTS,
    LOOPBACK,
    ensure_keypair,
    injection_tar,
    public_key,
    ssh_command,
)

READY_TIMEOUT = 90.0


@dataclass
class Paths:
    key: Path
    known_hosts: Path
    hostkeys: Path

    @classmethod
    def of(cls, root: Path) -> Paths:
        base = lab_dir(root)
        return cls(base / CONTROLLER_KEY, base / KNOWN_HOSTS, base / HOSTKEY_DIR)

    def hostkey(self, i: int) -> Path:
        return self.hostkeys / host_name(i)


def keys_id(paths: Paths, i: int) -> str:
    """Fingerprint of the controller key and host i's key, as put into its container.

    A container made by another checkout (another .lab/) carries other keys: `up` sees the
    mismatch and recreates it instead of waiting for an SSH login that cannot succeed.
    """
    material = public_key(paths.key) + public_key(paths.hostkey(i))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def keys_payload(paths: Paths, i: int) -> bytes:
    """The tar that puts host i's pinned host key and root's authorized_keys in place."""
    hostkey = paths.hostkey(i)
    return injection_tar(
        hostkey.read_bytes(),
        Path(f"{hostkey}.pub").read_bytes(),
        (public_key(paths.key) + " gpufleet-lab\n").encode(),
    )


def ensure_keys(paths: Paths, count: int) -> None:
    ensure_keypair(paths.key, "gpufleet-lab-controller")
    for i in range(1, count + 1):
        ensure_keypair(paths.hostkey(i), host_name(i))


def probe(paths: Paths, port: int, command: str = "systemctl is-system-running") -> tuple:
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


def restore_keys(paths: Paths, i: int) -> bool:
    """Put host i's pinned host key and root's authorized_keys back into its container (as at
    creation) and restart its sshd: the repair of a host whose SSH host key was changed (a
    reinstalled openssh-server, `ssh-keygen -A` after the key went). Its deployed state
    stays. Whether docker did both."""
    name = container_name(i)
    copied = docker("cp", "-", f"{name}:/", input=keys_payload(paths, i), text=False, check=False)
    if copied.returncode != 0:
        return False
    return docker("exec", name, "systemctl", "restart", "ssh.service", check=False).returncode == 0


def trust_hint(i: int, port: int) -> str:
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
    paths = Paths.of(root)
    pending = dict(ports)
    states: dict[int, str] = {}
    why: dict[int, str] = {}
    restored: dict[int, bool] = {}
    deadline = time.monotonic() + timeout
    while pending:
        with ThreadPoolExecutor(max_workers=min(16, len(pending))) as pool:
            results = dict(
                zip(pending, pool.map(lambda p: probe(paths, p), pending.values()), strict=True)
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
                + "".join(trust_hint(i, ports[i]) for i in sorted(pending) if i in restored)
                + exited_hint(pending)
            )
        time.sleep(1.0)
    for i in sorted(states):
        if states[i] == "degraded":
            _ok, failed, _err = probe(
                paths, ports[i], "systemctl list-units --failed --plain --no-legend"
            )
            units = " ".join(line.split()[0] for line in failed.splitlines() if line.strip())
            log(f"  {host_name(i)} is degraded; failed units: {units or '(none listed)'}")
    return states


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


def exited_hint(pending: dict[int, int]) -> str:
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
