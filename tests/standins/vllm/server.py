#!/usr/bin/env python3
"""gpufleet STAND-IN for vLLM's OpenAI-compatible server. It is NOT vLLM: no model, no GPU.

The lab has no GPU and cannot pull the real `vllm/vllm-openai` image, so the test harness runs
this small server instead, in an image built from Debian packages (see image.py beside it). It
speaks the part of vLLM's HTTP API that the deploy's readiness gate and the verify checks use:

    GET  /health               200, empty body (500 with STANDIN_FAIL_HEALTH=1)
    GET  /v1/models            the served model names, OpenAI list shape
    POST /v1/completions       one short canned completion, OpenAI shape
    POST /v1/chat/completions  the same as a chat completion
    GET  /metrics              Prometheus text with real vLLM metric names
    GET  /version              {"version": "<stand-in version>"}
    GET  /standin/args         how it was started, secrets replaced by *** (stand-in only)

With an API key (`--api-key` or $VLLM_API_KEY), every /v1/* request needs
`Authorization: Bearer <key>`, else 401 {"error": "Unauthorized"}, as vLLM does; /health,
/metrics and /version stay open. The API key and the HF token are never logged or returned.

Like vLLM, it refuses at start a flag `vllm serve` does not have (`error: unrecognized
arguments: ...`, exit status 2); ENGINE_FLAGS are vLLM options it records without acting on
them, and `--gpufleet-*` is its own namespace for tests that pass values through.

Fault knobs (environment): STANDIN_STARTUP_DELAY_S (sleep before binding the port, like a
model download), STANDIN_CRASH=1 (log an error and exit 1 at start), STANDIN_FAIL_HEALTH=1,
STANDIN_TOKEN_DELAY_S (seconds per generated token, for latencies a dashboard can see).

Offline: with HF_HUB_OFFLINE=1 it starts only when the model is complete in the Hugging Face
cache (refs/main and its snapshot's config.json, as the stand-in huggingface_hub, hub.py
beside this file, writes them when the deploy pre-fetches the model); otherwise it exits 1
with vLLM's own error, `ValueError: Invalid repository ID or local directory specified`.

A stuck engine (the alert "requests waiting, no tokens"): while the file $STANDIN_STUCK_FILE
(default /tmp/gpufleet-standin-stuck) exists in the container, or STANDIN_STUCK_WAITING=N
was set at start, the engine schedules nothing: /metrics shows N waiting requests (the
file's number, default 1) plus every real one held in the queue, and no token is generated;
a generation request waits in the queue (up to STUCK_MAX_WAIT_S, then 503) and runs once the
file is gone. `docker exec C sh -c 'echo 3 > /tmp/gpufleet-standin-stuck'` makes it stuck,
`docker exec C rm /tmp/gpufleet-standin-stuck` frees it; only whoever may run commands in
the container can, no HTTP endpoint.

/metrics carries vLLM 0.11's names (vllm/v1/metrics/loggers.py): the scheduler gauges, the
token and request counters, and the latency histograms (`_bucket`/`_count`/`_sum`, vLLM's
buckets, labels engine and model_name) observed from the stand-in's own requests:
vllm:time_to_first_token_seconds, vllm:inter_token_latency_seconds and its deprecated twin
vllm:time_per_output_token_seconds, vllm:e2e_request_latency_seconds,
vllm:request_queue_time_seconds, vllm:request_inference_time_seconds.

Only the standard library is used, so it runs on Debian 12's python3.11-minimal plus
libpython3.11-stdlib and nothing else.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

STANDIN_VERSION = "0.11.0-standin"
BANNER = "gpufleet stand-in for vLLM's OpenAI-compatible server (not vLLM: no model, no GPU)"
DEFAULT_HF_HOME = "/root/.cache/huggingface"
MARKER_NAME = "stand-in"
WORDS = ("stand-in", "reply", "from", "gpufleet")  # at most this many "tokens" per reply
DEFAULT_MAX_TOKENS = 16
MAX_BODY = 1 << 20
REDACTED = "***"
# api-key, hf-token, HF_TOKEN, ...; not max-num-batched-tokens, tokenizer or ssl-keyfile
SECRET_NAME = re.compile(r"(?:key|token)(?![a-z])|secret|passw", re.IGNORECASE)
NEGATIVE_NUMBER = re.compile(r"^-\d")
HF_TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# `vllm serve` options (vLLM 0.11) the stand-in accepts and only records, beyond those it
# parses itself (build_parser); any other flag is refused at start, as real vLLM refuses it.
ENGINE_FLAGS = frozenset({
    "block-size", "chat-template", "compilation-config", "cpu-offload-gb", "data-parallel-size",
    "disable-log-requests", "disable-log-stats", "distributed-executor-backend",
    "enable-auto-tool-choice", "enable-chunked-prefill", "enable-expert-parallel", "enable-lora",
    "enable-prefix-caching", "enforce-eager", "generation-config", "guided-decoding-backend",
    "hf-token", "kv-cache-dtype", "limit-mm-per-prompt", "load-format", "max-cpu-loras",
    "max-log-len", "max-lora-rank", "max-loras", "max-num-batched-tokens", "max-num-seqs",
    "max-seq-len-to-capture", "middleware", "no-enable-prefix-caching", "pipeline-parallel-size",
    "reasoning-parser", "revision", "root-path", "seed", "speculative-config", "swap-space",
    "tokenizer", "tokenizer-mode", "tool-call-parser", "trust-remote-code", "uvicorn-log-level",
})  # fmt: skip
TEST_FLAG_PREFIX = "gpufleet-"  # the stand-in's own namespace: flags tests pass through


def log(level: str, message: str) -> None:
    """One vLLM-style log line on stderr (`INFO 11-24 20:11:05 [stand-in] message`)."""
    stamp = datetime.now().strftime("%m-%d %H:%M:%S")
    print(f"{level} {stamp} [stand-in] {message}", file=sys.stderr, flush=True)


# --- command line -------------------------------------------------------------------------


@dataclass
class Settings:
    """How the server was started; `api_key` stays here and is never rendered."""

    model: str
    served: list[str]
    host: str
    port: int
    api_key: str | None
    download_dir: str | None
    options: dict[str, object]
    extra_args: dict[str, object]
    argv: list[str]
    secrets: list[str] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    """The `vllm serve` options the stand-in acts on; ENGINE_FLAGS are recorded, any other
    flag is refused (parse_extra)."""
    parser = argparse.ArgumentParser(
        prog="vllm serve (gpufleet stand-in)",
        description=BANNER,
        allow_abbrev=False,  # `--served` must not silently become --served-model-name
    )
    parser.add_argument("--model", help="model to serve (or give it as the first argument)")
    parser.add_argument("--served-model-name", nargs="+", help="names clients use")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1/*")
    parser.add_argument("--tensor-parallel-size", type=int)
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--max-model-len", help="e.g. 4096 or 32k (recorded only)")
    parser.add_argument("--dtype")
    parser.add_argument("--quantization")
    parser.add_argument("--download-dir", help="model cache directory (marker file goes here)")
    return parser


def is_secret_name(name: str) -> bool:
    """True for flag or variable names that hold credentials (api-key, hf-token, ...)."""
    return bool(SECRET_NAME.search(name))


def mask(text: str, secrets: list[str]) -> str:
    """`text` with every secret value in it replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def _takes_value(token: str | None) -> bool:
    """Whether the token after an unknown flag is that flag's value (not another flag)."""
    if token is None:
        return False
    return not token.startswith("-") or bool(NEGATIVE_NUMBER.match(token))


