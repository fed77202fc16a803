"""End to end, weights before swaps (operations/vllm: the pre-fetch, offline servers) on lab-2.

The STAND-IN image's huggingface_hub (tests/standins/vllm/hub.py) "downloads" the models of
its catalog, plus those of the host's STAND-IN catalog file that these tests write into the
host's model cache: a slow one (a delay, some MiB), a rate-limited one, one slower than the
bound. From the controller: a model change is fetched while the old server still answers,
then the server is swapped and a second deploy plans no change; a failed or too slow fetch
fails the host and the old server serves on, untouched; an offline server whose cache is
empty (its --download-dir: nothing the pre-fetch filled) fails at start with vLLM's error and
is rolled back. Every test leaves lab-2 as the plain deploy makes it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from tests.e2e.helpers import HOSTS, LAB_SECRETS, ROOT, deploy, on_host
from tests.e2e.test_lab_vllm import MODEL, api, container_ids, served

pytestmark = pytest.mark.lab
HOST = HOSTS[1]
CACHE = "/var/lib/gpufleet/huggingface"  # the default vllm_hf_cache_dir
CATALOG = {  # STAND-IN catalog additions (hub.py: CATALOG_FILE)
    "org/slow-model": {"size_mib": 8, "delay_s": 8},
    "org/rate-limited": {"delay_s": 1, "fail": "429 Client Error: Too Many Requests"},
    "org/too-slow": {"size_mib": 1, "delay_s": 120},
}
IMAGE = "gpufleet-standin/vllm-openai:0.11.0-standin"


def lab_deploy(*data: str) -> subprocess.CompletedProcess:
    args = [item for pair in data for item in ("--data", pair)]
    return deploy("-y", "--limit", HOST, *args)


@pytest.fixture(scope="module")
def prefetching(lab):
    """lab-2 deployed plainly, its image able to pre-fetch, the STAND-IN catalog written."""
    probe = on_host(
        HOST, f"docker run --rm --entrypoint python3 {IMAGE} -c 'import huggingface_hub'"
    )
    if probe.returncode != 0:
        pytest.fail(
            f"{HOST} carries a STAND-IN image older than hub.py: reload it ({probe.output})"
        )
    done = lab_deploy()
    assert done.returncode == 0, done.output[-3000:]
    text = shlex.quote(json.dumps(CATALOG))
    wrote = on_host(HOST, f"printf '%s' {text} > {CACHE}/gpufleet-standin-models.json")
    assert wrote.returncode == 0, wrote.output
    yield HOST
    on_host(HOST, f"rm -rf {CACHE}/gpufleet-standin-models.json {CACHE}/hub/models--org--*")
    done = lab_deploy()
    assert done.returncode == 0, done.output[-3000:]
    assert served(HOST) == [MODEL]


def _prefetching_now() -> bool:
    done = on_host(HOST, "docker ps --filter name=vllm-main.prefetch --format '{{.Names}}'")
    return "vllm-main.prefetch" in done.stdout


def test_a_model_change_is_fetched_while_the_old_server_answers_then_swapped(prefetching):
    environ = LAB_SECRETS
    command = [sys.executable, "-m", "pyinfra", "inventory/lab.py", "deploy.py", "-y",
               "--limit", HOST, "--data", "vllm_model=org/slow-model"]  # fmt: skip
    started = time.monotonic()
    run = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **environ},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    answered_while_fetching = 0
    while run.poll() is None and time.monotonic() - started < 300:
        if _prefetching_now() and served(HOST) == [MODEL]:
            answered_while_fetching += 1
        time.sleep(0.5)
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0, output[-3000:]
    assert answered_while_fetching >= 2, output[-3000:]  # the old one served during the fetch
    ref = on_host(HOST, f"cat {CACHE}/hub/models--org--slow-model/refs/main")
    assert ref.returncode == 0 and len(ref.stdout.strip()) == 40, ref.output  # complete
    assert served(HOST) == ["org/slow-model"]
    size = on_host(HOST, f"du -sm {CACHE}/hub/models--org--slow-model/blobs | cut -f1")
    assert int(size.stdout.strip()) >= 8, size.output
    args = json.loads(api(HOST, "/standin/args", LAB_SECRETS["VLLM_API_KEY"])[1])
    assert "HF_HUB_OFFLINE" in args["env_names"] and "VLLM_CACHE_ROOT" in args["env_names"]
    inspect = on_host(HOST, "docker inspect vllm-main --format '{{json .Config.Env}}'")
    assert "HF_HUB_OFFLINE=1" in inspect.stdout and LAB_SECRETS["HF_TOKEN"] not in inspect.stdout
    assert LAB_SECRETS["HF_TOKEN"] not in output
    again = lab_deploy("vllm_model=org/slow-model")
    assert again.returncode == 0 and f"[{HOST}] No changes" in again.output, again.output[-3000:]
    assert "pre-fetch" not in again.output


@pytest.mark.parametrize(
    ("model", "data", "said"),
    [
        ("org/not-in-catalog", (), "Repository Not Found for model org/not-in-catalog"),
        ("org/rate-limited", (), "429 Client Error: Too Many Requests"),
        ("org/too-slow", ("vllm_prefetch_timeout_s=10",), "did not finish within 10s"),
    ],
)
def test_a_failed_fetch_fails_the_host_and_the_old_server_serves_on(prefetching, model, data, said):
    before, serving = container_ids(HOST), served(HOST)
    done = lab_deploy(f"vllm_model={model}", *data)
    assert done.returncode != 0
    assert f"vllm-main: the pre-fetch of {model}" in done.output and said in done.output
    assert "the running server was left as it was" in done.output
    assert LAB_SECRETS["HF_TOKEN"] not in done.output
    assert container_ids(HOST) == before  # untouched: the same container
    assert served(HOST) == serving
    assert not _prefetching_now()  # the one-shot container is gone, even after a timeout


def test_an_offline_server_with_an_empty_cache_fails_at_start_and_is_rolled_back(prefetching):
    before, serving = container_ids(HOST), served(HOST)
    done = lab_deploy("vllm_extra_args=--download-dir=/tmp/empty-cache")
    assert done.returncode != 0
    assert "ValueError: Invalid repository ID or local directory specified" in done.output
    assert "rolled back to the previous server" in done.output, done.output[-3000:]
    assert served(HOST) == serving
    assert set(container_ids(HOST)) == set(before)
