"""The STAND-IN replay server (benchmarks/replay): a recorded command is answered as recorded,
an unrecorded one fails visibly and is logged, and the host key is pinned (a client holding
another key for the port refuses to connect). Real OpenSSH against a real asyncssh server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.replay import recording as rec
from benchmarks.replay.fleet import start
from benchmarks.replay.server import NO_RECORDING, ensure_keys, known_hosts, sim_address

pytestmark = pytest.mark.skipif(not shutil.which("ssh"), reason="needs OpenSSH's ssh client")


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    work = tmp_path_factory.mktemp("replay")
    recording = work / "recording.json"
    recording.write_text(json.dumps({"commands": {
        "hostname; echo {ADDRESS}": {"stdout": "{HOST}\n{ADDRESS}\n", "stderr": "", "rc": 0},
        "exit 3": {"stdout": "", "stderr": "three\n", "rc": 3},
    }}))  # fmt: skip
    ensure_keys(work)
    proc, ports = start(work, ["sim-0001"], recording)
    known_hosts(work, ports)
    yield work, ports["sim-0001"]
    proc.terminate()
    proc.wait(10)


def ssh(work: Path, port: int, command: str, known: Path | None = None):
    return subprocess.run(
        ["ssh", "-F", "none", "-i", str(work / "client_key"), "-o", "IdentitiesOnly=yes",
         "-o", f"UserKnownHostsFile={known or work / 'known_hosts'}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(port),
         "root@127.0.0.1", command],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_recorded_command_is_answered_as_this_host(replay):
    work, port = replay
    address = sim_address(1)
    done = ssh(work, port, f"hostname; echo {address}")
    assert (done.returncode, done.stdout) == (0, f"sim-0001\n{address}\n"), done.stderr
    failed = ssh(work, port, "exit 3")
    assert (failed.returncode, failed.stderr) == (3, "three\n")


def test_an_unrecorded_command_fails_and_is_logged(replay):
    work, port = replay
    done = ssh(work, port, "rm -rf /new-command")
    assert done.returncode == 127
    assert f"{NO_RECORDING}rm -rf /new-command" in done.stderr
    logged = [json.loads(line) for line in (work / "misses.log").read_text().splitlines()]
    assert {"host": "sim-0001", "command": "rm -rf /new-command"} in logged


def test_another_host_key_for_the_port_is_refused(replay, tmp_path):
    work, port = replay
    other = tmp_path / "other"
    ensure_keys(other)
    keytype, blob = (other / "host_key.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{port} {keytype} {blob}\n")
    done = ssh(work, port, "exit 3", known=wrong)
    assert done.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in done.stderr or "verification failed" in done.stderr


def test_normalising_maps_a_host_to_the_recording_and_back():
    lab, sim = rec.Identity("lab-2", "172.17.0.5"), rec.Identity("sim-0007", "10.77.0.7")
    recorded = lab.normalise("curl http://172.17.0.5:8000 # lab-2, not 172.17.0.50")
    assert recorded == "curl http://{ADDRESS}:8000 # {HOST}, not 172.17.0.50"
    assert sim.localise(recorded) == "curl http://10.77.0.7:8000 # sim-0007, not 172.17.0.50"
    assert lab.normalise("/tmp/pyinfra-" + "0a" * 20) == "/tmp/pyinfra-{TEMP}"


def test_a_recording_holding_a_lab_secret_is_found():
    data = {"commands": {"cat f": {"stdout": "VLLM_API_KEY='sk-lab-0123abcd'", "stderr": ""}}}
    assert rec.secrets_in(data, []) == ["cat f"]
    assert rec.secrets_in({"commands": {"true": {"stdout": "", "stderr": ""}}}, []) == []


def test_the_recorder_refuses_a_host_whose_dry_run_plans_a_change():
    from benchmarks.replay.__main__ import _no_change

    table = "--> Detected changes:\n    Operation   Change      Conditional Change\n"
    assert _no_change(table + "    Docker      -           -\n", "lab-2")
    assert not _no_change(table + "    Docker      1 (lab-2)   -\n", "lab-2")
    assert _no_change(table + "    Restart      -           1 (lab-2)\n", "lab-2")  # _if only
    assert not _no_change("--> Skipping change detection\n", "lab-2")  # -y: nothing shown