def is_engine_flag(name: str) -> bool:
    """Whether `--name` is a `vllm serve` option the stand-in records without acting on it
    (a real vLLM option, or one of the stand-in's own `gpufleet-*` test namespace)."""
    return name in ENGINE_FLAGS or name.startswith(TEST_FLAG_PREFIX)


def parse_extra(tokens: list[str], parser: argparse.ArgumentParser) -> dict[str, object]:
    """Further `vllm serve` options, `--flag`, `--flag value` and `--flag=value`, as {flag:
    value or True}. A flag vLLM does not know stops the server at start as vLLM's argparse
    does: `error: unrecognized arguments: ...` and exit status 2."""
    extra: dict[str, object] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if not token.startswith("-"):
            parser.error(f"unexpected argument {token!r}")
        name, eq, value = token.lstrip("-").partition("=")
        if not token.startswith("--") or not is_engine_flag(name):
            parser.error(f"unrecognized arguments: {token}")
        if eq:
            extra[name] = value
        elif _takes_value(tokens[index] if index < len(tokens) else None):
            extra[name] = tokens[index]
            index += 1
        else:
            extra[name] = True
    return extra


def redact_argv(argv: list[str], secrets: list[str]) -> list[str]:
    """argv with the values of secret-named flags and any secret value replaced by ***."""
    shown: list[str] = []
    hide_next = False
    for token in argv:
        if hide_next:
            shown.append(REDACTED)
            hide_next = False
            continue
        name, eq, _ = token.partition("=")
        if token.startswith("-") and is_secret_name(name):
            shown.append(f"{name}={REDACTED}" if eq else token)
            hide_next = not eq
            continue
        shown.append(mask(token, secrets))
    return shown


def redact_extra(extra: dict[str, object], secrets: list[str]) -> dict[str, object]:
    """Unknown flags for display: secret-named ones hidden, secret values masked."""
    shown: dict[str, object] = {}
    for name, value in extra.items():
        if is_secret_name(name):
            shown[name] = REDACTED
        else:
            shown[name] = mask(value, secrets) if isinstance(value, str) else value
    return shown


def _split_model(argv: list[str]) -> tuple[str | None, list[str]]:
    """`vllm serve MODEL ...`: a first argument that is not a flag is the model."""
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    return None, argv


def _choose_model(positional: str | None, flag: str | None, parser) -> str:
    """The model from the first argument or --model; both given must agree."""
    if positional and flag and positional != flag:
        parser.error(f"model given twice: {positional!r} and --model {flag!r}")
    model = positional or flag
    if not model:
        parser.error("a model is required: give it as the first argument or with --model")
    return model


