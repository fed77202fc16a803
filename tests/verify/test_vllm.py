"""Verify, layer 4 (vLLM): every configured instance runs the pinned image with its restart
policy, is published only on the configured address, holds the controller's secrets (and
shows them nowhere), answers /health, lists its model, completes one token with the API key
and refuses /v1 without it. The GPU check runs nvidia-smi inside the container ("not
applicable" on GPU-less hosts).

Container state comes from the deploy's own VllmState fact (one round trip per host); API
calls run curl on the host itself against the address the deploy probes, the key read there
from the root-only secrets file and handed to curl on stdin, never on a command line.
"""

from __future__ import annotations

import hashlib
import json
import shlex

import pytest

from operations.config.model import FleetConfig, VllmInstance
from operations.config.secrets import env_file, vllm_secrets
from operations.vllm import CONTAINER_PORT, key_to_curl, probe_address, secrets_path
from operations.vllm.facts import SECRETS_DIR, SPEC_LABEL
from tests.verify.facts import VLLM
from tests.verify.fleet import FactSpec, FleetHost

pytestmark = pytest.mark.vllm


def servers(fleet_host: FleetHost) -> list[VllmInstance]:
    return fleet_host.config.vllm.servers()


def inspect_of(fleet_host: FleetHost, server: VllmInstance) -> dict:
    found = fleet_host.read(VLLM)["containers"].get(server.name)
    assert found, f"{server.container}: no such container"
    return found


MARK = "@@gpufleet-probe"
MISSING = f"{MARK}-missing"  # the line saying a tool the probes need is not on the host
PROBE_TOOLS = ("curl",)


def _curl(config: FleetConfig, server: VllmInstance, path: str, body=None, key=True) -> str:
    """Shell for one request from the host to the instance's API, printing body, newline and
    HTTP status. The key goes from the host's secrets file to curl's stdin (printf is a
    shell builtin), never onto a command line."""
    tls = config.gateway.enabled(config.vllm.bind_address) and config.gateway.tls_cert_file
    url = f"{'https' if tls else 'http'}://{probe_address(config)}:{server.port}{path}"
    options = ["-sS", "--max-time", "30", "-o", "/dev/stdout", "-w", r"\n%{http_code}"]
    options += ["--insecure"] if tls else []  # loopback, not the name: test_gateway checks it
    if body is not None:
        options += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    header = key_to_curl(shlex.quote(secrets_path(server))) if key else ""
    return f"{header}curl -K - {shlex.join(options)} {shlex.quote(url)}"


def _probes(server: VllmInstance) -> dict[str, tuple[str, dict | None, bool]]:
    """What is asked of every instance: name -> (path, JSON body, with the key)."""
    completion = {"model": server.served_name, "prompt": "Hello", "max_tokens": 1}
    streamed = completion | {"max_tokens": 2, "stream": True}
    return {
        "health": ("/health", None, False),
        "models": ("/v1/models", None, True),
        "completion": ("/v1/completions", completion, True),
        "stream": ("/v1/completions", streamed, True),
        "models_without_key": ("/v1/models", None, False),
    }


def _parse_answers(lines: list[str]) -> dict[tuple[str, str], tuple[int, str]]:
    """{(instance, probe): (status, body)}; {(MISSING, tool): (0, "")} for each probe tool the
    host lacks (then nothing was asked)."""
    found = {(MISSING, line.split()[1]): (0, "") for line in lines if line.startswith(MISSING)}
    for chunk in "\n".join(lines).split(f"{MARK} ")[1:]:
        head, _, rest = chunk.partition("\n")
        instance, name = head.split()
        text, _, code = rest.rstrip("\n").rpartition("\n")
        found[(instance, name)] = (int(code) if code.isdigit() and code != "000" else 0, text)
    return found


