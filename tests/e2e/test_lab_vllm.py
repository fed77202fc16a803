"""End to end, layer 4: vLLM (the STAND-IN image, tests/standins/vllm) on the lab fleet.

The controller reaches each lab host's API at its bridge address (host_address, from the
lab state). Every test leaves the fleet as the plain deploy makes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from tests.e2e.helpers import LAB_SECRETS, ROOT, deploy, on_host, run

pytestmark = pytest.mark.lab
MODEL = "Qwen/Qwen2.5-1.5B-Instruct"  # the default vllm_model


def address(name: str) -> str:
    state = json.loads((ROOT / ".lab" / "state.json").read_text())
    (found,) = [h["address"] for h in state["hosts"] if h["name"] == name]
    return found


def api(name: str, path: str, key: str | None = None, port: int = 8000) -> tuple[int, str]:
    """(status, body) of a request from the controller to a lab host's vLLM API."""
    request = urllib.request.Request(f"http://{address(name)}:{port}{path}")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def container_ids(name: str) -> dict[str, str]:
    """{container name: id} of the vLLM containers on a lab host."""
    done = on_host(name, "docker ps -a --filter label=gpufleet.vllm --format '{{.Names}} {{.ID}}'")
    assert done.returncode == 0, done.output
    return dict(line.split() for line in done.stdout.splitlines())


def served(name: str, port: int = 8000) -> list[str]:
    code, text = api(name, "/v1/models", LAB_SECRETS["VLLM_API_KEY"], port)
    assert code == 200, (name, code, text)
    return [model["id"] for model in json.loads(text)["data"]]


@pytest.fixture(scope="module")
def deployed(lab):
    """The fleet as the plain deploy makes it (no change when test_lab_fleet ran first)."""
    done = deploy("-y")
    assert done.returncode == 0, done.output
    yield lab
    done = deploy("-y")  # whatever a test changed, back to the plain config
    assert done.returncode == 0, done.output


def test_vllm_answers_on_every_host_and_enforces_the_api_key(deployed):
    key = LAB_SECRETS["VLLM_API_KEY"]
    for name in deployed:
        assert api(name, "/health")[0] == 200
        assert api(name, "/v1/models")[0] == 401
        assert api(name, "/v1/models", "sk-wrong")[0] == 401
        assert served(name) == [MODEL]
        code, text = api(name, "/standin/args", key)
        args = json.loads(text)
        assert code == 200 and args["api_key_set"] and args["hf_token_set"]
        assert args["cache_marker"].startswith("/root/.cache/huggingface/hub/")


def _sample_ps(name: str, stop: threading.Event, seen: list[str]) -> None:
    while not stop.is_set():
        seen.append(on_host(name, "ps -eo args").stdout)
        time.sleep(0.2)


def test_secrets_appear_nowhere(deployed):
    """New secrets make every host write them and recreate its server, with pyinfra at its
    most verbose and `ps` sampled on lab-1 meanwhile; then no secret is in pyinfra's output,
    any process's arguments, docker inspect, the server's log, the journal or /var/log."""
    new = {"VLLM_API_KEY": "sk-rotated-4d2c9a7e1b", "HF_TOKEN": "hf_rotated8f3e2d1c0b"}
    stop, seen = threading.Event(), []
    sampler = threading.Thread(target=_sample_ps, args=("lab-1", stop, seen))
    sampler.start()
    try:
        done = deploy("-y", "-vvv", "--debug", env=new)
    finally:
        stop.set()
        sampler.join()
    assert done.returncode == 0, done.output
    assert done.output.count("vllm-main: ready, serving") == 3  # every host did recreate
    assert len(seen) >= 3 and any("vllm serve" in ps or "server.py" in ps for ps in seen)
    for name in deployed:
        inspect = on_host(
            name,
            "docker inspect vllm-main; docker logs vllm-main 2>&1; ps -eo args; "
            "journalctl --no-pager -q -n 5000 2>/dev/null; cat /var/log/*.log 2>/dev/null",
        )
        assert inspect.returncode == 0 and "HF_HOME=" in inspect.stdout
        for value in new.values():
            where = [text for text in (done.output, inspect.stdout, *seen) if value in text]
            assert not where, f"a secret is visible on {name}"
        assert api(name, "/v1/models", new["VLLM_API_KEY"])[0] == 200
        assert api(name, "/v1/models", LAB_SECRETS["VLLM_API_KEY"])[0] == 401
    assert deploy("-y").returncode == 0  # back to the session's secrets


def test_changing_one_setting_recreates_exactly_that_container(deployed):
    two = [{"name": "a", "gpus": [0], "port": 8000}, {"name": "b", "gpus": [1], "port": 8001}]
    before_other = container_ids("lab-2")
    done = deploy("-y", "--limit", "lab-1", "--data", f"vllm_instances={json.dumps(two)}")
    assert done.returncode == 0, done.output
    first = container_ids("lab-1")
    assert sorted(first) == ["vllm-a", "vllm-b"]  # vllm-main retired
    two[1]["gpu_memory_utilization"] = 0.5
    done = deploy("-y", "--limit", "lab-1", "--data", f"vllm_instances={json.dumps(two)}")
    assert done.returncode == 0, done.output
    second = container_ids("lab-1")
    assert second["vllm-a"] == first["vllm-a"]
    assert second["vllm-b"] != first["vllm-b"]
    assert served("lab-1", 8000) == [MODEL] and served("lab-1", 8001) == [MODEL]
    code, text = api("lab-1", "/standin/args", LAB_SECRETS["VLLM_API_KEY"], 8001)
    assert json.loads(text)["options"]["gpu_memory_utilization"] == 0.5
    assert container_ids("lab-2") == before_other
    done = deploy("-y", "--limit", "lab-1")
    assert done.returncode == 0, done.output
    assert sorted(container_ids("lab-1")) == ["vllm-main"]


