"""Helpers of the lab end-to-end tests: the lab fixture, running the real deploy.py over
SSH, and commands on lab hosts. Every command gets the lab's test secrets (LAB_SECRETS) in its
environment, as an operator's shell would hold them: fresh random values per test session.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ["lab-1", "lab-2", "lab-3"]


LAB_SECRETS = {
    "VLLM_API_KEY": f"sk-lab-{secrets.token_hex(12)}",
    "HF_TOKEN": f"hf_lab{secrets.token_hex(12)}",
}


def run(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """A controller command in the checkout, with the lab's secrets (or `env`) set."""
    environ = os.environ | LAB_SECRETS | (env or {})
    done = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environ
    )
    done.output = done.stdout + done.stderr
    return done


def deploy(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "pyinfra", "inventory/lab.py", "deploy.py", *args, env=env)


def verify(*args: str) -> subprocess.CompletedProcess:
    """The verify suite against the lab inventory (extra pytest arguments appended)."""
    return run(
        sys.executable, "-m", "pytest", "tests/verify", "--inventory", "inventory/lab.py",
        "-p", "no:cacheprovider", *args,
    )  # fmt: skip


def on_host(name: str, command: str) -> subprocess.CompletedProcess:
    """Run a shell command on a lab host over SSH, the lab's pinned host key checked."""
    state = json.loads((ROOT / ".lab" / "state.json").read_text())
    (port,) = [h["port"] for h in state["hosts"] if h["name"] == name]
    return run(
        "ssh", "-q", "-i", state["ssh_key"], "-o", f"UserKnownHostsFile={state['known_hosts']}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(port),
        "root@127.0.0.1", command,
    )  # fmt: skip


def daemon_json(name: str) -> dict:
    done = on_host(name, "cat /etc/docker/daemon.json")
    assert done.returncode == 0, done.output
    return json.loads(done.stdout)


def _missing_prerequisite() -> str | None:
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed"
    engine_up = (
        run("docker", "info", timeout=60).returncode == 0 if shutil.which("docker") else False
    )
    if not engine_up and os.geteuid() != 0:
        return "no Docker engine answers and not root (the lab can start one only as root)"
    return None


@pytest.fixture(scope="session")
def lab():
    missing = _missing_prerequisite()
    if missing:
        if os.environ.get("GPUFLEET_REQUIRE_LAB"):
            pytest.fail(f"lab end-to-end test required but {missing}")
        pytest.skip(missing)
    up = run(sys.executable, "-m", "lab", "up", "--hosts", str(len(HOSTS)), timeout=1800)
    assert up.returncode == 0, up.output
    return HOSTS
