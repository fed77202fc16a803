"""The vLLM stand-in's /metrics (tests/standins/vllm/server.py): vLLM 0.11's metric names,
the latency histograms observed from its own requests, and the stuck engine the alert
"requests waiting, no tokens generated" needs.

The reference is vLLM 0.11's vllm/v1/metrics/loggers.py (names, documentation, buckets,
labels model_name and engine). The server runs as a local process (no root, no Docker).
The text is also parsed by the real promtool (`check metrics`; its lint warnings about
`:` in vLLM's names are expected), found like test_alert_rules finds it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.standins.vllm import server
from tests.unit.test_standin_vllm import MODEL, request, running

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = os.environ.get("GPUFLEET_REQUIRE_LAB") == "1"
# vLLM 0.11's buckets, copied from loggers.py (the stand-in must print the same)
TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
        7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
PER_TOKEN = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
             7.5, 10.0, 20.0, 40.0, 80.0]  # fmt: skip
REQUEST = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]  # fmt: skip
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": TTFT,
    "vllm:time_per_output_token_seconds": PER_TOKEN,
    "vllm:inter_token_latency_seconds": PER_TOKEN,
    "vllm:e2e_request_latency_seconds": REQUEST,
    "vllm:request_queue_time_seconds": REQUEST,
    "vllm:request_inference_time_seconds": REQUEST,
}
KEPT = (
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc",
    "vllm:kv_cache_usage_perc", "vllm:request_success_total", "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total", "http_requests_total",
)  # fmt: skip
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z0-9_:]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """{(name, labels): value} of every sample; every non-comment line must parse."""
    found = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        found[(match["name"], labels)] = float(match["value"])
    return found


def value(found, name: str, **labels: str) -> float:
    base = {"engine": "0", "model_name": "qwen", **labels}
    return found[(name, frozenset(base.items()))]


def bucket(found, name: str, le: str) -> float:
    return value(found, f"{name}_bucket", le=le)


# --- the text -----------------------------------------------------------------------------


def test_histograms_have_vllm_names_buckets_and_labels():
    text = server.render_metrics(server.Stats(), "qwen")
    found = parse(text)
    for name, buckets in HISTOGRAMS.items():
        assert f"# TYPE {name} histogram" in text
        les = [dict(k[1])["le"] for k in found if k[0] == f"{name}_bucket"]
        assert les == [repr(b) for b in buckets] + ["+Inf"], name
        assert value(found, f"{name}_count") == 0 and value(found, f"{name}_sum") == 0
    assert "# HELP vllm:inter_token_latency_seconds Histogram of inter-token latency" in text
    for name in KEPT:
        assert f"# TYPE {name} " in text, name


def test_observations_fill_cumulative_buckets():
    stats = server.Stats()
    reply = server.generate("qwen", "hello there", 4)
    timing = server.Timing(queue=0.0, ttft=0.03, itls=[0.02, 0.02, 0.2], inference=0.3, e2e=0.33)
    stats.finished(reply, timing)
    found = parse(server.render_metrics(stats, "qwen"))
    ttft = "vllm:time_to_first_token_seconds"
    assert bucket(found, ttft, "0.02") == 0 and bucket(found, ttft, "0.04") == 1
    assert bucket(found, ttft, "+Inf") == 1 and value(found, f"{ttft}_sum") == 0.03
    itl = "vllm:inter_token_latency_seconds"
    assert bucket(found, itl, "0.025") == 2 and bucket(found, itl, "0.2") == 3
    assert value(found, f"{itl}_count") == 3  # tokens - 1
    assert value(found, "vllm:time_per_output_token_seconds_count") == 3
    e2e = "vllm:e2e_request_latency_seconds"
    assert bucket(found, e2e, "0.3") == 0 and bucket(found, e2e, "0.5") == 1
    assert value(found, "vllm:generation_tokens_total") == 4


def _promtool() -> str:
    found = ROOT / ".tools" / "bin" / "promtool"
    if found.is_file():
        return str(found)
    if shutil.which("promtool"):
        return shutil.which("promtool")
    if REQUIRED:
        pytest.fail("promtool is missing (./dev unpacks Debian's into .tools/bin)")
    pytest.skip("promtool is missing (./dev unpacks it into .tools/bin; CI requires it)")


def test_promtool_parses_the_text():
    stats = server.Stats()
    stats.finished(server.generate("qwen", "x", 2), server.Timing(0.0, 0.01, [0.01], 0.02, 0.02))
    text = server.render_metrics(stats, "q")
    done = subprocess.run([_promtool(), "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    out = done.stdout + done.stderr
    assert "parsing error" not in out and "error while" not in out.lower(), out
    lint = [line for line in out.splitlines() if line.strip()]
    assert all("should not contain ':'" in line for line in lint), lint  # vLLM's own names


# --- the server's real requests -----------------------------------------------------------


def metrics(srv) -> dict:
    status, body = request(srv.port, "GET", "/metrics")
    assert status == 200
    return parse(body.decode())


def complete(srv, max_tokens: int = 4):
    return request(srv.port, "POST", "/v1/completions",
                   {"model": "qwen", "prompt": "hi", "max_tokens": max_tokens})  # fmt: skip


def test_real_requests_are_observed(tmp_path):
    args = [MODEL, "--served-model-name", "qwen"]
    with running(tmp_path, args, {"STANDIN_TOKEN_DELAY_S": "0.02"}) as srv:
        assert complete(srv)[0] == 200
        found = metrics(srv)
    assert value(found, "vllm:time_to_first_token_seconds_count") == 1
    assert value(found, "vllm:time_to_first_token_seconds_sum") >= 0.02  # one token's delay
    assert value(found, "vllm:inter_token_latency_seconds_count") == 3
    assert value(found, "vllm:inter_token_latency_seconds_sum") >= 0.06
    assert value(found, "vllm:e2e_request_latency_seconds_sum") >= 0.08
    assert value(found, "vllm:request_queue_time_seconds_count") == 1
    assert value(found, "vllm:request_queue_time_seconds_sum") < 0.3  # no queue: not stuck
    assert value(found, "vllm:num_requests_waiting") == 0


def test_a_stuck_engine_has_waiting_requests_and_makes_no_token(tmp_path):
    stuck = tmp_path / "stuck"
    args = [MODEL, "--served-model-name", "qwen"]
    with running(tmp_path, args, {"STANDIN_STUCK_FILE": str(stuck)}) as srv:
        assert complete(srv)[0] == 200
        tokens = value(metrics(srv), "vllm:generation_tokens_total")
        stuck.write_text("3\n")  # what `docker exec C sh -c 'echo 3 > FILE'` does
        assert value(metrics(srv), "vllm:num_requests_waiting") == 3
        result = {}
        client = threading.Thread(target=lambda: result.update(done=complete(srv)))
        client.start()
        time.sleep(0.8)
        found = metrics(srv)
        assert value(found, "vllm:num_requests_waiting") == 4  # the real one queued too
        assert value(found, "vllm:num_requests_running") == 0
        assert value(found, "vllm:generation_tokens_total") == tokens  # no token at all
        assert "done" not in result
        stuck.unlink()
        client.join(timeout=10)
        assert result["done"][0] == 200, result
        found = metrics(srv)
    assert value(found, "vllm:num_requests_waiting") == 0
    assert value(found, "vllm:generation_tokens_total") == tokens + 4
    assert bucket(found, "vllm:request_queue_time_seconds", "0.5") == 1  # only the first
    assert value(found, "vllm:request_queue_time_seconds_sum") >= 0.8


def test_stuck_from_the_start(tmp_path):
    args = [MODEL, "--served-model-name", "qwen"]
    env = {"STANDIN_STUCK_WAITING": "2", "STANDIN_STUCK_FILE": str(tmp_path / "absent")}
    with running(tmp_path, args, env) as srv:
        assert value(metrics(srv), "vllm:num_requests_waiting") == 2
        status, body = request(srv.port, "GET", "/health")
    assert status == 200 and json.loads(body or b"{}") == {}  # alive, only stuck
