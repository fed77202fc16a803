"""Plan tests of the vLLM layer: given a host's containers and secrets files, exactly what is
planned: the container's full spec, recreation only on change, secrets kept off commands."""

from __future__ import annotations

import hashlib
import json
import shlex

import pytest

from operations.config import FleetConfig
from operations.secrets import env_file
from operations.settings import load_config
from operations.vllm import container_args, spec_hash
from tests.plan.harness import FakeFleet
from tests.plan.test_docker_plan import by_name, profile

KEY, TOKEN = "sk-test-KEY-1234567890", "hf_TOKEN_abcdefghijklmnop"
SECRETS_DIR = "/etc/gpufleet/vllm"
BASE = ["Install curl (the readiness probe)", "vLLM model cache", "vLLM secrets directory"]


def config_of(**data) -> FleetConfig:
    config, problems = load_config("h", data)
    assert not problems, problems
    return config


def running(config: FleetConfig, name: str = "main", status: str = "running", spec=None) -> str:
    """A VllmState container line as docker inspect prints it for a deployed instance."""
    (server,) = [s for s in config.vllm.servers() if s.name == name]
    labels = {
        "gpufleet.vllm": name,
        "gpufleet.spec": spec or spec_hash(container_args(config, server)),
    }
    inspect = {"Name": f"/vllm-{name}", "State": {"Status": status}, "Config": {"Labels": labels}}
    return "container=" + json.dumps(inspect)


def secrets_line(name: str, secrets: dict[str, str]) -> str:
    digest = hashlib.sha256(env_file(secrets).reveal().encode()).hexdigest()
    return f"secrets={digest}  {SECRETS_DIR}/{name}.env"


def plan_of(
    tmp_path, monkeypatch, state=("docker=up",), image_present=True, secrets=None, gpu=True, **data
):
    for name, value in (secrets if secrets is not None else {"VLLM_API_KEY": KEY}).items():
        monkeypatch.setenv(name, value)
    responses = {
        "os-release": [line for line in profile() if gpu or not line.startswith("pci=")],
        "label=gpufleet.vllm": list(state),
        "docker image inspect": ['[{"Id": "sha256:abc"}]'] if image_present else [],
    }
    host = {"fake_responses": responses, "deploy_layers": "vllm", **data}
    return by_name(FakeFleet(tmp_path, {"h": host}).plan()["h"])


def docker_run(commands: list[str]) -> list[str]:
    (run,) = [c for c in commands if c.startswith("docker run ")]
    return shlex.split(run.removesuffix(" >/dev/null"))


def test_fresh_host_gets_the_full_container_spec_and_a_readiness_gate(tmp_path, monkeypatch):
    planned = plan_of(tmp_path, monkeypatch, state=["docker=down"], image_present=False)
    # nothing to retire: no container, no secrets file
    assert list(planned) == [*BASE, "Pull vllm/vllm-openai:v0.11.0", "vLLM vllm-main"]
    assert planned["Pull vllm/vllm-openai:v0.11.0"] == [
        "docker image pull vllm/vllm-openai:v0.11.0"
    ]
    commands = planned["vLLM vllm-main"]
    run = docker_run(commands)
    spec = spec_hash(container_args(config_of(), config_of().vllm.servers()[0]))
    assert run[:5] == ["docker", "run", "--detach", "--label", f"gpufleet.spec={spec}"]
    text = " ".join(run)
    for flag in [
        "--name vllm-main", "--label gpufleet.vllm=main", "--restart unless-stopped",
        "--log-driver json-file", "--log-opt max-size=100m", "--log-opt max-file=3",
        "--gpus all", "--ipc host", "--publish 0.0.0.0:8000:8000",
        "--volume /var/lib/gpufleet/huggingface:/root/.cache/huggingface",
        f"--volume {SECRETS_DIR}/main.env:/run/gpufleet/secrets.env:ro",
        "--env HF_HOME=/root/.cache/huggingface", "--entrypoint /bin/sh",
    ]:  # fmt: skip
        assert flag in text, flag
    image_at = run.index("vllm/vllm-openai:v0.11.0")
    assert run[image_at + 1 : image_at + 7] == [
        "-c", 'set -a; . /run/gpufleet/secrets.env; set +a; exec "$@"', "gpufleet-vllm",
        "vllm", "serve", "Qwen/Qwen2.5-1.5B-Instruct",
    ]  # fmt: skip
    assert "--served-model-name Qwen/Qwen2.5-1.5B-Instruct" in text
    assert "--tensor-parallel-size 1 --gpu-memory-utilization 0.9 --dtype auto" in text
    assert commands[0] == f"upload {SECRETS_DIR}/main.env.new: VLLM_API_KEY='{KEY}'\n"
    new = f"{SECRETS_DIR}/main.env.new"
    assert commands[1] == f"chmod 600 {new} && mv -f {new} {SECRETS_DIR}/main.env"
    guard = commands[2]
    assert "df -Pk /var/lib/gpufleet/huggingface" in guard and "-ge 20971520 ]" in guard
    assert "vllm_min_free_cache_gib needs 20 GiB: the running server was left" in guard
    assert commands[3] == "docker rm -f vllm-main >/dev/null 2>&1 || true"
    ready = commands[-1]
    assert "url=http://127.0.0.1:8000" in ready and "timeout=1800" in ready
    assert "served=Qwen/Qwen2.5-1.5B-Instruct" in ready and "docker logs --tail 30" in ready


