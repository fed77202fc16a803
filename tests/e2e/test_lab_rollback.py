"""End to end: convergence of the vLLM layer when a change does not come up (issue 14).

On one lab host (lab-3): a server that runs but never gets ready fails the run and, its
container already on the new spec, the next run too (the readiness mark); an engine argument
vLLM refuses at start rolls the host back to its previous server, which answers again; a
secrets write that fails leaves no temporary copy of the key, and one left behind is flagged
by verify and removed by the next deploy. The host is left as the plain deploy makes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.helpers import LAB_SECRETS, ROOT, deploy, on_host, verify
from tests.e2e.test_lab_vllm import MODEL, api, container_ids, served
from tests.standins.vllm.image import load_into

pytestmark = pytest.mark.lab
HOST = "lab-3"
SECRETS = "/etc/gpufleet/vllm"
NEVER_READY = "gpufleet-standin/vllm-openai:never-ready"  # /health answers 500, forever


def ssh_argv(name: str) -> list[str]:
    state = json.loads((ROOT / ".lab" / "state.json").read_text())
    (port,) = [h["port"] for h in state["hosts"] if h["name"] == name]
    return [
        "ssh", "-q", "-i", state["ssh_key"], "-o", f"UserKnownHostsFile={state['known_hosts']}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", str(port),
        "root@127.0.0.1",
    ]  # fmt: skip


def secrets_dir() -> list[str]:
    done = on_host(HOST, f"ls -A {SECRETS}")
    assert done.returncode == 0, done.output
    return sorted(done.stdout.split())


def on_lab3(*args: str):
    return deploy("-y", "--limit", HOST, *args)


@pytest.fixture(scope="module")
def converged(lab):
    """lab-3 with the current stand-in image (the deploy loads an image only when the host
    lacks its tag) and converged on the plain config; restored so afterwards."""
    state = json.loads((ROOT / ".lab" / "state.json").read_text())
    load_into(ssh_argv(HOST), Path(state["vllm_standin"]["archive"]), log=lambda _: None)
    done = on_lab3()
    assert done.returncode == 0, done.output
    yield lab
    on_host(HOST, f"umount {SECRETS}/main.env 2>/dev/null; docker rmi -f {NEVER_READY}")
    done = on_lab3()
    assert done.returncode == 0, done.output
    assert sorted(container_ids(HOST)) == ["vllm-main"]
    assert served(HOST) == [MODEL]


def test_a_never_ready_server_fails_the_run_and_the_rerun(converged):
    """No previous server to roll back to (a first install): the container is left on the new
    spec, unmarked, and the identical next run gates it again instead of "No changes"."""
    make = on_host(
        HOST,
        f"docker commit --pause=false --change 'ENV STANDIN_FAIL_HEALTH=1' vllm-main "
        f"{NEVER_READY} >/dev/null && docker rm -f vllm-main >/dev/null && "
        f"rm -f {SECRETS}/main.ready",
    )
    assert make.returncode == 0, make.output
    args = ("--data", f"vllm_image={NEVER_READY}", "--data", "vllm_ready_timeout_s=10")
    first = on_lab3(*args)
    assert first.returncode != 0
    assert "vllm-main: not ready after 10s" in first.output, first.output
    assert "rolled back" not in first.output  # there was nothing to roll back to
    created = container_ids(HOST)
    assert sorted(created) == ["vllm-main"]
    again = on_lab3(*args)
    assert again.returncode != 0, again.output
    assert "vllm-main: not ready after 10s" in again.output
    assert container_ids(HOST) == created  # gated again, not recreated
    assert "main.ready" not in secrets_dir()


def test_a_bad_engine_argument_rolls_back_to_the_previous_server(converged):
    done = on_lab3()  # a proven server to keep
    assert done.returncode == 0, done.output
    before = container_ids(HOST)
    bad = ("--data", "vllm_extra_args=--no-such-engine-flag")
    failed = on_lab3(*bad)
    assert failed.returncode != 0
    assert "unrecognized arguments: --no-such-engine-flag" in failed.output  # the new one's log
    assert "rolled back to the previous server" in failed.output, failed.output
    assert container_ids(HOST) == before  # the same server again, nothing kept aside
    assert served(HOST) == [MODEL]
    code, text = api(HOST, "/standin/args", LAB_SECRETS["VLLM_API_KEY"])
    assert code == 200 and json.loads(text)["extra_args"] == {}
    again = on_lab3(*bad)  # not converged: the change is tried (and rolled back) again
    assert again.returncode != 0 and "rolled back to the previous server" in again.output
    assert container_ids(HOST) == before and api(HOST, "/health")[0] == 200


def test_no_secrets_temp_file_survives_a_failed_write(converged, tmp_path):
    rotated = {"VLLM_API_KEY": "sk-rotated-9c1e5a7f3b2d"}
    # a mount point cannot be renamed over: the move of the new file into place fails
    pin = on_host(HOST, f"mount --bind {SECRETS}/main.env {SECRETS}/main.env")
    assert pin.returncode == 0, pin.output
    try:
        done = deploy("-y", "--limit", HOST, env=rotated)
    finally:
        on_host(HOST, f"umount {SECRETS}/main.env")
    assert done.returncode != 0
    assert "mv: " in done.output, done.output
    assert rotated["VLLM_API_KEY"] not in done.output
    assert secrets_dir() == ["main.env", "main.ready"]
    assert api(HOST, "/v1/models", LAB_SECRETS["VLLM_API_KEY"])[0] == 200  # the old key
    # a temporary file a lost connection left: verify flags it, the next deploy removes it
    left = on_host(HOST, f"umask 077; echo \"VLLM_API_KEY='x'\" > {SECRETS}/main.env.new")
    assert left.returncode == 0, left.output
    report = tmp_path / "report.json"
    flagged = verify("--limit", HOST, "-m", "vllm", f"--fleet-report={report}")
    assert flagged.returncode != 0
    assert f"{SECRETS}/main.env.new" in flagged.output, flagged.output
    assert on_lab3().returncode == 0
    assert secrets_dir() == ["main.env", "main.ready"]
