"""Plan tests of weights before swaps (issue 18 item 2): the model is pre-fetched with the new
image before an instance is (re)created, and only then; servers run offline from the cache
(vllm_hf_offline) with a persistent compile cache (vllm_compile_cache_dir)."""

from __future__ import annotations

import shlex

from operations.config.load import load_config
from operations.kit.throttle import Throttled
from operations.vllm import WRAPPER, prefetch_command, replace_commands
from tests.plan.test_vllm_plan import (
    BASE,
    KEY,
    SECRETS_DIR,
    TOKEN,
    config_of,
    deployed,
    docker_run,
    plan_of,
    ready_line,
    running,
    secrets_line,
    spec_of,
)

PREFETCH_START = "name=vllm-main model="


def prefetch_of(commands: list[str]) -> str:
    (found,) = [c for c in commands if c.startswith(PREFETCH_START)]
    return found


def prefetch_run(script: str) -> list[str]:
    """The one-shot container's ``docker run`` words inside the pre-fetch script."""
    line = next(ln for ln in script.splitlines() if ln.startswith('timeout -k 10 "$timeout" '))
    return shlex.split(line.removeprefix('timeout -k 10 "$timeout" ').partition(' >"$log"')[0])


def test_a_model_change_prefetches_with_the_new_image_before_the_old_server_stops(
    tmp_path, monkeypatch
):
    old = config_of()
    data = {"vllm_model": "Qwen/Qwen2.5-7B-Instruct", "vllm_image": "vllm/vllm-openai:v0.11.1"}
    commands = plan_of(tmp_path, monkeypatch, state=["docker=up", *deployed(old)], **data)[
        "vLLM vllm-main"
    ]
    fetch = prefetch_of(commands)
    at = commands.index(fetch)
    assert "df -Pk" in commands[at - 1]  # after the space guard
    assert commands[at + 1].startswith("if docker inspect vllm-main")  # then the old one stops
    run = prefetch_run(fetch)
    assert run[:5] == ["docker", "run", "--rm", "--name", "vllm-main.prefetch"]
    image = run.index("vllm/vllm-openai:v0.11.1")  # the NEW image's own tooling
    assert run[image + 1 : image + 6] == ["-c", WRAPPER, "gpufleet-vllm", "python3", "-c"]
    assert run[-1] == "Qwen/Qwen2.5-7B-Instruct" and "snapshot_download" in run[-2]
    text = " ".join(run)
    for flag in [
        "--volume /var/lib/gpufleet/huggingface:/root/.cache/huggingface",
        f"--mount type=bind,source={SECRETS_DIR}/main.env,target=/run/gpufleet/secrets.env,"
        "readonly",
        "--env HF_HOME=/root/.cache/huggingface", "--env HF_HUB_OFFLINE=0",
        "--entrypoint /bin/sh",
    ]:  # fmt: skip
        assert flag in text, flag
    assert "--publish" not in run and "--gpus" not in run and "--label" not in run


def test_the_prefetch_is_outside_the_throttled_replacement_and_carries_its_bound():
    config = config_of(vllm_prefetch_timeout_s=120)
    (server,) = config.vllm.servers()
    commands = replace_commands(config, server, spec_of(config), proven=True, serving=True)
    guard, fetch, throttled = commands
    assert isinstance(throttled, Throttled) and "prefetch" not in throttled.get_raw_value()
    assert fetch.get_raw_value().startswith(PREFETCH_START) and "timeout=120" in str(fetch)
    bound = fetch.connector_arguments["_timeout"]
    assert bound == 120 + config.deploy.timeout_margin_s


def test_the_token_is_only_in_the_secrets_file_never_in_the_prefetch(tmp_path, monkeypatch):
    secrets = {"VLLM_API_KEY": KEY, "HF_TOKEN": TOKEN}
    planned = plan_of(tmp_path, monkeypatch, secrets=secrets)
    fetch = prefetch_of(planned["vLLM vllm-main"])
    assert TOKEN not in fetch and KEY not in fetch and "HF_TOKEN" not in fetch
    run = prefetch_run(fetch)
    assert ". /run/gpufleet/secrets.env" in run[run.index("-c") + 1]  # sourced in the container