def parse_settings(argv: list[str], environ: dict[str, str]) -> Settings:
    """Parse a `vllm serve`-like command line; exits 2 with usage on a bad one."""
    parser = build_parser()
    positional, rest = _split_model(argv)
    known, unknown = parser.parse_known_args(rest)
    model = _choose_model(positional, known.model, parser)
    api_key = known.api_key or environ.get("VLLM_API_KEY") or None
    secrets = [s for s in [api_key, *(environ.get(n) for n in HF_TOKEN_ENVS)] if s]
    options = {k: v for k, v in vars(known).items() if k != "api_key"}
    options["model"] = model
    options["served_model_name"] = known.served_model_name or [model]
    extra = parse_extra(unknown, parser)
    return Settings(
        model=model,
        served=list(options["served_model_name"]),
        host=known.host,
        port=known.port,
        api_key=api_key,
        download_dir=known.download_dir,
        options=options,
        extra_args=redact_extra(extra, secrets),
        argv=redact_argv(argv, secrets),
        secrets=secrets,
    )


# --- model cache marker -------------------------------------------------------------------


def marker_path(model: str, download_dir: str | None, environ: dict[str, str]) -> Path | None:
    """Where Hugging Face would cache `model`, plus the marker's name; None for a local path.

    Same layout as huggingface_hub: `--download-dir D` -> D/models--ORG--NAME, otherwise
    $HF_HUB_CACHE or $HF_HOME/hub (HF_HOME defaults to /root/.cache/huggingface)."""
    if model.startswith(("/", ".")):
        return None
    repo = "models--" + model.replace("/", "--")
    if download_dir:
        return Path(download_dir) / repo / MARKER_NAME
    home = Path(environ.get("HF_HOME") or DEFAULT_HF_HOME)
    hub = Path(environ["HF_HUB_CACHE"]) if environ.get("HF_HUB_CACHE") else home / "hub"
    return hub / repo / MARKER_NAME


def ensure_marker(path: Path | None, model: str) -> bool:
    """Write the marker unless it is there; True on a cache hit (it was already there)."""
    if path is None:
        return False
    if path.exists():
        log("INFO", f"model {model} found in the cache ({path.parent})")
        return True
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{MARKER_NAME}.tmp")
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tmp.write_text(json.dumps({"stand_in": "gpufleet", "model": model, "created": stamp}))
        os.replace(tmp, path)
        log("INFO", f"model {model} 'downloaded' (stand-in marker {path})")
    except OSError as exc:
        log("WARNING", f"cannot write the cache marker {path}: {exc.strerror}")
    return False


# --- requests and responses ---------------------------------------------------------------


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict:
        """vLLM's error JSON: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }


def bad_request(message: str, param: str | None = None) -> ApiError:
    """A 400 in vLLM's words."""
    return ApiError(400, message, "BadRequestError", param)


def count_words(value: object) -> int:
    """A rough prompt token count: words in strings, items in token-id lists, recursively."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(1 if isinstance(v, int) else count_words(v) for v in value)
    if isinstance(value, dict):
        return count_words(value.get("content")) + count_words(value.get("text"))
    return 0


def requested_tokens(request: dict, names: tuple[str, ...]) -> int:
    """The request's max tokens (first of `names` present), checked like vLLM: an int >= 1."""
    for name in names:
        value = request.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_request(f"{name} must be at least 1, got {value!r}.", name)
        return value
    return DEFAULT_MAX_TOKENS


