"""Plan tests of the vLLM layer: given a host's containers and secrets files, exactly what is
planned: the container's full spec, recreation only on change, secrets kept off commands."""

from __future__ import annotations

import hashlib
import json
import re
import shlex

import pytest

from operations.config.load import load_config
from operations.config.model import FleetConfig
from operations.config.secrets import env_file
from operations.kit import throttle
from operations.vllm import NO_RUNTIME, Runtime
from operations.vllm import spec_of as spec_under
from tests.plan.harness import FakeFleet, gateway_off
from tests.plan.test_docker_plan import by_name, profile

KEY, TOKEN = "sk-test-KEY-1234567890", "hf_TOKEN_abcdefghijklmnop"
SECRETS_DIR = "/etc/gpufleet/vllm"
BASE = [
    "Install curl (the readiness probe)", "vLLM model cache", "vLLM compile cache",
    "vLLM secrets directory",
]  # fmt: skip


def config_of(**data) -> FleetConfig:
    config, problems = load_config("h", gateway_off(data))
    assert not problems, problems
    return config


def spec_of(config: FleetConfig, name: str = "main", runtime: Runtime = NO_RUNTIME) -> str:
    """The spec label of instance ``name`` (on a host whose facts name no driver and no
    toolkit, as plan_of's do unless given them: the arguments' hash alone)."""
    (server,) = [s for s in config.vllm.servers() if s.name == name]
    return spec_under(config, server, runtime)