def test_a_converged_instance_plans_no_prefetch(tmp_path, monkeypatch):
    planned = plan_of(tmp_path, monkeypatch, state=["docker=up", *deployed(config_of())])
    assert list(planned) == BASE
    assert not any(c.startswith(PREFETCH_START) for cs in planned.values() for c in cs)


def test_a_server_only_gated_again_is_not_prefetched(tmp_path, monkeypatch):
    config = config_of()
    state = ["docker=up", running(config), secrets_line("main", {"VLLM_API_KEY": KEY})]
    commands = plan_of(tmp_path, monkeypatch, state=state)["vLLM vllm-main"]
    assert commands and not any(c.startswith(PREFETCH_START) for c in commands)


def test_servers_run_offline_with_a_persistent_compile_cache(tmp_path, monkeypatch):
    planned = plan_of(tmp_path, monkeypatch)
    run = docker_run(planned["vLLM vllm-main"])
    text = " ".join(run)
    assert "--env HF_HUB_OFFLINE=1" in text
    assert "--volume /var/lib/gpufleet/vllm-cache:/root/.cache/vllm" in text
    assert "--env VLLM_CACHE_ROOT=/root/.cache/vllm" in text
    image = run.index("vllm/vllm-openai:v0.31.0")
    assert "HF_HUB_OFFLINE=1" not in run[image:]  # an env of the container, not an argument


def test_the_compile_cache_directory_is_root_only(tmp_path, monkeypatch):
    planned = plan_of(tmp_path, monkeypatch, raw=True, vllm_compile_cache_dir="/srv/vllm-cc")
    made = "\n".join(planned["vLLM compile cache"])
    assert "mkdir -p /srv/vllm-cc" in made
    assert "chmod 700 /srv/vllm-cc" in made and "chown root:root /srv/vllm-cc" in made


def test_offline_off_drops_the_variable_and_changing_it_recreates(tmp_path, monkeypatch):
    online = config_of(vllm_hf_offline=False)
    assert spec_of(online) != spec_of(config_of())
    state = ["docker=up", *deployed(config_of())]
    commands = plan_of(tmp_path, monkeypatch, state=state, vllm_hf_offline=False)["vLLM vllm-main"]
    assert "HF_HUB_OFFLINE" not in " ".join(docker_run(commands))
    prefetch_of(commands)  # a recreation: pre-fetched first all the same


def test_a_compile_cache_path_docker_cannot_mount_is_refused_naming_the_setting():
    for bad in ("/srv/a:b", "relative", "/srv/$(id)"):
        (found,) = [str(p) for p in load_config("node-1", {"vllm_compile_cache_dir": bad})[1]]
        assert found.startswith(f"node-1: vllm_compile_cache_dir = {bad!r}: must be an abs"), found


def test_a_prefetch_timeout_out_of_range_is_refused():
    (found,) = [str(p) for p in load_config("node-1", {"vllm_prefetch_timeout_s": 5})[1]]
    assert found.startswith("node-1: ") and "vllm_prefetch_timeout_s = 5" in found


def test_a_hostile_model_is_one_word_in_the_prefetch():
    config = config_of()
    server = config.vllm.servers()[0].model_copy(update={"model": "org/m;touch x"})
    script = prefetch_command(config, server).get_raw_value()
    assert prefetch_run(script)[-1] == "org/m;touch x"
    assert "model='org/m;touch x'" in script


def test_a_ready_mark_alone_does_not_skip_the_prefetch_of_a_recreation(tmp_path, monkeypatch):
    """A stopped server is recreated: its model is fetched first (the cache may be gone)."""
    config = config_of()
    state = ["docker=up", running(config, status="exited"), ready_line("main", spec_of(config)),
             secrets_line("main", {"VLLM_API_KEY": KEY})]  # fmt: skip
    commands = plan_of(tmp_path, monkeypatch, state=state)["vLLM vllm-main"]
    assert commands.index(prefetch_of(commands)) < len(commands) - 3