class HealthSampler(threading.Thread):
    """Polls /health on every host until stopped; records which hosts answered each round."""

    def __init__(self, hosts: list[str]):
        super().__init__()
        self.hosts, self.rounds, self.stop = hosts, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.rounds.append({name for name in self.hosts if api(name, "/health")[0] == 200})
            time.sleep(0.05)


def rollout(*args: str) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "operations.cli.rollout", "inventory/lab.py", *args)


def test_rolling_update_in_batches_of_one_keeps_two_hosts_serving(deployed):
    sampler = HealthSampler(deployed)
    sampler.start()
    try:
        done = rollout("--batch", "1", "--", "--data", "vllm_served_model_name=qwen-v2")
    finally:
        sampler.stop.set()
        sampler.join()
    assert done.returncode == 0, done.output
    for name in deployed:
        assert served(name) == ["qwen-v2"]
    fewest = min(len(answered) for answered in sampler.rounds)
    down = Counter(name for answered in sampler.rounds for name in set(deployed) - answered)
    assert len(sampler.rounds) > 20 and fewest >= 2, (len(sampler.rounds), down)
    assert down, "the sampler never saw a host restart: it proves nothing"


def test_a_key_rotation_by_plain_deploy_keeps_the_fleet_serving(deployed):
    """A plain deploy that recreates every server (a new API key) replaces them one host at a
    time (vllm_max_unavailable 25% of 3 hosts: 1), each gated on readiness: at every moment
    the other two serve. Then the key goes back, the same way."""
    rotated = {"VLLM_API_KEY": "sk-lab-rotated-" + LAB_SECRETS["VLLM_API_KEY"][-12:]}
    for env in (rotated, {}):
        sampler = HealthSampler(deployed)
        sampler.start()
        try:
            done = deploy("-y", env=env)
        finally:
            sampler.stop.set()
            sampler.join()
        assert done.returncode == 0, done.output
        assert "waiting for a free slot (vllm_max_unavailable=25%: 1 host(s) at a time)" in (
            done.output
        )
        fewest = min(len(answered) for answered in sampler.rounds)
        down = Counter(name for answered in sampler.rounds for name in set(deployed) - answered)
        assert len(sampler.rounds) > 20 and fewest >= 2, (len(sampler.rounds), down)
        assert set(down) == set(deployed), down  # every host was replaced, one at a time
    for name in deployed:
        assert served(name) == [MODEL]  # the lab's own key works again


def test_a_bad_change_by_plain_deploy_stops_at_the_first_host(deployed):
    """An engine argument vLLM refuses: the first host to try it rolls back to its previous
    server; the hosts waiting for their turn leave theirs untouched and serving."""
    before = {name: container_ids(name) for name in deployed}
    done = deploy("-y", "--data", "vllm_extra_args=--no-such-engine-flag")
    assert done.returncode != 0, done.output
    rolled = [name for name in deployed if f"[{name}] vllm-main: the new server did not get "
              "ready (above): rolled back to the previous server" in done.output]  # fmt: skip
    assert len(rolled) == 1, done.output
    held = [name for name in deployed if f"[{name}] vllm-main: not replaced: replacing it "
            f"failed on {rolled[0]}" in done.output]  # fmt: skip
    assert sorted(held + rolled) == sorted(deployed), done.output
    for name in held:
        assert container_ids(name) == before[name]  # never stopped
    for name in deployed:
        assert served(name) == [MODEL]
    again = deploy("-y")
    assert again.returncode == 0, again.output


def test_failing_batch_stops_the_roll_and_the_rest_keep_serving(deployed):
    before = {name: container_ids(name) for name in deployed}
    done = rollout("--batch", "1", "--", "--data", "vllm_image=gpufleet-standin/vllm:missing")
    assert done.returncode == 1, done.output
    assert "does not hold gpufleet-standin/vllm:missing" in done.output
    assert "lab-2" in done.output.split("not touched")[-1]
    for name in deployed:  # the image failed before any container was replaced
        assert container_ids(name) == before[name]
        assert api(name, "/health")[0] == 200


def test_prometheus_targets_cover_every_server_and_scrape(deployed, tmp_path):
    path = tmp_path / "targets.json"
    done = run(sys.executable, "-m", "operations.cli.targets", "inventory/lab.py", "-o", str(path))
    assert done.returncode == 0, done.output
    groups = json.loads(path.read_text())
    targets = {g["labels"]["gpufleet_host"]: g["targets"] for g in groups}
    assert targets == {name: [f"{address(name)}:8000"] for name in deployed}
    for name, (target,) in targets.items():
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
            assert "vllm:num_requests_running" in response.read().decode(), name
