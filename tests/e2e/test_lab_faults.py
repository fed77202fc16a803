"""End to end: the faults real fleets throw, and what must not be lost, on the lab fleet.

Each test breaks something on purpose (a host down or killed mid-run, a held apt lock, an
interrupted dpkg run, dockerd stopped, daemon.json corrupted, a full model-cache filesystem,
Docker restarted under a serving container, an image upgrade) and checks that the deploy
fails only that host with a clear reason, or repairs it, and that nothing is lost. Every test
leaves the fleet converged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    HOSTS,
    LAB_SECRETS,
    ROOT,
    daemon_json,
    deploy,
    on_host,
    run,
    verify,
)
from tests.e2e.test_lab_vllm import api, container_ids

pytestmark = pytest.mark.lab
STANDIN = "gpufleet-standin/vllm-openai:0.11.0-standin"


def lab_up() -> None:
    """Start what a test stopped (`lab up` starts stopped hosts and waits for SSH)."""
    done = run(sys.executable, "-m", "lab", "up", "--hosts", str(len(HOSTS)), timeout=600)
    assert done.returncode == 0, done.output


def wait_health(name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while api(name, "/health")[0] != 200:
        assert time.monotonic() < deadline, f"{name}: vLLM did not answer again"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def converged(lab):
    done = deploy("-y")
    assert done.returncode == 0, done.output
    yield lab
    lab_up()
    done = deploy("-y")
    assert done.returncode == 0, done.output


# --- faults -------------------------------------------------------------------------------


def test_host_down_before_the_run_fails_only_that_host(converged):
    assert run("docker", "stop", "-t", "1", "gpufleet-lab-3").returncode == 0
    try:
        done = deploy("-y", "--fail-percent", "50")
        assert done.returncode != 0
        assert "[lab-3] Could not connect" in done.output
        assert "--> Fleet: 2 of 3 host(s) succeeded; failed: lab-3" in done.output
        assert "[lab-1] Success" in done.output or "[lab-1] No changes" in done.output
        stopped = deploy("-y", "--fail-percent", "10")  # 1 of 3 down is over 10%: stop
        assert stopped.returncode != 0
        assert "Over 10% of hosts failed (33%)" in stopped.output
        assert "--> Starting operation" not in stopped.output
    finally:
        lab_up()
    wait_health("lab-3")  # its server came back with its Docker engine (restart policy)


def _recovered(name: str, env: dict) -> None:
    """Leave the host serving for the next tests whatever the test found: Docker 20.10's
    stale port allocation (below) is cleared only by a restart of dockerd."""
    lab_up()  # it may still be down, if the test stopped before starting it again
    if deploy("-y", "--limit", name, env=env).returncode != 0:
        on_host(name, "systemctl restart docker")
        assert deploy("-y", "--limit", name, env=env).returncode == 0


@pytest.mark.xfail(
    strict=False,
    reason="known gap: killed while its vLLM server was being replaced, the host's Docker "
    "(Debian's 20.10) can come back holding the server's port for a container that no longer "
    "exists ('Bind for 0.0.0.0:8000 failed: port is already allocated'), and the next deploy "
    "cannot start the server until dockerd restarts; seen in CI runs, not in every run",
)
def test_host_killed_mid_run_converges_on_the_next_run(converged):
    rotated = {"VLLM_API_KEY": "sk-killed-run-5e1f", "HF_TOKEN": "hf_killedrun7a2b"}
    try:
        _killed_mid_run(rotated)
    finally:
        _recovered("lab-2", rotated)


def _killed_mid_run(rotated: dict) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyinfra", "-y", "inventory/lab.py", "deploy.py"],
        cwd=ROOT, env={**os.environ, **rotated},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(3)  # into the run: facts gathered, operations under way
    assert run("docker", "kill", "gpufleet-lab-2").returncode == 0
    output = proc.communicate(timeout=600)[0]
    # a connection that drops mid-command fails that host alone (operations.kit.bounds turns
    # paramiko's EOFError, which pyinfra 3 does not handle: pyinfra-dev/pyinfra#1220, into a
    # connection error pyinfra reports for that host): the others finish
    assert proc.returncode != 0, output
    assert "2 of 3 host(s) succeeded; failed: lab-2" in output, output
    lab_up()
    again = deploy("-y", env=rotated)
    assert again.returncode == 0, again.output
    assert deploy("-y", env=rotated).output.count("[lab-2] Success") == 0  # converged
    assert api("lab-2", "/v1/models", rotated["VLLM_API_KEY"])[0] == 200


def _hold_apt_lock(name: str, seconds: int) -> None:
    """Another apt run holding the dpkg lock for `seconds` (as unattended-upgrades would)."""
    command = (
        "nohup apt-get install --reinstall -y "
        f"-o 'DPkg::Pre-Invoke::=sleep {seconds}' curl >/tmp/holder.log 2>&1 & "
        "sleep 2; pgrep -f 'sleep " + str(seconds) + "' >/dev/null"
    )
    assert on_host(name, command).returncode == 0


def test_held_apt_lock_is_waited_for_then_the_deploy_succeeds(converged):
    _hold_apt_lock("lab-1", 15)
    started = time.monotonic()
    done = deploy("-y", "--limit", "lab-1", "--data", "toolkit_version=1.17.9-1")
    waited = time.monotonic() - started
    try:
        assert done.returncode == 0, done.output
        assert waited > 10  # apt waited for the holder instead of failing at once
        holder = on_host("lab-1", "cat /tmp/holder.log").stdout
        assert "Setting up curl" in holder  # the other apt run was not broken either
        packages = on_host("lab-1", "dpkg-query -W nvidia-container-toolkit").stdout
        assert "1.17.9-1" in packages
    finally:
        assert deploy("-y", "--limit", "lab-1").returncode == 0  # back to the pinned 1.17.8-1


def test_apt_lock_held_past_the_timeout_fails_that_host_clearly(converged):
    _hold_apt_lock("lab-1", 40)
    done = deploy(
        "-y", "--data", "toolkit_version=1.17.9-1", "--data", "deploy_lock_timeout_s=3",
    )  # fmt: skip
    assert done.returncode != 0
    assert "[lab-1]" in done.output and "Could not get lock" in done.output
    try:
        assert "--> Fleet: 2 of 3 host(s) succeeded; failed: lab-1" in done.output, done.output
    finally:
        on_host("lab-1", "pkill -f 'sleep 40'; sleep 3")
        assert deploy("-y").returncode == 0  # every host back on the pinned toolkit


def test_interrupted_dpkg_run_is_finished_by_the_next_deploy(converged):
    # unpacked, never configured: what a killed `apt-get install` leaves behind
    broken = on_host(
        "lab-2",
        "cd /tmp && apt-get download -q nvidia-container-toolkit=1.17.8-1 >/dev/null 2>&1; "
        "dpkg --unpack nvidia-container-toolkit_1.17.8-1_*.deb >/dev/null 2>&1; dpkg --audit",
    )
    assert "not yet configured" in broken.stdout
    done = deploy("-y", "--limit", "lab-2")
    assert done.returncode == 0, done.output
    assert "Finish the interrupted dpkg run" in done.output
    assert on_host("lab-2", "dpkg --audit").stdout == ""


def test_dockerd_stopped_by_hand_is_reported_then_repaired(converged):
    on_host("lab-3", "systemctl stop docker.socket docker.service")
    report = verify("--limit", "lab-3", "-m", "docker")
    assert report.returncode != 0 and "docker.service is inactive" in report.output
    done = deploy("-y", "--limit", "lab-3")
    assert done.returncode == 0, done.output
    assert verify("--limit", "lab-3", "-m", "docker or vllm").returncode == 0
    wait_health("lab-3")


def test_corrupted_daemon_json_is_repaired_and_the_users_keys_kept(converged):
    current = daemon_json("lab-1")
    user = {**current, "debug": True, "labels": ["team=ml"]}
    on_host("lab-1", f"echo '{json.dumps(user)}' > /etc/docker/daemon.json")
    assert deploy("-y", "--limit", "lab-1").returncode == 0  # the user's keys are accepted
    on_host("lab-1", 'echo \'{"debug": tru, "labels": [\' > /etc/docker/daemon.json')
    done = deploy("-y", "--limit", "lab-1")
    assert done.returncode == 0, done.output
    repaired = daemon_json("lab-1")
    assert repaired["debug"] is True and repaired["labels"] == ["team=ml"]
    assert repaired["runtimes"]["nvidia"] and repaired["live-restore"] is True
    kept = on_host("lab-1", "cat /etc/docker/daemon.json.corrupt-*")
    assert '"debug": tru' in kept.stdout  # the broken file is kept aside, not lost
    info = on_host("lab-1", "docker info --format '{{.Debug}}'")
    assert info.stdout.strip() == "true"
    on_host("lab-1", f"echo '{json.dumps(current)}' > /etc/docker/daemon.json")
    assert deploy("-y", "--limit", "lab-1").returncode == 0


def test_full_model_cache_fails_the_host_and_leaves_the_server_running(converged):
    before = container_ids("lab-3")
    on_host("lab-3", "mount -t tmpfs -o size=64m tmpfs /var/lib/gpufleet/huggingface")
    try:
        done = deploy("-y", "--limit", "lab-3", "--data", "vllm_served_model_name=new")
        assert done.returncode != 0
        assert (
            "vllm-main: only 64 MiB free for the model cache at /var/lib/gpufleet/huggingface; "
            "vllm_min_free_cache_gib needs 0.5 GiB: the running server was left as it was"
        ) in done.output
        assert container_ids("lab-3") == before and api("lab-3", "/health")[0] == 200
    finally:
        on_host("lab-3", "umount /var/lib/gpufleet/huggingface")


# --- nothing lost -------------------------------------------------------------------------


def test_model_cache_survives_an_image_upgrade(converged):
    key = LAB_SECRETS["VLLM_API_KEY"]
    first = json.loads(api("lab-2", "/standin/args", key)[1])
    upgraded = "gpufleet-standin/vllm-openai:0.11.1-standin"
    # the lab has no registry: the "new release" is the stand-in under a new tag, on the host
    assert on_host("lab-2", f"docker tag {STANDIN} {upgraded}").returncode == 0
    try:
        done = deploy("-y", "--limit", "lab-2", "--data", f"vllm_image={upgraded}")
        assert done.returncode == 0, done.output
        inspect = on_host("lab-2", "docker inspect -f '{{.Config.Image}}' vllm-main")
        assert inspect.stdout.strip() == upgraded
        after = json.loads(api("lab-2", "/standin/args", key)[1])
        assert after["cache_hit"] is True  # the model the old container fetched is still there
        assert after["cache_marker"] == first["cache_marker"]
    finally:
        assert deploy("-y", "--limit", "lab-2").returncode == 0


def test_serving_container_survives_a_docker_restart(converged):
    """live-restore: dockerd restarts, the vLLM container keeps running (same container, never
    restarted). Its published port pauses while dockerd is down: the sampler records how long."""
    before = on_host("lab-2", "docker inspect -f '{{.Id}} {{.State.StartedAt}}' vllm-main")
    answered: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            answered.append((time.monotonic(), api("lab-2", "/health")[0]))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        assert on_host("lab-2", "systemctl restart docker").returncode == 0
        wait_health("lab-2", 30)
        time.sleep(0.5)
    finally:
        stop.set()
        sampler.join()
    after = on_host("lab-2", "docker inspect -f '{{.Id}} {{.State.StartedAt}}' vllm-main")
    assert after.stdout == before.stdout  # the same container, not restarted
    down = [t for t, code in answered if code != 200]
    assert answered[-1][1] == 200 and (not down or max(down) - min(down) < 10), down
    print(f"port paused for {max(down) - min(down) if down else 0:.1f}s of the dockerd restart")


def test_a_missing_secrets_file_keeps_the_server_down_until_a_deploy_restores_it(converged):
    """The secrets file removed under a serving container: Docker refuses to start it again
    (it never serves without its API key) and makes no directory there; one an older
    ``--volume`` container made is named by verify; the next deploy puts the file back and
    the server serves with the key again."""
    secrets = "/etc/gpufleet/vllm/main.env"
    key = LAB_SECRETS["VLLM_API_KEY"]
    assert on_host("lab-3", f"rm {secrets}").returncode == 0
    restarted = on_host("lab-3", "docker restart vllm-main")
    assert restarted.returncode != 0 and "no such file" in restarted.output, restarted.output
    assert on_host("lab-3", f"test -e {secrets}").returncode != 0  # no directory made
    assert api("lab-3", "/v1/models")[0] == 0  # nothing answers, not an open API
    assert on_host("lab-3", f"mkdir {secrets}").returncode == 0  # as --volume leaves it
    report = verify("--limit", "lab-3", "-m", "vllm")
    assert report.returncode != 0
    assert f"{secrets} is not a regular file" in report.output, report.output[-3000:]
    done = deploy("-y", "--limit", "lab-3")
    assert done.returncode == 0, done.output[-3000:]
    assert on_host("lab-3", f"test -f {secrets}").returncode == 0
    assert api("lab-3", "/v1/models", key)[0] == 200 and api("lab-3", "/v1/models")[0] == 401


# --- security -----------------------------------------------------------------------------


def test_host_keys_are_verified(converged, tmp_path):
    """A host presenting a key other than the pinned one is refused before any command."""
    wrong = tmp_path / "known_hosts"
    state = json.loads((ROOT / ".lab" / "state.json").read_text())
    pinned = Path(state["known_hosts"]).read_text().splitlines()
    # every host's line, but with another host's key: a man in the middle
    keys = [line.split(" ", 1)[1] for line in pinned]
    wrong.write_text(
        "\n".join(f"{line.split(' ', 1)[0]} {keys[(i + 1) % len(keys)]}"
                  for i, line in enumerate(pinned)) + "\n"
    )  # fmt: skip
    done = deploy("-y", "--data", f"ssh_known_hosts_file={wrong}")
    assert done.returncode != 0
    assert "Host key for 127.0.0.1 does not match" in done.output
    assert "No hosts remaining" in done.output and "--> Starting operation" not in done.output


def test_vllm_bound_to_loopback_is_not_reachable_from_outside(converged):
    done = deploy("-y", "--limit", "lab-1", "--data", "vllm_bind_address=127.0.0.1")
    try:
        assert done.returncode == 0, done.output
        assert api("lab-1", "/health")[0] == 0  # refused from the controller
        inside = on_host("lab-1", "curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:8000/health")
        assert inside.stdout == "200"
        ports = on_host("lab-1", "docker inspect -f '{{json .NetworkSettings.Ports}}' vllm-main")
        assert json.loads(ports.stdout)["8000/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "8000"}]
    finally:
        assert deploy("-y", "--limit", "lab-1").returncode == 0