@dataclass
class Reply:
    """What the stand-in 'generated' for one request."""

    model: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    def usage(self) -> dict:
        """The OpenAI `usage` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens": self.completion_tokens,
            "prompt_tokens_details": None,
        }


def generate(model: str, prompt: object, max_tokens: int) -> Reply:
    """A canned reply of min(max_tokens, a few) words; `length` when max_tokens cut it."""
    count = min(max_tokens, len(WORDS))
    finish = "length" if count == max_tokens else "stop"
    text = " ".join(WORDS[:count])
    return Reply(model, text, count_words(prompt), count, finish)


def completion_body(reply: Reply) -> dict:
    """An OpenAI /v1/completions response for `reply`."""
    return {
        "id": f"cmpl-{os.urandom(16).hex()}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "text": " " + reply.text,
                "logprobs": None,
                "finish_reason": reply.finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
        ],
        "usage": reply.usage(),
    }


def chat_body(reply: Reply) -> dict:
    """An OpenAI /v1/chat/completions response for `reply`."""
    return {
        "id": f"chatcmpl-{os.urandom(16).hex()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply.text,
                    "reasoning_content": None,
                    "tool_calls": [],
                },
                "logprobs": None,
                "finish_reason": reply.finish_reason,
                "stop_reason": None,
            }
        ],
        "usage": reply.usage(),
        "prompt_logprobs": None,
    }


# --- metrics ------------------------------------------------------------------------------

# vLLM 0.11's histogram buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
# name -> (documentation, buckets), in vLLM's order
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": (
        "Histogram of time to first token in seconds.", TTFT_BUCKETS),
    "vllm:time_per_output_token_seconds": (
        "Histogram of time per output token in seconds."
        "DEPRECATED: Use vllm:inter_token_latency_seconds instead.", TOKEN_BUCKETS),
    "vllm:inter_token_latency_seconds": (
        "Histogram of inter-token latency in seconds.", TOKEN_BUCKETS),
    "vllm:e2e_request_latency_seconds": (
        "Histogram of e2e request latency in seconds.", REQUEST_BUCKETS),
    "vllm:request_queue_time_seconds": (
        "Histogram of time spent in WAITING phase for request.", REQUEST_BUCKETS),
    "vllm:request_inference_time_seconds": (
        "Histogram of time spent in RUNNING phase for request.", REQUEST_BUCKETS),
}  # fmt: skip
STUCK_FILE = "/tmp/gpufleet-standin-stuck"
TOKEN_DELAY_FILE = "/tmp/gpufleet-standin-token-delay"  # seconds between streamed tokens
STUCK_MAX_WAIT_S = 60.0
STUCK_POLL_S = 0.2


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, count and sum."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1


@dataclass
class Timing:
    """What one request took, as vLLM measures it (seconds): in the queue, to its first
    token, between tokens, in the running phase, end to end."""

    queue: float
    ttft: float
    itls: list[float]
    inference: float
    e2e: float


class Stats:
    """Counters behind /metrics, shared by the request threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.waiting = 0  # real requests held in the queue by a stuck engine
        self.success: Counter[str] = Counter()  # by finish reason
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.http: Counter[tuple[str, str, str]] = Counter()  # (handler, method, status class)
        self.histograms = {name: Histogram(b) for name, (_doc, b) in HISTOGRAMS.items()}
        self.stuck_waiting = 0  # phantom waiting requests while stuck (set per scrape)

    def finished(self, reply: Reply, timing: Timing | None = None) -> None:
        """Count a generated reply (vllm:request_success_total, the token counters and,
        with its timing, the latency histograms)."""
        with self.lock:
            self.success[reply.finish_reason] += 1
            self.prompt_tokens += reply.prompt_tokens
            self.generation_tokens += reply.completion_tokens
            if timing is None:
                return
            observed = self.histograms
            observed["vllm:time_to_first_token_seconds"].observe(timing.ttft)
            for itl in timing.itls:
                observed["vllm:inter_token_latency_seconds"].observe(itl)
                observed["vllm:time_per_output_token_seconds"].observe(itl)
            observed["vllm:e2e_request_latency_seconds"].observe(timing.e2e)
            observed["vllm:request_queue_time_seconds"].observe(timing.queue)
            observed["vllm:request_inference_time_seconds"].observe(timing.inference)

    def http_request(self, handler: str, method: str, status: int) -> None:
        """Count any request (http_requests_total, as vLLM's instrumentator does)."""
        with self.lock:
            self.http[(handler, method, f"{status // 100}xx")] += 1