def _answers_script(config: FleetConfig) -> str:
    """Every request of every instance, in one script (one round trip to the host)."""
    steps = [
        f"echo {MARK} {server.name} {name}; {_curl(config, server, *probe)}; echo"
        for server in config.vllm.servers()
        for name, probe in _probes(server).items()
    ]
    tools = " ".join(PROBE_TOOLS)
    missing = f"for t in {tools}; do command -v $t >/dev/null 2>&1 || echo {MISSING} $t; done"
    script = f'm=$({missing}); if [ -n "$m" ]; then echo "$m"; else\n' + "\n".join(steps or [":"])
    return script + "\nfi"


# {(instance, probe): (HTTP status, body)}, once per run (0 when curl could not connect)
ANSWERS = FactSpec("vLLM API answers", _answers_script, _parse_answers)
FACTS = (VLLM, ANSWERS)


def api(fleet_host: FleetHost, server: VllmInstance, probe: str) -> tuple[int, str]:
    """(HTTP status, body) of one probe; fails the check naming a probe tool the host lacks
    (its absence is no answer of the server's)."""
    found = fleet_host.read(ANSWERS)
    missing = [tool for kind, tool in found if kind == MISSING]
    assert not missing, (
        f"{' and '.join(missing)} is not installed on the host: the API probes need it"
    )
    code, text = found.get((server.name, probe), (0, "no answer"))
    return code, text


def _needs_key(fleet_host: FleetHost) -> str:
    key = vllm_secrets(fleet_host.config.vllm).get("VLLM_API_KEY")
    if not key:
        pytest.skip("not applicable: no API key is set on the controller")
    return key


def test_containers_run_the_pinned_image_with_the_restart_policy(fleet_host: FleetHost):
    vllm = fleet_host.config.vllm
    for server in servers(fleet_host):
        inspect = inspect_of(fleet_host, server)
        assert inspect["State"]["Status"] == "running", f"{server.container}: {inspect['State']}"
        assert inspect["Config"]["Image"] == vllm.image
        assert inspect["HostConfig"]["RestartPolicy"]["Name"] == vllm.restart_policy
    extra = set(fleet_host.read(VLLM)["containers"]) - {s.name for s in servers(fleet_host)}
    assert not extra, f"instances not in the config still exist: {sorted(extra)}"


def test_port_published_only_on_the_configured_address(fleet_host: FleetHost):
    """On vllm_bind_address and the server's port; behind the gateway, on loopback only."""
    config = fleet_host.config
    for server in servers(fleet_host):
        address, port = config.gateway.published(config.vllm.bind_address, server.port)
        bind, port = str(address), str(port)
        ports = inspect_of(fleet_host, server)["NetworkSettings"]["Ports"]
        bindings = {(b["HostIp"], b["HostPort"]) for b in ports.get(f"{CONTAINER_PORT}/tcp") or []}
        # Docker also lists the IPv6 twin of an any-address binding
        bindings -= {("::", port)} if bind == "0.0.0.0" else set()
        assert bindings == {(bind, port)}, f"{server.container}: {bindings}"


def test_secrets_file_is_root_only_and_holds_the_controllers_secrets(fleet_host: FleetHost):
    expected = env_file(vllm_secrets(fleet_host.config.vllm)).reveal()
    digest = hashlib.sha256(expected.encode()).hexdigest()
    found = fleet_host.read(VLLM)
    for server in servers(fleet_host):
        path = secrets_path(server)
        assert path not in found["not_files"], (
            f"{path} is not a regular file (Docker's --volume makes a directory there when a "
            "container starts while the file is missing): the server may run without its "
            "secrets; a deploy replaces it"
        )
        assert found["owners"].get(path) == "root:root:600", f"{path}: missing or not 0600"
        assert found["secrets"].get(path) == digest, f"{path} differs from the config"


def test_no_temporary_file_is_left_beside_the_secrets(fleet_host: FleetHost):
    """Only secrets files and readiness marks belong in the secrets directory: anything else
    is what a failed write left (a temporary secrets file may hold a key)."""
    strays = fleet_host.read(VLLM)["strays"]
    assert not strays, f"left in {SECRETS_DIR} by a failed run (may hold secrets): {strays}"


