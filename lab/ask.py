"""`python -m lab ask`: ask every vLLM server of a Prometheus file_sd targets file for one
completion, with the API key from $VLLM_API_KEY: the quick start's last step, showing the
(STAND-IN) servers answer from the controller."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from lab import LabError
from lab.fleet import format_table


def _call(url: str, key: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {}
    except (OSError, ValueError) as error:
        return 0, {"error": str(error)}


def ask_row(target: str, labels: dict, key: str) -> list[str]:
    """host, instance, address, /health, model, one completion's text (or what failed)."""
    base = f"http://{target}"
    health, _ = _call(f"{base}/health", key)
    model = labels.get("model", "")
    body = {"model": model, "prompt": "Say hello", "max_tokens": 8}
    code, answer = _call(f"{base}/v1/completions", key, body)
    text = (answer.get("choices") or [{}])[0].get("text", "") if code == 200 else f"HTTP {code}"
    return [labels.get("gpufleet_host", "?"), labels.get("gpufleet_instance", "?"), target,
            str(health), model, text.strip()[:40]]  # fmt: skip


def ask(targets_file: Path, log=print) -> bool:
    """Print one row per server; True when every one answered."""
    try:
        groups = json.loads(Path(targets_file).read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {targets_file}: {exc}") from None
    key = os.environ.get("VLLM_API_KEY", "")
    rows = [ask_row(t, g.get("labels", {}), key) for g in groups for t in g["targets"]]
    log(format_table(["HOST", "INSTANCE", "ADDRESS", "HEALTH", "MODEL", "COMPLETION"], rows))
    return bool(rows) and all(row[3] == "200" and not row[5].startswith("HTTP") for row in rows)