def _escape(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    """`{a="x",b="y"}`, labels sorted."""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _family(name: str, kind: str, doc: str, samples: list[tuple[str, float]]) -> list[str]:
    """One metric family: HELP, TYPE and its samples."""
    lines = [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
    return lines + [f"{name}{labels} {value:.1f}" for labels, value in samples]


def _go_float(value: float) -> str:
    """prometheus_client's float text: 0.001, 1.0, 2560.0, +Inf."""
    return "+Inf" if value == float("inf") else repr(float(value))


def _histogram(name: str, doc: str, hist: Histogram, base: dict[str, str]) -> list[str]:
    """A histogram family as prometheus_client prints it: buckets (le), _count, _sum."""
    lines = [f"# HELP {name} {doc}", f"# TYPE {name} histogram"]
    pairs = [*zip(hist.buckets, hist.counts, strict=True), (float("inf"), hist.count)]
    for bound, count in pairs:
        labels = _labels(**base, le=_go_float(bound))
        lines.append(f"{name}_bucket{labels} {_go_float(count)}")
    lines.append(f"{name}_count{_labels(**base)} {_go_float(hist.count)}")
    lines.append(f"{name}_sum{_labels(**base)} {_go_float(hist.sum)}")
    return lines


def render_metrics(stats: Stats, model_name: str) -> str:
    """Prometheus text: vLLM's metric names (values are the stand-in's, not measurements)."""
    base = {"engine": "0", "model_name": model_name}
    with stats.lock:
        reasons = dict(stats.success) or {"stop": 0}
        gauges = [
            ("vllm:num_requests_running", "Number of requests in model execution batches."),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
            ("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage."),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
        ]
        values = {
            "vllm:num_requests_running": float(stats.running),
            "vllm:num_requests_waiting": float(stats.waiting + stats.stuck_waiting),
        }
        lines = [f"# {BANNER}"]
        for name, doc in gauges:
            lines += _family(name, "gauge", doc, [(_labels(**base), values.get(name, 0.0))])
        lines += _family(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            [(_labels(**base, finished_reason=r), n) for r, n in sorted(reasons.items())],
        )
        for name, value in (
            ("vllm:prompt_tokens_total", stats.prompt_tokens),
            ("vllm:generation_tokens_total", stats.generation_tokens),
        ):
            lines += _family(name, "counter", "Number of tokens.", [(_labels(**base), value)])
        lines += _family(
            "http_requests_total",
            "counter",
            "Total number of requests by method, status and handler.",
            [
                (_labels(handler=h, method=m, status=s), n)
                for (h, m, s), n in sorted(stats.http.items())
            ],
        )
        for name, (doc, _buckets) in HISTOGRAMS.items():
            lines += _histogram(name, doc, stats.histograms[name], base)
    return "\n".join(lines) + "\n"


# --- HTTP ---------------------------------------------------------------------------------


@dataclass
class App:
    """Everything a request handler needs: settings, counters and startup facts."""

    settings: Settings
    stats: Stats
    fail_health: bool
    env_names: list[str]
    hf_token_set: bool
    marker: Path | None
    cache_hit: bool
    started: float = field(default_factory=time.time)
    stuck_file: str = STUCK_FILE
    stuck_at_start: int = 0  # STANDIN_STUCK_WAITING: stuck from the start, for good
    token_delay: float = 0.0  # STANDIN_TOKEN_DELAY_S
    token_delay_file: str = TOKEN_DELAY_FILE

    def stuck(self) -> int:
        """How many phantom requests wait while the engine is stuck (0: it is not)."""
        try:
            text = Path(self.stuck_file).read_text().strip()
        except FileNotFoundError:
            return self.stuck_at_start
        except OSError:
            return 1
        return int(text) if text.isdigit() and int(text) > 0 else 1

    def wait_for_engine(self, arrived: float) -> None:
        """Hold a request in the queue while the engine is stuck (503 after a while)."""
        stats = self.stats
        with stats.lock:
            stats.waiting += 1
        try:
            while self.stuck():
                if time.monotonic() - arrived > STUCK_MAX_WAIT_S:
                    raise ApiError(
                        503,
                        "The engine schedules no request (gpufleet stand-in: stuck).",
                        "ServiceUnavailableError",
                    )
                time.sleep(STUCK_POLL_S)
        finally:
            with stats.lock:
                stats.waiting -= 1

    def run(self, model: str, prompt: object, max_tokens: int) -> tuple[Reply, Timing]:
        """Queue, schedule and 'generate' one request, timing it as vLLM does."""
        arrived = time.monotonic()
        self.wait_for_engine(arrived)
        scheduled = time.monotonic()
        with self.stats.lock:
            self.stats.running += 1
        try:
            reply = generate(model, prompt, max_tokens)
            stamps = []
            for _ in range(reply.completion_tokens):
                if self.token_delay > 0:
                    time.sleep(self.token_delay)
                stamps.append(time.monotonic())
        finally:
            with self.stats.lock:
                self.stats.running -= 1
        done = stamps[-1] if stamps else time.monotonic()
        timing = Timing(
            queue=scheduled - arrived,
            ttft=(stamps[0] if stamps else done) - arrived,
            itls=[b - a for a, b in zip(stamps, stamps[1:], strict=False)],
            inference=done - scheduled,
            e2e=done - arrived,
        )
        return reply, timing

    def token_pause(self) -> float:
        """Seconds between tokens: STANDIN_TOKEN_DELAY_S, or the token delay file's number
        (written into a running container by the lab tests: a slow stream on demand)."""
        try:
            text = Path(self.token_delay_file).read_text().strip()
        except OSError:
            return self.token_delay
        try:
            return min(max(float(text), 0.0), 10.0)
        except ValueError:
            return self.token_delay

    def stream(self, model: str, prompt: object, max_tokens: int, kind: str,
               request: dict) -> Stream:  # fmt: skip
        """Queue the request, then yield one event per token as it is 'generated' (counted
        running meanwhile, as in vLLM), the finish, usage if asked, and `[DONE]`."""
        arrived = time.monotonic()
        self.wait_for_engine(arrived)
        reply = generate(model, prompt, max_tokens)
        options = request.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        head = {"id": f"{prefix}-{os.urandom(16).hex()}", "created": int(time.time()),
                "model": reply.model}  # fmt: skip
        return Stream(self._events(reply, kind, head, usage, arrived))

    def _events(self, reply: Reply, kind: str, head: dict, usage: bool,
                arrived: float) -> Iterator[bytes]:  # fmt: skip
        scheduled = time.monotonic()
        with self.stats.lock:
            self.stats.running += 1
        stamps: list[float] = []
        words = reply.text.split(" ") if reply.text else []
        chat = kind == "chat.completion"
        try:
            if chat:
                yield sse(stream_chunk(kind, head, "", None, True))
            for index, word in enumerate(words):
                pause = self.token_pause()
                if pause > 0:
                    time.sleep(pause)
                stamps.append(time.monotonic())
                piece = word if index == 0 and chat else " " + word
                finish = reply.finish_reason if index == len(words) - 1 else None
                yield sse(stream_chunk(kind, head, piece, finish, False))
            if not words:
                yield sse(stream_chunk(kind, head, "", reply.finish_reason, False))
            if usage:
                yield sse(head | {"object": f"{kind}.chunk" if kind == "chat.completion"
                                  else kind, "choices": [], "usage": reply.usage()})  # fmt: skip
            yield sse("[DONE]")
        finally:
            with self.stats.lock:
                self.stats.running -= 1
        done = stamps[-1] if stamps else time.monotonic()
        self.stats.finished(reply, Timing(
            queue=scheduled - arrived, ttft=(stamps[0] if stamps else done) - arrived,
            itls=[b - a for a, b in zip(stamps, stamps[1:], strict=False)],
            inference=done - scheduled, e2e=done - arrived,
        ))  # fmt: skip

    def model_for(self, request: dict) -> str:
        """The served name a request asks for (default: the first); 404 for any other."""
        name = request.get("model") or self.settings.served[0]
        if name not in self.settings.served:
            shown = mask(str(name), self.settings.secrets)  # a client may send anything
            raise ApiError(404, f"The model `{shown}` does not exist.", "NotFoundError", "model")
        return name

    def authorized(self, header: str | None) -> bool:
        """vLLM's rule: with a key, /v1/* needs exactly `Authorization: Bearer <key>`."""
        key = self.settings.api_key
        if not key:
            return True
        return hmac.compare_digest((header or "").encode(), f"Bearer {key}".encode())

    def args_body(self) -> dict:
        """/standin/args: how the server was started, with no secret values in it."""
        s = self.settings
        return {
            "stand_in": BANNER,
            "version": STANDIN_VERSION,
            "argv": s.argv,
            "model": s.model,
            "served_model_name": s.served,
            "options": s.options,
            "extra_args": s.extra_args,
            "api_key_set": bool(s.api_key),
            "hf_token_set": self.hf_token_set,
            "env_names": self.env_names,
            "cache_marker": str(self.marker) if self.marker else None,
            "cache_hit": self.cache_hit,
            "pid": os.getpid(),
            "started": int(self.started),
        }


Response = tuple[int, str, bytes]
JSON = "application/json"


def json_response(status: int, body: object) -> Response:
    """A JSON response tuple."""
    return status, JSON, json.dumps(body).encode()


@dataclass
class Stream:
    """A streamed 200: server-sent events, one per generated token, as vLLM sends them."""

    events: Iterator[bytes]


def sse(body: object) -> bytes:
    """One server-sent event (vLLM: `data: <json>` and a blank line)."""
    text = body if isinstance(body, str) else json.dumps(body)
    return f"data: {text}\n\n".encode()


def stream_chunk(kind: str, head: dict, piece: str, finish: str | None, first: bool) -> dict:
    """One `chat.completion.chunk` (a delta; the first, vLLM's role chunk, names the role)
    or streamed `text_completion` (its text)."""
    if kind == "chat.completion":
        delta = {"role": "assistant", "content": piece} if first else {"content": piece}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return head | {"object": "chat.completion.chunk", "choices": [choice]}
    choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish,
              "stop_reason": None}  # fmt: skip
    return head | {"object": "text_completion", "choices": [choice]}


def route_health(app: App, _request: dict) -> Response:
    """GET /health: 200 and no body, like vLLM; 500 with STANDIN_FAIL_HEALTH=1."""
    return (500 if app.fail_health else 200), JSON, b""


def route_models(app: App, _request: dict) -> Response:
    """GET /v1/models: one entry per served name, `root` is the model."""
    created = int(app.started)
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": app.settings.model,
            "parent": None,
            "max_model_len": app.settings.options.get("max_model_len"),
            "permission": [],
        }
        for name in app.settings.served
    ]
    return json_response(200, {"object": "list", "data": data})