def test_servers_passed_the_readiness_gate_and_none_is_kept_aside(fleet_host: FleetHost):
    """Each server's spec is marked ready (the deploy's gate passed for it), and no previous
    server is still kept (a rollout that did not finish)."""
    found = fleet_host.read(VLLM)
    for server in servers(fleet_host):
        spec = (inspect_of(fleet_host, server)["Config"]["Labels"] or {}).get(SPEC_LABEL)
        assert found["ready"].get(server.name) == spec, (
            f"{server.container}: its spec {spec} never passed the deploy's readiness gate"
        )
    kept = sorted(inspect["Name"].lstrip("/") for inspect in found["previous"].values())
    assert not kept, f"previous servers kept by an unfinished deploy: {kept}"


def test_secrets_are_not_in_docker_inspect(fleet_host: FleetHost):
    secrets = list(vllm_secrets(fleet_host.config.vllm).values())
    for server in servers(fleet_host):
        text = json.dumps(inspect_of(fleet_host, server))
        assert not [s for s in secrets if s in text], f"{server.container}: a secret is visible"
        env = inspect_of(fleet_host, server)["Config"]["Env"] or []
        named = [e.split("=")[0] for e in env if e.startswith(("HF_TOKEN=", "VLLM_API_KEY="))]
        assert not named, f"{server.container}: {named} in the container's environment"


def test_containers_see_their_gpus(fleet_host: FleetHost):
    if not fleet_host.config.host.has_gpus:
        pytest.skip("not applicable: host_has_gpus is False")
    on_host = fleet_host.host.run("nvidia-smi -L")
    assert on_host.rc == 0, on_host.stderr
    for server in servers(fleet_host):
        inside = fleet_host.host.run(f"docker exec {server.container} nvidia-smi -L")
        assert inside.rc == 0, f"{server.container}: {inside.stderr}"
        expected = on_host.stdout.count("GPU ") if server.gpus == "all" else len(server.gpus)
        assert inside.stdout.count("GPU ") == expected, f"{server.container}: {inside.stdout}"


def test_health_answers_200(fleet_host: FleetHost):
    for server in servers(fleet_host):
        code, text = api(fleet_host, server, "health")
        assert code == 200, f"{server.container}: /health {code} {text[:200]}"


def test_models_lists_the_served_name(fleet_host: FleetHost):
    for server in servers(fleet_host):
        code, text = api(fleet_host, server, "models")
        assert code == 200, f"{server.container}: /v1/models {code} {text[:200]}"
        names = [model["id"] for model in json.loads(text)["data"]]
        assert server.served_name in names, f"{server.container}: serves {names}"


def test_one_token_completion(fleet_host: FleetHost):
    for server in servers(fleet_host):
        code, text = api(fleet_host, server, "completion")
        assert code == 200, f"{server.container}: /v1/completions {code} {text[:200]}"
        choice = json.loads(text)["choices"][0]
        assert isinstance(choice.get("text"), str), f"{server.container}: {text[:200]}"


def _events(text: str) -> list[str]:
    """The data of each server-sent event of a streamed response."""
    return [line[6:].strip() for line in text.splitlines() if line.startswith("data: ")]


def test_streamed_completion_arrives_as_events(fleet_host: FleetHost):
    """stream=true, through the gateway where it is on: completion chunks, then [DONE]."""
    for server in servers(fleet_host):
        code, text = api(fleet_host, server, "stream")
        assert code == 200, f"{server.container}: streamed /v1/completions {code} {text[:200]}"
        events = _events(text)
        assert events and events[-1] == "[DONE]", (
            f"{server.container}: the stream did not end with data: [DONE]: {text[-200:]!r}"
        )
        chunks = [json.loads(event) for event in events[:-1]]
        assert chunks and all(chunk.get("object") == "text_completion" for chunk in chunks), (
            f"{server.container}: not completion chunks: {text[:200]!r}"
        )


def test_v1_refused_without_the_api_key(fleet_host: FleetHost):
    _needs_key(fleet_host)
    for server in servers(fleet_host):
        code, _ = api(fleet_host, server, "models_without_key")
        assert code == 401, f"{server.container}: /v1/models without the key answered {code}"