def running(
    config: FleetConfig, name: str = "main", status: str = "running", spec=None, suffix=""
) -> str:
    """A VllmState container line as docker inspect prints it for a deployed instance
    (``suffix`` ".previous": the server kept while its replacement starts)."""
    (server,) = [s for s in config.vllm.servers() if s.name == name]
    labels = {"gpufleet.vllm": name, "gpufleet.spec": spec or spec_of(config, name)}
    args = ["-c", "wrapper", "gpufleet-vllm", "vllm", "serve", server.model,
            "--served-model-name", server.served_name]  # fmt: skip
    bindings = {"8000/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(server.port)}]}
    inspect = {
        "Name": f"/vllm-{name}{suffix}", "State": {"Status": status}, "Args": args,
        "Config": {"Labels": labels}, "HostConfig": {"PortBindings": bindings},
    }  # fmt: skip
    return "container=" + json.dumps(inspect)


def ready_line(name: str, spec: str) -> str:
    """A VllmState readiness mark: ``spec`` passed the readiness gate."""
    return f"ready={spec} {SECRETS_DIR}/{name}.ready"


def deployed(config: FleetConfig, name: str = "main", key: str = KEY) -> list[str]:
    """The state lines of an instance deployed and proven ready with ``config``."""
    return [running(config, name), ready_line(name, spec_of(config, name)),
            secrets_line(name, {"VLLM_API_KEY": key})]  # fmt: skip


def secrets_line(name: str, secrets: dict[str, str]) -> str:
    digest = hashlib.sha256(env_file(secrets).reveal().encode()).hexdigest()
    return f"secrets={digest}  {SECRETS_DIR}/{name}.env"


def plan_of(
    tmp_path, monkeypatch, state=("docker=up",), image_present=True, secrets=None, gpu=True,
    raw=False, facts=None, **data,
):  # fmt: skip
    """The vLLM layer's plan; ``facts``: more scripted fact output, matched first (the driver
    and toolkit facts the spec hash reads: none by default, so no driver, no toolkit)."""
    for name, value in (secrets if secrets is not None else {"VLLM_API_KEY": KEY}).items():
        monkeypatch.setenv(name, value)
    responses = {
        **(facts or {}),
        "os-release": [line for line in profile() if gpu or not line.startswith("pci=")],
        "label=gpufleet.vllm": list(state),
        "docker image inspect": ['[{"Id": "sha256:abc"}]'] if image_present else [],
    }
    host = {"fake_responses": responses, "deploy_layers": "vllm", **data}
    planned = by_name(FakeFleet(tmp_path, {"h": host}).plan()["h"])
    return planned if raw else {name: steps(commands) for name, commands in planned.items()}


FENCE = "pg=$(cut -d' ' -f5 /proc/$$/stat) && "
REPORTED = throttle.reporting("@").split("@")  # the subshell a throttled script runs in
UNMARK = re.compile(rf"\n(rm -f {SECRETS_DIR}/[a-z0-9-]+\.ready)\n")


def steps(commands: list[str]) -> list[str]:
    """Commands as the steps they run: a fenced command without its registration line
    (lock.fenced), and a throttled replacement (stop the serving server, unmark, start and
    gate: one command, operations.kit.throttle, in its FAILED-reporting subshell) as those
    three steps."""
    out = []
    for command in commands:
        if command.startswith(FENCE):
            command = command.partition("\n")[2]
        if command.startswith(REPORTED[0]) and command.endswith(REPORTED[1]):
            command = command[len(REPORTED[0]) : -len(REPORTED[1])]
        out += UNMARK.split(command, maxsplit=1)  # [command] or [keep, unmark, gate]
    return out


def gate_of(commands: list[str]) -> str:
    """The command that starts and gates the new server (and rolls back)."""
    gate = commands[-1]
    assert "\nelse\n" in gate, gate
    return gate


def starts_new(gate: str) -> bool:
    """The gate starts a new container (start_server, kit/scripts/vllm_start.sh) first."""
    return gate.startswith("start_server() {") and "\nif start_server && (\n" in gate


def docker_run(commands: list[str]) -> list[str]:
    gate = gate_of(commands)
    assert starts_new(gate), gate
    line = gate.partition("\n  err=$(")[2].partition("\n")[0]
    return shlex.split(line.removesuffix(" 2>&1 >/dev/null) && return 0"))


def test_fresh_host_gets_the_full_container_spec_and_a_readiness_gate(tmp_path, monkeypatch):
    planned = plan_of(tmp_path, monkeypatch, state=["docker=down"], image_present=False)
    # nothing to retire: no container, no secrets file
    assert list(planned) == [*BASE, "Pull vllm/vllm-openai:v0.31.0", "vLLM vllm-main"]
    assert planned["Pull vllm/vllm-openai:v0.31.0"] == [
        "docker image pull vllm/vllm-openai:v0.31.0"
    ]
    commands = planned["vLLM vllm-main"]
    run = docker_run(commands)
    spec = spec_of(config_of())
    assert run[:5] == ["docker", "run", "--detach", "--label", f"gpufleet.spec={spec}"]
    text = " ".join(run)
    for flag in [
        "--name vllm-main", "--label gpufleet.vllm=main", "--restart unless-stopped",
        "--log-driver json-file", "--log-opt max-size=100m", "--log-opt max-file=3",
        "--gpus all", "--ipc host", "--publish 0.0.0.0:8000:8000",
        "--volume /var/lib/gpufleet/huggingface:/root/.cache/huggingface",
        f"--mount type=bind,source={SECRETS_DIR}/main.env,target=/run/gpufleet/secrets.env,"
        "readonly",
        "--env HF_HOME=/root/.cache/huggingface", "--entrypoint /bin/sh",
    ]:  # fmt: skip
        assert flag in text, flag
    image_at = run.index("vllm/vllm-openai:v0.31.0")
    assert run[image_at + 1 : image_at + 7] == [
        "-c", "[ -f /run/gpufleet/secrets.env ] || { echo 'gpufleet-vllm: no secrets file at "
        "/run/gpufleet/secrets.env: not starting without it' >&2; exit 78; }; "
        'set -a; . /run/gpufleet/secrets.env; set +a; exec "$@"', "gpufleet-vllm",
        "vllm", "serve", "Qwen/Qwen2.5-1.5B-Instruct",
    ]  # fmt: skip
    assert "--served-model-name Qwen/Qwen2.5-1.5B-Instruct" in text
    assert "--tensor-parallel-size 1 --gpu-memory-utilization 0.9 --dtype auto" in text
    assert commands[0] == f"upload {SECRETS_DIR}/main.env.new: VLLM_API_KEY='{KEY}'\n"
    new = f"{SECRETS_DIR}/main.env.new"
    assert commands[1] == (
        f"{{ [ ! -d {SECRETS_DIR}/main.env ] || rm -rf -- {SECRETS_DIR}/main.env; }} && "
        f"chmod 600 {new} && mv -f {new} {SECRETS_DIR}/main.env || {{ rm -f {new}; exit 1; }}"
    )
    guard = commands[2]
    assert "df -Pk /var/lib/gpufleet/huggingface" in guard and "-ge 20971520 ]" in guard
    assert "vllm_min_free_cache_gib needs 20 GiB: the running server was left" in guard
    assert commands[3].startswith("name=vllm-main model=Qwen/Qwen2.5-1.5B-Instruct")  # pre-fetch
    assert commands[4] == "docker rm -f vllm-main >/dev/null 2>&1 || true"  # nothing to keep
    assert commands[5] == f"rm -f {SECRETS_DIR}/main.ready"  # not ready until the gate says
    ready = commands[-1]
    assert "url=http://127.0.0.1:8000" in ready and "timeout=1800" in ready
    assert "served=Qwen/Qwen2.5-1.5B-Instruct" in ready and "docker logs --tail 30" in ready
    # marked ready only when the gate passed; no rollback: there was no server before
    passed, _, failed = ready.rpartition("\nelse\n")
    assert f"printf '%s\\n' {spec} > {SECRETS_DIR}/main.ready" in passed.split("); then")[-1]
    assert failed == "exit 1\nfi"


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
    state = ["docker=up", *deployed(config_of())]
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
    mark = ready_line("main", spec or spec_of(config))
    state = ["docker=up", running(config, status=container_status, spec=spec), mark,
             secrets_line("main", secrets)]  # fmt: skip
    commands = plan_of(tmp_path, monkeypatch, state=state)["vLLM vllm-main"]
    assert starts_new(gate_of(commands)), why
    uploaded = any(c.startswith("upload ") for c in commands)
    assert uploaded == (secrets["VLLM_API_KEY"] != KEY), why


def test_one_changed_instance_of_two_is_the_only_one_recreated(tmp_path, monkeypatch):
    instances = [{"name": "a", "gpus": [0, 1], "tensor_parallel_size": 2},
                 {"name": "b", "gpus": [2, 3], "port": 8001}]  # fmt: skip
    old = config_of(vllm_instances=instances)
    new_instances = [instances[0], {**instances[1], "gpu_memory_utilization": 0.8}]
    state = ["docker=up", *deployed(old, "a"), *deployed(old, "b")]
    planned = plan_of(tmp_path, monkeypatch, state=state, vllm_instances=new_instances)
    assert "vLLM vllm-a" not in planned
    run = " ".join(docker_run(planned["vLLM vllm-b"]))
    assert '--gpus "device=2,3"' in run and "--publish 0.0.0.0:8001:8000" in run
    assert "--gpu-memory-utilization 0.8" in run


def test_retired_instance_is_removed_with_its_secrets(tmp_path, monkeypatch):
    config = config_of()
    old = config_of(vllm_instances=[{"name": "old", "port": 9000}])
    state = ["docker=up", *deployed(config), *deployed(old, "old"),
             running(old, "old", status="exited", suffix=".previous")]  # fmt: skip
    planned = plan_of(tmp_path, monkeypatch, state=state)
    assert "vLLM vllm-main" not in planned
    assert planned["Remove retired vLLM instances"] == [
        "docker rm -f vllm-old vllm-old.previous",
        f"rm -rf -- {SECRETS_DIR}/old.env {SECRETS_DIR}/old.ready",
    ]


def test_a_secrets_path_docker_made_a_directory_is_replaced_and_the_server_recreated(
    tmp_path, monkeypatch
):
    """A server whose secrets file was missing when Docker started it (an older --volume
    container: Docker made a directory there, and the server runs without its API key) is
    recreated, its file written in the directory's place; a retired one's is removed."""
    config = config_of()
    old = config_of(vllm_instances=[{"name": "old", "port": 9000}])
    directory = [f"notfile={SECRETS_DIR}/main.env", f"notfile={SECRETS_DIR}/old.env"]
    state = ["docker=up", running(config), ready_line("main", spec_of(config)),
             running(old, "old"), *directory]  # fmt: skip
    planned = plan_of(tmp_path, monkeypatch, state=state)
    commands = planned["vLLM vllm-main"]
    assert commands[1].startswith(
        f"{{ [ ! -d {SECRETS_DIR}/main.env ] || rm -rf -- {SECRETS_DIR}/main.env; }} && chmod 600"
    )
    assert starts_new(gate_of(commands))
    assert planned["Remove retired vLLM instances"][-1] == f"rm -rf -- {SECRETS_DIR}/old.env"


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
    (upload, load) = planned["Load vllm/vllm-openai:v0.31.0"]
    assert upload.startswith("upload /var/tmp/gpufleet-image-") and str(archive) in upload
    assert "docker load -q -i /var/tmp/gpufleet-image-" in load
    assert "does not hold vllm/vllm-openai:v0.31.0" in load
    (tmp_path / "2").mkdir()
    present = plan_of(tmp_path / "2", monkeypatch, vllm_image_archive=str(archive))
    assert "Load vllm/vllm-openai:v0.31.0" not in present


# --- readiness marks, the kept previous server, the rollback, leftovers ---------------------


def recreation(tmp_path, monkeypatch, state, raw=False, **data) -> list[str]:
    planned = plan_of(tmp_path, monkeypatch, state=["docker=up", *state], raw=raw, **data)
    return planned["vLLM vllm-main"]


@pytest.mark.parametrize("mark", [None, "0000000000000000"])
def test_a_spec_never_marked_ready_is_gated_again_not_taken_as_converged(
    tmp_path, monkeypatch, mark
):
    """The run that created the container failed its readiness gate (no mark, or the mark of
    an older spec): the next run gates it again instead of saying "No changes"."""
    config = config_of()
    state = [running(config), secrets_line("main", {"VLLM_API_KEY": KEY})]
    state += [ready_line("main", mark)] if mark else []
    (gate,) = recreation(tmp_path, monkeypatch, state)  # no removal, no docker run
    assert gate.startswith("if (\n") and "not ready after ${timeout}s" in gate
    assert f"printf '%s\\n' {spec_of(config)} > {SECRETS_DIR}/main.ready" in gate
    assert gate.endswith("else\nexit 1\nfi")  # nothing to roll back to: the host fails


def test_a_recreation_keeps_the_proven_server_and_removes_it_once_the_new_one_is_ready(
    tmp_path, monkeypatch
):
    commands = recreation(tmp_path, monkeypatch, deployed(config_of()), vllm_dtype="half")
    keep, unmark = commands[-3], commands[-2]
    # stopped first (it frees the port), then renamed; an older kept one replaced
    assert keep.index("docker rm -f vllm-main.previous") < keep.index("docker stop vllm-main")
    assert keep.index("docker stop vllm-main") < keep.index(
        "docker rename vllm-main vllm-main.previous || { docker start vllm-main"
    )
    assert unmark == f"rm -f {SECRETS_DIR}/main.ready"
    gate = gate_of(commands)
    passed = gate.split("\nelse\n")[0].rpartition("); then\n")[2]
    new_spec = spec_of(config_of(vllm_dtype="half"))
    assert passed == (
        "docker rm -f vllm-main.previous >/dev/null 2>&1 || true; "
        f"printf '%s\\n' {new_spec} > {SECRETS_DIR}/main.ready"
    )


def test_a_failed_new_server_is_rolled_back_to_the_previous_one(tmp_path, monkeypatch):
    old = config_of()
    commands = recreation(tmp_path, monkeypatch, deployed(old), vllm_dtype="half")
    gate = gate_of(commands)
    failed = gate.split("\nelse\n", 1)[1]
    steps = [
        "docker rm -f vllm-main >/dev/null 2>&1 || true",  # the new one
        f"printf '%s\\n' {spec_of(old)} > {SECRETS_DIR}/main.ready",  # the old spec is proven
        "if docker rename vllm-main.previous vllm-main && docker start vllm-main >/dev/null",
        "not ready after ${timeout}s",  # the same gate, for the old server
        "rolled back to the previous server (spec " + spec_of(old) + "), which serves again",
        f"rm -f {SECRETS_DIR}/main.ready; printf",  # it did not come back: not proven
        "did not come back either",
    ]
    at = [failed.index(step) for step in steps]
    assert at == sorted(at), at
    assert failed.endswith("; fi\nexit 1\nfi")  # the host fails either way
    assert failed.count("docker logs --tail 30") == 1  # the old server's log if it fails too
    assert gate.split("\nelse\n", 1)[0].count("docker logs --tail 30") == 1  # the new one's


def test_the_rollback_waits_for_the_previous_server_as_it_was_created(tmp_path, monkeypatch):
    old = config_of(vllm_served_model_name="qwen-v1", vllm_port=8100)
    new = {"vllm_served_model_name": "qwen-v2", "vllm_port": 8200}
    gate = gate_of(recreation(tmp_path, monkeypatch, deployed(old), **new))
    started, _, failed = gate.partition("\nelse\n")
    assert "served=qwen-v2" in started and "url=http://127.0.0.1:8200" in started
    assert "served=qwen-v1" in failed and "url=http://127.0.0.1:8100" in failed


def test_gate_and_rollback_carry_the_readiness_bound(tmp_path):
    from operations.kit import bounds
    from operations.vllm import start_and_gate

    config = config_of(vllm_ready_timeout_s=60)
    (server,) = config.vllm.servers()
    alone = start_and_gate(config, server, spec_of(config), None, None)
    assert alone.connector_arguments["_timeout"] == bounds.readiness_s(config)
    keep = json.loads(running(config).removeprefix("container="))
    both = start_and_gate(config, server, spec_of(config), "docker run x", keep)
    assert both.connector_arguments["_timeout"] == bounds.readiness_s(config) + 60


def test_a_server_that_never_passed_the_gate_is_removed_not_kept(tmp_path, monkeypatch):
    config = config_of()
    state = [running(config), secrets_line("main", {"VLLM_API_KEY": KEY})]  # no mark
    commands = recreation(tmp_path, monkeypatch, state, vllm_dtype="half")
    assert commands[-3] == "docker rm -f vllm-main >/dev/null 2>&1 || true"
    assert gate_of(commands).endswith("else\nexit 1\nfi")  # no rollback to it


def test_a_previous_server_left_by_a_crashed_run_is_kept_and_restored_on_failure(
    tmp_path, monkeypatch
):
    """The host died after the rename: no current container, the previous one stopped. The
    next run starts the new server and rolls back to the previous one if it fails."""
    config = config_of()
    state = [running(config, status="exited", suffix=".previous"), ready_line("main", "0" * 16),
             secrets_line("main", {"VLLM_API_KEY": KEY})]  # fmt: skip
    commands = recreation(tmp_path, monkeypatch, state)
    assert commands[-3] == "docker rm -f vllm-main >/dev/null 2>&1 || true"
    gate = gate_of(commands)
    assert starts_new(gate)
    assert "docker rename vllm-main.previous vllm-main" in gate.split("\nelse\n", 1)[1]
    assert "docker rm -f vllm-main.previous" in gate.split("\nelse\n", 1)[0]  # once ready


def test_a_crash_after_the_new_server_started_gates_it_with_the_rollback(tmp_path, monkeypatch):
    config = config_of()
    old = config_of(vllm_dtype="half")
    key = secrets_line("main", {"VLLM_API_KEY": KEY})
    state = [running(config), running(old, status="exited", suffix=".previous"),
             ready_line("main", spec_of(old)), key]  # fmt: skip
    (gate,) = recreation(tmp_path, monkeypatch, state)
    assert gate.startswith("if (\n")  # it runs already: no new container
    assert "rolled back to the previous server (spec " + spec_of(old) in gate


def test_a_converged_server_with_a_leftover_previous_one_only_removes_it(tmp_path, monkeypatch):
    config = config_of()
    state = [*deployed(config), running(config, status="exited", suffix=".previous")]
    assert recreation(tmp_path, monkeypatch, state) == ["docker rm -f vllm-main.previous"]
    (tmp_path / "x").mkdir()
    planned = plan_of(tmp_path / "x", monkeypatch, state=["docker=up", *state])
    assert "Remove retired vLLM instances" not in planned  # .previous is not an instance


def test_a_leftover_temporary_secrets_file_is_removed(tmp_path, monkeypatch):
    state = ["docker=up", *deployed(config_of()), f"stray={SECRETS_DIR}/main.env.new"]
    planned = plan_of(tmp_path, monkeypatch, state=state)
    assert planned["Remove leftover vLLM temporary files"] == [f"rm -rf {SECRETS_DIR}/main.env.new"]
    assert "vLLM vllm-main" not in planned


def test_a_failed_secrets_write_removes_the_temporary_file():
    from io import StringIO

    from operations.vllm import SecretUpload

    class Host:
        def __init__(self, put):
            self.put, self.ran = put, []

        def put_file(self, *args, **kwargs):
            return self.put()

        def run_shell_command(self, command):
            self.ran.append(str(command.get_raw_value()))

    class State:
        print_output = print_input = False

    def broken():
        raise OSError("disk full")

    temp = f"{SECRETS_DIR}/main.env.new"
    for put, done in [(lambda: False, False), (broken, None), (lambda: True, True)]:
        fake = Host(put)
        upload = SecretUpload(StringIO("VLLM_API_KEY=x\n"), temp, remote_temp_filename=temp)
        if done is None:
            with pytest.raises(OSError):
                upload.execute(State(), fake, {})
        else:
            assert upload.execute(State(), fake, {}) is done
        assert fake.ran == ([] if done else [f"rm -f {temp}"])


def test_the_state_script_reports_marks_strays_and_kept_servers(tmp_path):
    """The VllmState script itself, on a directory standing in for the secrets directory and
    with no Docker engine on the PATH."""
    import subprocess

    from operations.vllm.facts import parse_state, state_command

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\nexit 1\n")  # no engine answers
    (bin_dir / "docker").chmod(0o755)
    script = state_command().replace(SECRETS_DIR, str(tmp_path / "dir"))
    tmp_path = tmp_path / "dir"
    tmp_path.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    (tmp_path / "main.env").write_text("VLLM_API_KEY='k'\n")
    (tmp_path / "main.ready").write_text("0123456789abcdef\n")
    (tmp_path / "main.env.new").write_text("VLLM_API_KEY='new'\n")
    (tmp_path / ".main.env.tmp").write_text("x")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    state = parse_state(done.stdout.splitlines())
    assert state["docker"] is False and state["containers"] == {}
    assert state["ready"] == {"main": "0123456789abcdef"}
    assert sorted(state["strays"]) == [f"{tmp_path}/.main.env.tmp", f"{tmp_path}/main.env.new"]
    assert list(state["secrets"]) == [f"{tmp_path}/main.env"]
    kept = json.loads(running(config_of(), suffix=".previous").removeprefix("container="))
    both = parse_state(["docker=up", running(config_of()), "container=" + json.dumps(kept)])
    assert both["containers"]["main"]["Name"] == "/vllm-main"
    assert both["previous"]["main"]["Name"] == "/vllm-main.previous"


# --- the recreation's shell, run against a fake docker and curl -----------------------------

FAKE_DOCKER = r"""#!/bin/sh
# containers are files $SIM/c/<name> holding "<status> <old|new>"
c=$SIM/c; cmd=$1; shift
case $cmd in
inspect)
  if [ "$1" = --format ]; then [ -f "$c/$3" ] || exit 1; set -- $(cat "$c/$3"); echo "$1 0"
  else [ -f "$c/$1" ]; fi;;
rm) shift; for n; do rm -f "$c/$n"; done;;
stop|start) [ -f "$c/$1" ] || exit 1; set -- "$1" "$cmd" $(cat "$c/$1")
  [ "$2" = stop ] && echo "exited $4" > "$c/$1" || echo "running $4" > "$c/$1";;
rename) [ -f "$c/$1" ] && [ ! -f "$c/$2" ] && mv "$c/$1" "$c/$2";;
run) while [ "$1" != --name ]; do shift; done; [ ! -f "$c/$2" ] || exit 125
  echo "$NEW_STATUS new" > "$c/$2";;
logs) echo "INFO the new server's log line";;
esac
"""
FAKE_CURL = r"""#!/bin/sh
[ -f "$SIM/c/vllm-main" ] || { echo 000; exit 7; }
set -- $(cat "$SIM/c/vllm-main") "$@"
ok=no; [ "$2" = old ] || [ "$NEW_READY" = 1 ] && ok=yes
case "$*" in
*http_code*) [ $ok = yes ] && echo 200 || echo 500;;
*) [ $ok = no ] || echo '{"data":[{"id":"Qwen/Qwen2.5-1.5B-Instruct"}]}';;
esac
"""


@pytest.mark.parametrize(
    ("why", "new_ready", "new_status", "rc", "serving", "marked"),
    [
        ("the new server gets ready", "1", "running", 0, "running new", "new"),
        ("the new server never gets ready", "0", "running", 1, "running old", "old"),
        ("the new server exits at start", "0", "exited", 1, "running old", "old"),
    ],
)
def test_the_recreation_keeps_and_restores_the_previous_server_on_a_host(
    tmp_path, why, new_ready, new_status, rc, serving, marked
):
    """The shell of a recreation, command by command as pyinfra runs them, on a host whose
    docker and curl are fakes: the old server is kept aside, then removed or restored."""
    import subprocess

    from operations.vllm import replace_commands

    (tmp_path / "bin").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "etc").mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("curl", FAKE_CURL)):
        (tmp_path / "bin" / name).write_text(text)
        (tmp_path / "bin" / name).chmod(0o755)
    (tmp_path / "c" / "vllm-main").write_text("running old\n")
    (tmp_path / "etc" / "main.env").write_text("VLLM_API_KEY='k'\n")
    old, new = config_of(), config_of(vllm_dtype="half")
    keep = json.loads(running(old).removeprefix("container="))
    commands = replace_commands(new, new.vllm.servers()[0], spec_of(new), keep, proven=True)
    env = {"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "SIM": str(tmp_path),
           "NEW_READY": new_ready, "NEW_STATUS": new_status}  # fmt: skip
    for command in commands[2:]:  # not the cache space guard, not the pre-fetch
        text = command if isinstance(command, str) else command.get_raw_value()
        text = text.replace(SECRETS_DIR, str(tmp_path / "etc")).replace("timeout=1800", "timeout=1")
        done = subprocess.run(["sh", "-c", text], env=env, capture_output=True, text=True)
        if done.returncode:
            break
    assert done.returncode == rc, (why, done.stderr)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["vllm-main"], why
    assert (tmp_path / "c" / "vllm-main").read_text().strip() == serving, why
    spec = spec_of(new if marked == "new" else old)
    assert (tmp_path / "etc" / "main.ready").read_text() == f"{spec}\n", why
    if rc:
        assert "INFO the new server's log line" in done.stderr  # quoted as before
        assert "rolled back to the previous server" in done.stderr.splitlines()[-1], why