def route_completions(app: App, request: dict) -> Response | Stream:
    """POST /v1/completions (stream=true: server-sent events)."""
    model = app.model_for(request)
    max_tokens = requested_tokens(request, ("max_tokens",))
    if request.get("stream"):
        return app.stream(model, request.get("prompt"), max_tokens, "text_completion", request)
    reply, timing = app.run(model, request.get("prompt"), max_tokens)
    app.stats.finished(reply, timing)
    return json_response(200, completion_body(reply))


def route_chat(app: App, request: dict) -> Response | Stream:
    """POST /v1/chat/completions (max_completion_tokens wins over max_tokens; stream=true:
    server-sent events)."""
    model = app.model_for(request)
    if not isinstance(request.get("messages"), list) or not request["messages"]:
        raise bad_request("messages must be a non-empty list.", "messages")
    max_tokens = requested_tokens(request, ("max_completion_tokens", "max_tokens"))
    if request.get("stream"):
        return app.stream(model, request["messages"], max_tokens, "chat.completion", request)
    reply, timing = app.run(model, request["messages"], max_tokens)
    app.stats.finished(reply, timing)
    return json_response(200, chat_body(reply))


def route_metrics(app: App, _request: dict) -> Response:
    """GET /metrics: Prometheus text, labelled with the first served name as vLLM does."""
    app.stats.stuck_waiting = app.stuck()
    text = render_metrics(app.stats, app.settings.served[0])
    return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode()


def route_version(_app: App, _request: dict) -> Response:
    """GET /version."""
    return json_response(200, {"version": STANDIN_VERSION})


def route_tokenize(app: App, request: dict) -> Response:
    """POST /tokenize, /detokenize: open without the key, as in vLLM (a word count here)."""
    text = str(request.get("prompt", ""))
    return json_response(200, {"count": len(text.split()), "max_model_len": None,
                               "tokens": list(range(len(text.split())))})  # fmt: skip


def route_control(app: App, _request: dict) -> Response:
    """POST /pause, /sleep, /collective_rpc: engine controls vLLM serves without the key
    (in its dev mode); the stand-in only answers that it would act."""
    return json_response(200, {"stand_in": "engine control reached, without the API key"})


def route_args(app: App, _request: dict) -> Response:
    """GET /standin/args (the stand-in's own endpoint, open like /health)."""
    return json_response(200, app.args_body())


