"""The vLLM stand-in (tests/standins/vllm): its server as a local process, its image helpers.

The server tests run server.py with this Python on 127.0.0.1 and a free port: no root, no
Docker. The one `lab` test builds the image and runs it on the controller's Docker engine
(skipped when no engine answers).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab import LabError
from lab.engine import docker, engine_answers
from tests.standins.vllm import image, server

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tests/standins/vllm/server.py"
MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
API_KEY = "sk-standin-7f3a9c1e5b2d-UNIQUE"
HF_TOKEN = "hf_standinTOKEN_42c8e0a6d1f9"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CLEARED_ENV = ("VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE")


# --- helpers ------------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on right now, on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, method: str, path: str, body=None, headers=None):
    """(status, body bytes) of one HTTP request to the stand-in."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = json.dumps(body) if body is not None else None
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=payload, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_answering(port: int, proc: subprocess.Popen | None = None, timeout: float = 15):
    """Wait until /health answers (any status); the time it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            request(port, "GET", "/health")
            return time.monotonic() - start
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not answer /health in time")


class Server:
    """A running server.py: its port, process and stderr file."""

    def __init__(self, proc: subprocess.Popen, port: int, stderr: Path):
        self.proc, self.port, self.stderr_path = proc, port, stderr
        self.bodies: list[bytes] = []

    def call(self, method: str, path: str, body=None, headers=None):
        status, data = request(self.port, method, path, body, headers)
        self.bodies.append(data)
        return status, data

    def json(self, method: str, path: str, body=None, headers=None):
        status, data = self.call(method, path, body, headers)
        return status, json.loads(data)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def start(tmp: Path, args: list[str], env: dict[str, str] | None = None, port: int | None = None):
    """Start server.py on 127.0.0.1 with HF_HOME under `tmp` (never the real cache)."""
    port = port or free_port()
    environ = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    environ.update({"HF_HOME": str(tmp / "hf"), **(env or {})})
    stderr = tmp / f"server-{port}.err"
    cmd = [sys.executable, str(SERVER), *args, "--host", "127.0.0.1", "--port", str(port)]
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, env=environ, stdout=err, stderr=err)
    return Server(proc, port, stderr)


def stop(srv: Server) -> int:
    """SIGTERM the server and wait; its exit status."""
    if srv.proc.poll() is None:
        srv.proc.terminate()
        try:
            srv.proc.wait(10)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
    return srv.proc.returncode


@contextmanager
def running(tmp: Path, args: list[str], env: dict[str, str] | None = None):
    """A started and answering server, stopped afterwards."""
    srv = start(tmp, args, env)
    try:
        wait_answering(srv.port, srv.proc)
        yield srv
    finally:
        stop(srv)


FLAGS = [
    MODEL,
    "--served-model-name",
    "qwen",
    "qwen-alias",
    "--api-key",
    API_KEY,
    "--tensor-parallel-size",
    "2",
    "--gpu-memory-utilization",
    "0.85",
    "--max-model-len",
    "4096",
    "--dtype",
    "bfloat16",
    "--enable-prefix-caching",
    "--max-num-seqs",
    "8",
    "--kv-cache-dtype=fp8",
    "--tokenizer",
    "org/tok",
    f"--hf-token={HF_TOKEN}",
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("standin")
    with running(tmp, FLAGS, {"HF_TOKEN": HF_TOKEN}) as running_server:
        yield running_server


# --- the server ---------------------------------------------------------------------------


def test_health_is_200_with_no_body_and_open(srv):
    assert srv.call("GET", "/health") == (200, b"")


def test_models_lists_every_served_name(srv):
    status, body = srv.json("GET", "/v1/models", headers=AUTH)
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["qwen", "qwen-alias"]
    assert {(m["object"], m["owned_by"], m["root"]) for m in body["data"]} == {
        ("model", "vllm", MODEL)
    }


def test_completion_shape(srv):
    req = {"model": "qwen", "prompt": "Say hello", "max_tokens": 1}
    status, body = srv.json("POST", "/v1/completions", req, AUTH)
    assert status == 200
    assert body["object"] == "text_completion" and body["model"] == "qwen"
    assert body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["text"].strip() and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 1
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 1


def test_chat_completion_shape_and_default_max_tokens(srv):
    req = {"model": "qwen-alias", "messages": [{"role": "user", "content": "hi"}]}
    status, body = srv.json("POST", "/v1/chat/completions", req, AUTH)
    assert status == 200 and body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "stop"  # a few words, fewer than the default 16
    assert 1 <= body["usage"]["completion_tokens"] <= 4


def _stream(port: int, path: str, body: dict) -> tuple[str, list[tuple[float, dict | str]]]:
    """(Content-Type, [(arrival time, event)]) of one streamed request, read as it comes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", path, json.dumps(body), {**AUTH, "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        events = []
        while line := resp.readline():
            if line.startswith(b"data: "):
                text = line[6:].strip().decode()
                events.append((time.monotonic(), text if text == "[DONE]" else json.loads(text)))
        return resp.getheader("Content-Type"), events
    finally:
        conn.close()


