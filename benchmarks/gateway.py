"""Gateway benchmark on the lab: the latency nginx adds per request in front of the STAND-IN vLLM.

    python -m benchmarks.gateway               # 1,000 requests each way, on lab-3
    python -m benchmarks.gateway --requests 5000 --host lab-2

It deploys the gateway on one lab host (gateway_mode=on, plain HTTP), then, on that host
itself (so the controller's SSH and network are not in the figures), sends the same
one-token completion N times straight to the server's loopback port and N times through
nginx at the host's own address, interleaved in blocks of 50 so both see the same machine
load, each over one kept-alive connection as a client's pool would. It reports the median
and p99 of both and their difference, writes reports/gateway/latency.json and latency.md,
and deploys the host back to the lab's plain config. The API key reaches the host's script on
its stdin, never on a command line. A benchmark, not a test: CI does not run it, and nothing
else may use the lab meanwhile (hold /tmp/gpufleet-lab.lock).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys

from tests.e2e.helpers import LAB_SECRETS, ROOT, deploy
from tests.e2e.test_lab_vllm import MODEL, address

OUT = ROOT / "reports" / "gateway"
GATEWAY = ("--data", "gateway_mode=on", "--data", "gateway_plain_http=True")
PORT, OFFSET = 8000, 10000  # the lab's vllm_port and the default gateway_backend_port_offset

# Run on the lab host by its python3: stdin holds the key, then the JSON job.
HOST_SCRIPT = r"""
import http.client, json, sys, time
key = sys.stdin.readline().strip()
job = json.loads(sys.stdin.readline())
body = json.dumps({"model": job["model"], "prompt": "hi", "max_tokens": 1})
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
conns = {name: http.client.HTTPConnection(host, port, timeout=30)
         for name, (host, port) in job["targets"].items()}
times = {name: [] for name in conns}
for block in range(job["requests"] // 50):
    for name, conn in conns.items():
        for _ in range(50):
            start = time.perf_counter()
            conn.request("POST", "/v1/completions", body, headers)
            response = conn.getresponse()
            response.read()
            times[name].append(time.perf_counter() - start)
            if response.status != 200:
                sys.exit(f"{name}: HTTP {response.status}")
print(json.dumps(times))
"""


def ssh_python(name: str, stdin: str) -> str:
    """Run HOST_SCRIPT with python3 on a lab host over SSH (the pinned host key checked)."""
    state = json.loads((ROOT / ".lab" / "state.json").read_text())
    (port,) = [h["port"] for h in state["hosts"] if h["name"] == name]
    command = ["ssh", "-q", "-i", state["ssh_key"], "-o",
               f"UserKnownHostsFile={state['known_hosts']}", "-o", "StrictHostKeyChecking=yes",
               "-o", "BatchMode=yes", "-p", str(port), "root@127.0.0.1",
               "python3 -c " + shlex.quote(HOST_SCRIPT)]  # fmt: skip
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.exit(f"the measurement on {name} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def summary(samples: list[float]) -> dict[str, float]:
    """Median and p99 in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"median_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000}


def measure(name: str, requests: int) -> dict:
    """Both ways' latencies on `name`, whose gateway is deployed."""
    job = {"model": MODEL, "requests": requests,
           "targets": {"direct": ["127.0.0.1", PORT + OFFSET],
                       "gateway": [address(name), PORT]}}  # fmt: skip
    times = json.loads(ssh_python(name, LAB_SECRETS["VLLM_API_KEY"] + "\n" + json.dumps(job)))
    result = {way: summary(samples) | {"requests": len(samples)} for way, samples in times.items()}
    result["added"] = {
        key: result["gateway"][key] - result["direct"][key] for key in ("median_ms", "p99_ms")
    }
    return result


def markdown(name: str, result: dict) -> str:
    rows = [f"| {way} | {result[way]['requests']} | {result[way]['median_ms']:.2f} | "
            f"{result[way]['p99_ms']:.2f} |" for way in ("direct", "gateway")]  # fmt: skip
    added = result["added"]
    return "\n".join([
        f"# Gateway latency on {name} ({platform.node()}, STAND-IN vLLM, one-token completion)",
        "", "| way | requests | median ms | p99 ms |", "|---|---|---|---|", *rows,
        f"| added by nginx | | {added['median_ms']:.2f} | {added['p99_ms']:.2f} |", "",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="lab-3")
    parser.add_argument("--requests", type=int, default=1000, help="each way (a multiple of 50)")
    args = parser.parse_args(argv)
    done = deploy("-y", "--limit", args.host, *GATEWAY)
    if done.returncode != 0:
        sys.exit(f"deploying the gateway on {args.host} failed:\n{done.output[-2000:]}")
    try:
        result = measure(args.host, max(50, args.requests // 50 * 50))
    finally:
        back = deploy("-y", "--limit", args.host)
        if back.returncode != 0:
            print(f"deploying {args.host} back failed:\n{back.output[-2000:]}", file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latency.json").write_text(json.dumps({"host": args.host} | result, indent=2) + "\n")
    text = markdown(args.host, result)
    (OUT / "latency.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