ROUTES = {
    ("GET", "/health"): route_health,
    ("GET", "/v1/models"): route_models,
    ("POST", "/v1/completions"): route_completions,
    ("POST", "/v1/chat/completions"): route_chat,
    ("GET", "/metrics"): route_metrics,
    ("GET", "/version"): route_version,
    ("GET", "/standin/args"): route_args,
    # routes real vLLM serves without the API key (its key guards /v1 only): the tokenizer and
    # the engine's controls. The stand-in answers them by POST like vLLM, so a GET that
    # reaches it gets 405, not the gateway's 404 (tests/verify/test_gateway.py)
    ("POST", "/tokenize"): route_tokenize,
    ("POST", "/detokenize"): route_tokenize,
    ("POST", "/pause"): route_control,
    ("POST", "/sleep"): route_control,
    ("POST", "/collective_rpc"): route_control,
}
KNOWN_PATHS = {path for _, path in ROUTES}


def parse_body(raw: bytes) -> dict:
    """The JSON object of a POST body; 400 for anything else."""
    if not raw:
        return {}
    try:
        request = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("The request body is not valid JSON.") from None
    if not isinstance(request, dict):
        raise bad_request("The request body must be a JSON object.")
    if "stream" in request and not isinstance(request["stream"], bool):
        raise bad_request("stream must be a boolean.", "stream")
    return request


class Handler(BaseHTTPRequestHandler):
    """Routes requests to ROUTES; one uvicorn-style access log line each, no secrets."""

    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as uvicorn sets it: with Nagle on, a response's headers and body (two
    # writes) met the client's delayed ACK and every keep-alive request took 40 ms more
    disable_nagle_algorithm = True

    @property
    def app(self) -> App:
        """The server's App."""
        return self.server.app  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        """Every method goes through dispatch (unknown method on a known path: 405)."""
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def read_body(self) -> bytes:
        """The request body (at most MAX_BODY bytes are accepted)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, "The request body is too large.", "BadRequestError")
        return self.rfile.read(length) if length > 0 else b""

    def dispatch(self) -> None:
        """Auth, routing and errors; every request gets exactly one response."""
        path = urlsplit(self.path).path
        try:
            raw = self.read_body()
            response = self.handle_route(path, raw)
        except ApiError as exc:
            response = json_response(exc.status, exc.body())
        except Exception as exc:  # a stand-in bug: answer 500, keep serving
            log("ERROR", f"{type(exc).__name__} while serving {self.command} {path}")
            response = json_response(500, ApiError(500, "Internal error", "InternalError").body())
        handler = path if path in KNOWN_PATHS else "other"
        status = 200 if isinstance(response, Stream) else response[0]
        self.app.stats.http_request(handler, self.command, status)
        if isinstance(response, Stream):
            self.respond_stream(response)
        else:
            self.respond(*response)

    def handle_route(self, path: str, raw: bytes) -> Response | Stream:
        """The response for an authorized, routed request (or the error for it)."""
        if path.startswith("/v1") and not self.app.authorized(self.headers.get("Authorization")):
            return json_response(401, {"error": "Unauthorized"})
        route = ROUTES.get((self.command, path))
        if route is None:
            status = 405 if path in KNOWN_PATHS else 404
            return json_response(status, {"detail": HTTPStatus(status).phrase})
        request = parse_body(raw) if self.command == "POST" else {}
        return route(self.app, request)  # generating routes count running/waiting (App.run)

    def version_string(self) -> str:
        """The Server header: what vLLM's uvicorn sends."""
        return "uvicorn"

    def respond(self, status: int, content_type: str, body: bytes) -> None:
        """Send status, headers and body (keep-alive: Content-Length always set)."""
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def respond_stream(self, stream: Stream) -> None:
        """Send the events as uvicorn does: chunked, one chunk per event, each flushed as it
        is made (what a buffering proxy in front would hold back)."""
        chunked = self.request_version != "HTTP/1.0"  # 1.0: the end of the body is the close
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        self.end_headers()
        try:
            for event in stream.events:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event) if chunked else event)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away: vLLM aborts the request
            self.close_connection = True
            stream.events.close()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """uvicorn's access log line; the path without its query string."""
        path = urlsplit(self.path).path if hasattr(self, "path") else "-"
        try:
            phrase = HTTPStatus(int(code)).phrase
        except ValueError:
            phrase = ""
        host, port = self.client_address[:2]
        line = f'{host}:{port} - "{self.command} {path} {self.request_version}" {code} {phrase}'
        print(f"INFO:     {line}", file=sys.stderr, flush=True)

    def log_error(self, format: str, *args: object) -> None:
        """http.server's own errors (bad request lines): never echo the raw request."""
        host = self.client_address[0]
        print(f"WARNING:  {host} - malformed or rejected request", file=sys.stderr, flush=True)


class StandinServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that skips the reverse DNS lookup of its own address at bind."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        """Bind without socket.getfqdn(): no DNS lookups (and waits) at startup."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


# --- main ---------------------------------------------------------------------------------