def test_streamed_chat_is_vllms_chunks_then_done(srv):
    req = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "stream": True,
           "max_tokens": 3, "stream_options": {"include_usage": True}}  # fmt: skip
    kind, events = _stream(srv.port, "/v1/chat/completions", req)
    assert kind == "text/event-stream; charset=utf-8"
    bodies = [event for _, event in events]
    assert bodies[-1] == "[DONE]" and bodies[-2]["usage"]["completion_tokens"] == 3
    chunks = bodies[:-2]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(chunks) == 4 and len({chunk["id"] for chunk in chunks}) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks)
    assert len(text.split()) == 3


def test_streamed_completion_events_arrive_as_tokens_are_made(tmp_path):
    delay = tmp_path / "token-delay"
    delay.write_text("0.3\n")  # as the lab tests write it into a running container
    with running(tmp_path, [MODEL, "--api-key", API_KEY],
                 {"STANDIN_TOKEN_DELAY_FILE": str(delay)}) as srv:  # fmt: skip
        started = time.monotonic()
        req = {"model": MODEL, "prompt": "x", "max_tokens": 4, "stream": True}
        _, events = _stream(srv.port, "/v1/completions", req)
        assert events[-1][1] == "[DONE]" and len(events) == 5
        assert [e["choices"][0]["finish_reason"] for _, e in events[:-1]][-1] == "length"
        gaps = [b - a for (a, _), (b, _) in zip(events, events[1:-1], strict=False)]
        assert events[0][0] - started < 0.9 and all(gap > 0.2 for gap in gaps), gaps
        _, metrics = srv.call("GET", "/metrics")
        assert metric_value(metrics, "vllm:generation_tokens_total") == 4.0


def test_a_stream_counts_as_running_until_it_ends(tmp_path):
    delay = tmp_path / "token-delay"
    delay.write_text("0.4")
    with running(tmp_path, [MODEL], {"STANDIN_TOKEN_DELAY_FILE": str(delay)}) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=20)
        conn.request("POST", "/v1/completions",
                     json.dumps({"prompt": "x", "max_tokens": 4, "stream": True}))  # fmt: skip
        resp = conn.getresponse()
        resp.readline()  # the stream has begun
        _, metrics = srv.call("GET", "/metrics")
        assert metric_value(metrics, "vllm:num_requests_running") == 1.0
        resp.read()
        conn.close()
        _, metrics = srv.call("GET", "/metrics")
        assert metric_value(metrics, "vllm:num_requests_running") == 0.0


def metric_value(metrics: bytes, name: str) -> float:
    """The value of a one-series metric in a /metrics body."""
    for line in metrics.decode().splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}")


def test_unknown_model_is_an_openai_404(srv):
    req = {"model": "gpt-4", "prompt": "x"}
    status, body = srv.json("POST", "/v1/completions", req, AUTH)
    assert status == 404
    assert body["error"]["type"] == "NotFoundError" and "gpt-4" in body["error"]["message"]


def test_bad_requests_are_400(srv):
    status, body = srv.json("POST", "/v1/completions", {"prompt": "x", "max_tokens": 0}, AUTH)
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, _ = srv.call("POST", "/v1/chat/completions", {"model": "qwen"}, AUTH)
    assert status == 400