def test_secrets_are_only_in_the_uploaded_file(tmp_path, monkeypatch):
    planned = plan_of(tmp_path, monkeypatch, secrets={"VLLM_API_KEY": KEY, "HF_TOKEN": TOKEN})
    commands = [c for cs in planned.values() for c in cs]
    uploads = [c for c in commands if c.startswith("upload ")]
    assert uploads == [
        f"upload {SECRETS_DIR}/main.env.new: HF_TOKEN='{TOKEN}'\nVLLM_API_KEY='{KEY}'\n"
    ]
    others = [c for c in commands if not c.startswith("upload ")]
    assert others and not [c for c in others if KEY in c or TOKEN in c]


def test_converged_instance_plans_nothing(tmp_path, monkeypatch):
    config = config_of()
    state = ["docker=up", running(config), secrets_line("main", {"VLLM_API_KEY": KEY})]
    planned = plan_of(tmp_path, monkeypatch, state=state)
    assert list(planned) == BASE  # image there, nothing retired, the instance as configured


@pytest.mark.parametrize(
    ("why", "container_status", "spec", "secrets"),
    [
        ("a setting changed", "running", "0000000000000000", {"VLLM_API_KEY": KEY}),
        ("the container stopped", "exited", None, {"VLLM_API_KEY": KEY}),
        ("the API key changed", "running", None, {"VLLM_API_KEY": "sk-old-key"}),
    ],
)
def test_instance_is_recreated_when(tmp_path, monkeypatch, why, container_status, spec, secrets):
    config = config_of()
    state = ["docker=up", running(config, status=container_status, spec=spec),
             secrets_line("main", secrets)]  # fmt: skip
    commands = plan_of(tmp_path, monkeypatch, state=state)["vLLM vllm-main"]
    assert commands[
        commands.index("docker rm -f vllm-main >/dev/null 2>&1 || true") + 1
    ].startswith("docker run "), why
    uploaded = any(c.startswith("upload ") for c in commands)
    assert uploaded == (secrets["VLLM_API_KEY"] != KEY), why


def test_one_changed_instance_of_two_is_the_only_one_recreated(tmp_path, monkeypatch):
    instances = [{"name": "a", "gpus": [0, 1], "tensor_parallel_size": 2},
                 {"name": "b", "gpus": [2, 3], "port": 8001}]  # fmt: skip
    old = config_of(vllm_instances=instances)
    new_instances = [instances[0], {**instances[1], "gpu_memory_utilization": 0.8}]
    key = {"VLLM_API_KEY": KEY}
    state = ["docker=up", running(old, "a"), running(old, "b"), secrets_line("a", key),
             secrets_line("b", key)]  # fmt: skip
    planned = plan_of(tmp_path, monkeypatch, state=state, vllm_instances=new_instances)
    assert "vLLM vllm-a" not in planned
    run = " ".join(docker_run(planned["vLLM vllm-b"]))
    assert '--gpus "device=2,3"' in run and "--publish 0.0.0.0:8001:8000" in run
    assert "--gpu-memory-utilization 0.8" in run


def test_retired_instance_is_removed_with_its_secrets(tmp_path, monkeypatch):
    config = config_of()
    old = config_of(vllm_instances=[{"name": "old", "port": 9000}])
    key = {"VLLM_API_KEY": KEY}
    state = ["docker=up", running(config), running(old, "old"), secrets_line("main", key),
             secrets_line("old", key)]  # fmt: skip
    planned = plan_of(tmp_path, monkeypatch, state=state)
    assert "vLLM vllm-main" not in planned
    assert planned["Remove retired vLLM instances"] == [
        "docker rm -f vllm-old",
        f"rm -f {SECRETS_DIR}/old.env",
    ]


def test_gpu_less_host_shm_size_and_ipv6_bind(tmp_path, monkeypatch):
    planned = plan_of(
        tmp_path, monkeypatch, gpu=False, host_has_gpus=False, vllm_ipc_host=False,
        vllm_shm_size="2g", vllm_bind_address="::1", vllm_max_model_len=4096,
        vllm_quantization="awq", vllm_extra_args=["--enable-prefix-caching"],
    )  # fmt: skip
    commands = planned["vLLM vllm-main"]
    run = " ".join(docker_run(commands))
    assert "--gpus" not in run and "--ipc" not in run
    assert "--shm-size 2g --publish [::1]:8000:8000" in run
    assert run.endswith("--max-model-len 4096 --quantization awq --enable-prefix-caching")
    assert "url='http://[::1]:8000'" in commands[-1]


def test_image_archive_is_loaded_when_the_host_lacks_the_image(tmp_path, monkeypatch):
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"tar")
    planned = plan_of(tmp_path, monkeypatch, image_present=False, vllm_image_archive=str(archive))
    (upload, load) = planned["Load vllm/vllm-openai:v0.11.0"]
    assert upload.startswith("upload /var/tmp/gpufleet-image-") and str(archive) in upload
    assert "docker load -q -i /var/tmp/gpufleet-image-" in load
    assert "does not hold vllm/vllm-openai:v0.11.0" in load
    (tmp_path / "2").mkdir()
    present = plan_of(tmp_path / "2", monkeypatch, vllm_image_archive=str(archive))
    assert "Load vllm/vllm-openai:v0.11.0" not in present