class Stop(BaseException):
    """Raised in the main thread by SIGTERM (docker stop): shut down cleanly. A
    BaseException, like KeyboardInterrupt, so socketserver's `except Exception` (which logs
    and carries on) cannot swallow it when it lands while a request thread is starting."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    """SIGTERM handler: as PID 1 in a container, an unhandled SIGTERM would be ignored."""
    raise Stop


def crash(settings: Settings) -> int:
    """STANDIN_CRASH=1: fail the way an engine start fails, for crash-loop tests."""
    log("ERROR", "EngineCore failed to start.")
    log(
        "ERROR",
        f"RuntimeError: CUDA error: no CUDA-capable device is detected (model {settings.model};"
        " gpufleet stand-in: STANDIN_CRASH=1)",
    )
    return 1


def startup_delay(environ: dict[str, str]) -> None:
    """STANDIN_STARTUP_DELAY_S: wait before binding, as a model download would."""
    try:
        delay = float(environ.get("STANDIN_STARTUP_DELAY_S") or 0)
    except ValueError:
        log("WARNING", "STANDIN_STARTUP_DELAY_S is not a number; no delay")
        return
    if delay > 0:
        log("INFO", f"loading the model (stand-in delay {delay:g}s, port not bound yet)")
        time.sleep(delay)


OFFLINE_TRUE = ("1", "ON", "YES", "TRUE")  # huggingface_hub's truthy environment values


def offline_refusal(settings: Settings, environ: dict[str, str]) -> str | None:
    """With HF_HUB_OFFLINE=1, vLLM's start error when the model is not in the cache (a local
    path is never looked up); None when it may start. Same cache layout as hub.py (kept apart:
    this file runs alone on the controller too)."""
    model = settings.model
    if environ.get("HF_HUB_OFFLINE", "").upper() not in OFFLINE_TRUE or model.startswith(
        ("/", ".")
    ):
        return None
    home = Path(environ.get("HF_HOME") or DEFAULT_HF_HOME)
    hub = settings.download_dir or environ.get("HF_HUB_CACHE") or home / "hub"
    root = Path(hub) / ("models--" + model.replace("/", "--"))
    try:
        revision = (root / "refs" / "main").read_text().strip()
    except OSError:
        revision = ""
    if revision and (root / "snapshots" / revision / "config.json").is_file():
        return None
    return (
        f"ValueError: Invalid repository ID or local directory specified: '{model}'. Please "
        "verify the following requirements: 1. Provide a valid Hugging Face repository ID. "
        "2. Specify a local directory that contains a recognized configuration file. "
        "(gpufleet stand-in: HF_HUB_OFFLINE=1 and the model is not in the cache)"
    )


def make_app(settings: Settings, environ: dict[str, str]) -> App:
    """The app state: marker written, environment names (never values) noted."""
    marker = marker_path(settings.model, settings.download_dir, environ)
    hit = ensure_marker(marker, settings.model)
    return App(
        settings=settings,
        stats=Stats(),
        fail_health=environ.get("STANDIN_FAIL_HEALTH") == "1",
        env_names=sorted(environ),
        hf_token_set=any(environ.get(name) for name in HF_TOKEN_ENVS),
        marker=marker,
        cache_hit=hit,
        stuck_file=environ.get("STANDIN_STUCK_FILE") or STUCK_FILE,
        stuck_at_start=_number(environ, "STANDIN_STUCK_WAITING", int),
        token_delay=_number(environ, "STANDIN_TOKEN_DELAY_S", float),
        token_delay_file=environ.get("STANDIN_TOKEN_DELAY_FILE") or TOKEN_DELAY_FILE,
    )


def _number(environ: dict[str, str], name: str, kind: type) -> int | float:
    """A non-negative number from the environment (0 when unset or not a number)."""
    try:
        return max(kind(environ.get(name) or 0), 0)
    except ValueError:
        log("WARNING", f"{name} is not a number; ignored")
        return kind(0)


def serve(server: StandinServer) -> int:
    """Say so (uvicorn's words), then serve until SIGTERM or Ctrl-C; 0 on a clean stop."""
    host, port = server.server_address[:2]
    try:
        log("INFO", f"Started server process [{os.getpid()}]")
        log("INFO", f"Uvicorn running on http://{host}:{port} (Press CTRL+C to quit)")
        log("INFO", "Application startup complete.")
        # the interval only bounds how soon shutdown() from another thread is seen (nothing
        # calls it; SIGTERM interrupts the wait at once): at 0.2 s, 16 idle stand-ins kept 8 %
        # of the lab machine's two cores busy waking up
        server.serve_forever(poll_interval=60)
    except (Stop, KeyboardInterrupt):
        log("INFO", "Shutting down")
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Start like `vllm serve`: log, honour the fault knobs, bind, serve."""
    environ = dict(os.environ if environ is None else environ)
    settings = parse_settings(sys.argv[1:] if argv is None else argv, environ)
    log("INFO", f"{BANNER} {STANDIN_VERSION}")
    log("INFO", f"model={settings.model} served={settings.served} port={settings.port}")
    if environ.get("STANDIN_CRASH") == "1":
        return crash(settings)
    refused = offline_refusal(settings, environ)
    if refused:
        log("ERROR", refused)
        return 1
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
        startup_delay(environ)
        app = make_app(settings, environ)
        server = StandinServer((settings.host, settings.port), app)
    except Stop:
        return 0
    except OSError as exc:
        log("ERROR", f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}")
        return 1
    return serve(server)


if __name__ == "__main__":
    sys.exit(main())