def test_api_key_guards_v1_only(srv):
    for path in ("/v1/models",):
        assert srv.json("GET", path) == (401, {"error": "Unauthorized"})
        assert srv.json("GET", path, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert srv.json("GET", path, headers=AUTH)[0] == 200
    assert srv.json("POST", "/v1/completions", {"prompt": "x"})[0] == 401
    for path in ("/health", "/metrics", "/version", "/standin/args"):
        assert srv.call("GET", path)[0] == 200, path


def _success_total(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{") and 'model_name="qwen"' in line
    )


def test_metrics_has_vllm_names_and_counts_requests(srv):
    status, before = srv.call("GET", "/metrics")
    assert status == 200
    text = before.decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert f'{name}{{engine="0",model_name="qwen"}} 0.0' in text
    assert "vllm:gpu_cache_usage_perc{" in text
    assert "# TYPE vllm:request_success_total counter" in text
    srv.call("POST", "/v1/completions", {"prompt": "x"}, AUTH)
    srv.call("POST", "/v1/completions", {"prompt": "y"}, AUTH)
    after = srv.call("GET", "/metrics")[1].decode()
    assert _success_total(after) == _success_total(text) + 2


def test_version(srv):
    status, body = srv.json("GET", "/version")
    assert status == 200 and body == {"version": server.STANDIN_VERSION}
    assert "standin" in body["version"]


def test_args_show_the_flags_without_secrets(srv):
    status, args = srv.json("GET", "/standin/args")
    assert status == 200 and "stand-in" in args["stand_in"]
    assert args["api_key_set"] is True and args["hf_token_set"] is True
    opts = args["options"]
    assert opts["model"] == MODEL and opts["served_model_name"] == ["qwen", "qwen-alias"]
    assert opts["tensor_parallel_size"] == 2 and opts["gpu_memory_utilization"] == 0.85
    assert opts["max_model_len"] == "4096" and opts["dtype"] == "bfloat16"
    assert "api_key" not in opts
    assert args["extra_args"] == {
        "enable-prefix-caching": True,
        "max-num-seqs": "8",
        "kv-cache-dtype": "fp8",
        "tokenizer": "org/tok",
        "hf-token": "***",
    }
    assert args["argv"][args["argv"].index("--api-key") + 1] == "***"
    assert "--hf-token=***" in args["argv"]
    assert "HF_TOKEN" in args["env_names"] and "HF_HOME" in args["env_names"]


def test_secrets_never_leave_the_server(tmp_path):
    env = {"VLLM_API_KEY": API_KEY, "HF_TOKEN": HF_TOKEN}
    args = [MODEL, "--hf-token", HF_TOKEN, "--gpufleet-some-secret", API_KEY]
    with running(tmp_path, args, env) as srv:
        for path in ("/health", "/v1/models", "/metrics", "/version", "/standin/args"):
            srv.call("GET", path, headers=AUTH)
            srv.call("GET", f"{path}?key={API_KEY}")
        srv.call("POST", "/v1/completions", {"prompt": API_KEY}, AUTH)
        srv.call("POST", "/v1/chat/completions", {"messages": [{"content": HF_TOKEN}]}, AUTH)
        srv.call("POST", "/v1/completions", {"model": API_KEY}, AUTH)
        status, args_body = srv.json("GET", "/standin/args")
    assert status == 200 and args_body["api_key_set"] and args_body["hf_token_set"]
    log = srv.stderr()
    assert "gpufleet stand-in" in log and '"GET /v1/models HTTP/1.1" 200' in log
    for secret in (API_KEY, HF_TOKEN):
        assert secret not in log
        for body in srv.bodies:
            assert secret.encode() not in body


def test_positional_model_and_default_served_name(tmp_path):
    with running(tmp_path, ["org/model-x"]) as srv:
        status, body = srv.json("GET", "/v1/models")  # no key set: /v1 is open
        assert status == 200 and [m["id"] for m in body["data"]] == ["org/model-x"]
        args = srv.json("GET", "/standin/args")[1]
    assert args["model"] == "org/model-x" and args["api_key_set"] is False
    assert args["hf_token_set"] is False


def test_model_flag_and_marker_in_the_download_dir_survives_a_restart(tmp_path):
    args = ["--model", "org/cached", "--download-dir", str(tmp_path / "dl")]
    marker = tmp_path / "dl/models--org--cached/stand-in"
    with running(tmp_path, args) as srv:
        first = srv.json("GET", "/standin/args")[1]
    assert marker.is_file() and first["cache_marker"] == str(marker)
    assert first["cache_hit"] is False
    content = marker.read_text()
    with running(tmp_path, args) as srv:
        assert srv.json("GET", "/standin/args")[1]["cache_hit"] is True
    assert marker.read_text() == content


def test_marker_follows_huggingface_layout():
    env = {"HF_HOME": "/c/hf"}
    assert server.marker_path("a/b", None, env) == Path("/c/hf/hub/models--a--b/stand-in")
    assert server.marker_path("a/b", None, {}) == Path(
        "/root/.cache/huggingface/hub/models--a--b/stand-in"
    )
    assert server.marker_path("a/b", "/d", env) == Path("/d/models--a--b/stand-in")
    assert server.marker_path("/models/local", None, env) is None


def test_crash_knob_exits_1_with_an_error_line(tmp_path):
    srv = start(tmp_path, [MODEL], {"STANDIN_CRASH": "1"})
    assert srv.proc.wait(15) == 1
    log = srv.stderr()
    assert "ERROR" in log and "EngineCore failed to start" in log and "STANDIN_CRASH" in log


def test_startup_delay_keeps_the_port_closed(tmp_path):
    srv = start(tmp_path, [MODEL], {"STANDIN_STARTUP_DELAY_S": "1.5"})
    try:
        time.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        waited = wait_answering(srv.port, srv.proc)
        assert waited >= 0.5  # 0.5 s already slept: at least 1 s after start in all
        assert request(srv.port, "GET", "/health")[0] == 200
    finally:
        stop(srv)


def test_fail_health_knob(tmp_path):
    with running(tmp_path, [MODEL], {"STANDIN_FAIL_HEALTH": "1"}) as srv:
        assert srv.call("GET", "/health")[0] == 500
        assert srv.call("GET", "/v1/models")[0] == 200


def test_sigterm_stops_cleanly(tmp_path):
    with running(tmp_path, [MODEL]) as srv:
        pass
    assert srv.proc.returncode == 0 and "Shutting down" in srv.stderr()


def test_unknown_routes_and_methods(srv):
    assert srv.call("GET", "/nope")[0] == 404
    assert srv.call("DELETE", "/health")[0] == 405


def test_secret_names():
    for name in ("--api-key", "--hf-token", "HF_TOKEN", "--client-secret", "--db-password"):
        assert server.is_secret_name(name), name
    for name in ("--tokenizer", "--max-num-batched-tokens", "--ssl-keyfile", "--model"):
        assert not server.is_secret_name(name), name


def test_extra_flags_parsing():
    parser = server.build_parser()
    tokens = ["--enforce-eager", "--max-num-seqs", "1", "--tokenizer=x", "--seed", "-1",
              "--gpufleet-test", "--gpufleet-value=v"]  # fmt: skip
    extra = server.parse_extra(tokens, parser)
    assert extra == {"enforce-eager": True, "max-num-seqs": "1", "tokenizer": "x",
                     "seed": "-1", "gpufleet-test": True, "gpufleet-value": "v"}  # fmt: skip
    with pytest.raises(SystemExit):
        server.parse_extra(["stray"], parser)


@pytest.mark.parametrize("flag", ["--no-such-engine-flag", "--no-such=1", "-x", "--gpufleet"])
def test_an_unknown_engine_flag_stops_the_server_at_start_as_vllm_does(flag, capsys):
    """Real vLLM's argparse refuses an unrecognised argument: usage, the error, status 2."""
    with pytest.raises(SystemExit) as stopped:
        server.parse_settings(["org/model", "--enforce-eager", flag, "3"], {})
    assert stopped.value.code == 2
    assert f"error: unrecognized arguments: {flag}" in capsys.readouterr().err


def test_an_unknown_engine_flag_exits_2_before_listening(tmp_path):
    """The whole server, as the container starts it: it never binds its port."""
    done = subprocess.run(
        [sys.executable, str(SERVER), "org/model", "--port", "0", "--no-such-engine-flag"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "unrecognized arguments: --no-such-engine-flag" in done.stderr
    assert "Uvicorn running" not in done.stderr


def test_model_required_and_not_twice():
    with pytest.raises(SystemExit):
        server.parse_settings(["--port", "1"], {})
    with pytest.raises(SystemExit):
        server.parse_settings(["a/b", "--model", "c/d"], {})
    settings = server.parse_settings(["a/b", "--model", "a/b"], {"VLLM_API_KEY": "k"})
    assert settings.model == "a/b" and settings.api_key == "k"


# --- the image helpers (no Docker) --------------------------------------------------------


def test_recipe_hash_follows_server_content(tmp_path, monkeypatch):
    first = image.recipe_hash()
    assert first == image.recipe_hash() and len(first) == 16
    copy = tmp_path / "server.py"
    copy.write_bytes(image.SERVER.read_bytes() + b"\n# changed\n")
    monkeypatch.setattr(image, "SERVER", copy)
    assert image.recipe_hash() != first


def test_image_names_itself_a_stand_in():
    assert "standin" in image.IMAGE and image.IMAGE.endswith(":0.11.0-standin")
    assert image.IMAGE_CHANGES[0] == 'ENTRYPOINT ["python3", "/opt/standin/server.py"]'
    assert "EXPOSE 8000" in image.IMAGE_CHANGES
    assert not any("nvidia" in p for p in image.PACKAGES)


def test_apt_options_are_private(tmp_path):
    opts = image.apt_options(tmp_path)
    joined = " ".join(opts)
    for key in ("sourcelist", "sourceparts", "lists", "status"):
        assert f"{key}={tmp_path}" in joined, key
    assert opts.count("-o") == len(opts) // 2


def test_package_versions_from_file_names():
    debs = [Path("zlib1g_1%3a1.2.13.dfsg-1_amd64.deb"), Path("dash_0.5.12-2_amd64.deb")]
    assert image.package_versions(debs) == "zlib1g=1:1.2.13.dfsg-1,dash=0.5.12-2"


def _save_tar(path: Path, members: dict[str, object]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, content in members.items():
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


LABELS = {image.HASH_LABEL: "abc", image.PACKAGES_LABEL: "dash=1"}


def test_tar_identity_classic_and_oci(tmp_path):
    config = {"config": {"Labels": LABELS}}
    classic = _save_tar(
        tmp_path / "classic.tar",
        {"manifest.json": [{"Config": "aa11.json"}], "aa11.json": config},
    )
    assert image.tar_identity(classic) == ({"sha256:aa11"}, LABELS)
    oci = _save_tar(
        tmp_path / "oci.tar",
        {
            "manifest.json": [{"Config": "blobs/sha256/bb22"}],
            "blobs/sha256/bb22": config,
            "index.json": {"manifests": [{"digest": "sha256:cc33"}]},
        },
    )
    assert image.tar_identity(oci) == ({"sha256:bb22", "sha256:cc33"}, LABELS)


def test_same_image():
    ids = {"sha256:aa"}
    assert image.same_image(("sha256:aa", {}), ids, LABELS)
    assert image.same_image(("sha256:zz", dict(LABELS)), ids, LABELS)
    assert not image.same_image(("sha256:zz", {image.HASH_LABEL: "abc"}), ids, LABELS)
    assert not image.same_image(None, ids, LABELS)


FAKE_DOCKER = """#!/bin/sh
# A fake `docker` for load_into: inspect prints $STATE/id, load stores stdin.
case "$1" in
  image) [ -f "$FAKE_STATE/id" ] || exit 1; cat "$FAKE_STATE/id" ;;
  load) cat > "$FAKE_STATE/loaded.tar"; cp "$FAKE_STATE/after" "$FAKE_STATE/id" ;;
esac
"""


@pytest.fixture
def fake_host(tmp_path, monkeypatch):
    """An 'ssh' that runs its command locally with a fake docker on PATH."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_STATE", str(state))
    tar = _save_tar(
        tmp_path / "img.tar",
        {"manifest.json": [{"Config": "aa11.json"}], "aa11.json": {"config": {}}},
    )
    return ["sh", "-c", 'eval "$1"', "fake-ssh"], tar, state


def test_load_into_loads_when_missing(fake_host):
    ssh, tar, state = fake_host
    (state / "after").write_text("sha256:aa11 {}\n")
    image.load_into(ssh, tar, log=lambda _: None)
    assert (state / "loaded.tar").read_bytes() == tar.read_bytes()


def test_load_into_skips_the_same_image(fake_host):
    ssh, tar, state = fake_host
    (state / "id").write_text("sha256:aa11 {}\n")
    image.load_into(ssh, tar, log=lambda _: None)
    assert not (state / "loaded.tar").exists()


def test_load_into_checks_the_result(fake_host):
    ssh, tar, state = fake_host
    (state / "id").write_text("sha256:old {}\n")
    (state / "after").write_text("sha256:other {}\n")
    with pytest.raises(LabError, match="after docker load"):
        image.load_into(ssh, tar, log=lambda _: None)


# --- the image on the controller's engine -------------------------------------------------


@pytest.mark.lab
def test_image_serves_on_the_controller_engine():
    if not engine_answers():
        pytest.skip("no Docker engine answers")
    image_id = image.ensure_image(ROOT, log=lambda _: None)
    assert image.current_image_id() == image_id
    name = f"gpufleet-standin-test-{os.getpid()}"
    docker(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        "127.0.0.1::8000",
        "-e",
        f"VLLM_API_KEY={API_KEY}",
        image_id,
        "--model",
        MODEL,
        "--served-model-name",
        "qwen",
    )
    try:
        published = docker("port", name, "8000").stdout.split()
        assert published and all(p.startswith("127.0.0.1:") for p in published), published
        port = int(published[0].rsplit(":", 1)[1])
        wait_answering(port, timeout=30)
        assert request(port, "GET", "/health")[0] == 200
        assert request(port, "GET", "/v1/models")[0] == 401
        status, body = request(port, "GET", "/v1/models", headers=AUTH)
        assert status == 200 and json.loads(body)["data"][0]["id"] == "qwen"
    finally:
        docker("rm", "-f", name, check=False)
    assert image_id in image.tar_identity(image.save_tar(ROOT, log=lambda _: None))[0]