# --- a serving server's replacement: throttled, fenced ---------------------------------------


def test_replacing_a_serving_server_is_one_throttled_fenced_command(tmp_path, monkeypatch):
    """From the serving server's stop to the new one's readiness is one command, so the slot
    (vllm_max_unavailable) covers the whole time the host does not serve; it is fenced."""
    guard, fetch, replace = recreation(tmp_path, monkeypatch, deployed(config_of()), raw=True,
                                       vllm_dtype="half")  # fmt: skip
    assert "df -Pk" in guard and "docker run --rm --name vllm-main.prefetch" in fetch
    assert replace.startswith(FENCE)
    assert replace.endswith(REPORTED[1])  # it says when it failed: that holds others back
    stop, rename = replace.index("docker stop vllm-main"), replace.index("docker rename vllm-main")
    assert stop < rename < replace.index("docker run --detach") < replace.index("not ready after")


def test_a_server_not_serving_is_replaced_without_a_slot(tmp_path, monkeypatch):
    """A stopped or never-ready server: its replacement loses nothing, so it waits for none."""
    config = config_of()
    state = [running(config, status="exited"), ready_line("main", spec_of(config)),
             secrets_line("main", {"VLLM_API_KEY": KEY})]  # fmt: skip
    commands = recreation(tmp_path, monkeypatch, state, raw=True)
    assert commands[-3].startswith("if docker inspect vllm-main ")  # kept: it was proven
    assert commands[-2] == f"rm -f {SECRETS_DIR}/main.ready"  # separate steps: no slot
    assert commands[-1].startswith(FENCE)  # the gate is fenced all the same


def test_the_throttled_command_carries_the_setting_and_the_bound(tmp_path):
    from operations.kit import bounds
    from operations.kit.throttle import Throttled
    from operations.vllm import replace_commands

    config = config_of(vllm_max_unavailable=2, vllm_ready_timeout_s=60)
    (server,) = config.vllm.servers()
    keep = json.loads(running(config).removeprefix("container="))
    spec = spec_of(config)
    _, _, throttled = replace_commands(config, server, spec, keep, proven=True, serving=True)
    assert isinstance(throttled, Throttled)
    assert (throttled.instance, throttled.setting) == ("vllm-main", "2")
    margin = config.deploy.timeout_margin_s
    assert throttled.connector_arguments["_timeout"] == bounds.readiness_s(config) + 60 + margin
    alone = replace_commands(config, server, spec, keep, True)
    assert not any(isinstance(c, Throttled) for c in alone)
