"""Weights before swaps: the pre-fetch host script (operations/kit/scripts/vllm_prefetch.sh)
run under dash against a stub docker, the STAND-IN huggingface_hub (tests/standins/vllm/hub.py)
and the STAND-IN server's offline refusal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from operations.config.load import load_config
from operations.vllm import PREFETCH_CODE, prefetch_command
from tests.plan.harness import gateway_off
from tests.standins.vllm import hub, server

DASH = shutil.which("dash") or "/bin/sh"
TOKEN = "hf_SECRET_token_abcdef"
HUB = Path(hub.__file__)
# STAND-IN docker: `run` runs the one-shot command's python3 (after the wrapper) with $SIM's
# behaviour: ok, fail (a traceback, the token on no line), hang; `rm` is logged.
STUB_DOCKER = r"""#!/bin/sh
echo "$*" >> "$SIM/docker.log"
case "$1" in
  rm) exit 0;;
  run) case "$(cat "$SIM/mode")" in
    ok) echo /root/.cache/huggingface/hub/models--org--m/snapshots/abc; exit 0;;
    fail) printf 'Traceback (most recent call last):\n  File "<string>", line 1\n\n' >&2
          echo 'huggingface_hub.errors.HfHubHTTPError: 429 Too Many Requests' >&2; exit 1;;
    hang) trap "" TERM; sleep 30;;  # ignores SIGTERM, as python as PID 1 does
  esac;;
esac
exit 2
"""


def _config(**data):
    config, problems = load_config("h", gateway_off({"vllm_prefetch_timeout_s": 10, **data}))
    assert not problems, problems
    return config


def _run_script(tmp_path: Path, mode: str, timeout: int = 10) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(STUB_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    (tmp_path / "mode").write_text(mode)
    config = _config()
    script = prefetch_command(config, config.vllm.servers()[0]).get_raw_value()
    script = script.replace("timeout=10", f"timeout={timeout}", 1)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SIM": str(tmp_path), "LC_ALL": "C"}
    return subprocess.run([DASH, "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_a_fetched_model_passes_and_says_so(tmp_path):
    done = _run_script(tmp_path, "ok")
    assert done.returncode == 0, done.stderr
    assert "vllm-main: Qwen/Qwen2.5-1.5B-Instruct is in the model cache" in done.stdout
    assert "/root/.cache" not in done.stdout  # the tool's own output is not shown


def test_a_failed_fetch_fails_with_the_tools_last_line_and_removes_the_job(tmp_path):
    done = _run_script(tmp_path, "fail")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "vllm-main: the pre-fetch of Qwen/Qwen2.5-1.5B-Instruct failed (status 1): "
        "huggingface_hub.errors.HfHubHTTPError: 429 Too Many Requests; the running server "
        "was left as it was"
    )
    calls = (tmp_path / "docker.log").read_text().splitlines()
    assert calls[-1] == "rm -f vllm-main.prefetch" and not any("stop" in c for c in calls)


def test_a_fetch_past_its_bound_is_stopped_and_fails_naming_the_setting(tmp_path):
    done = _run_script(tmp_path, "hang", timeout=1)
    assert done.returncode == 1
    assert "did not finish within 1s (vllm_prefetch_timeout_s)" in done.stderr
    assert (tmp_path / "docker.log").read_text().splitlines()[-1] == "rm -f vllm-main.prefetch"


# --- the STAND-IN huggingface_hub ------------------------------------------------------------


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {"HF_HOME": str(tmp_path / "hf"), **more}


def test_the_standin_download_writes_the_real_cache_layout_with_its_size(tmp_path):
    env = _env(tmp_path)
    path = Path(hub.snapshot_download("Qwen/Qwen2.5-1.5B-Instruct", environ=env))
    root = tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-1.5B-Instruct"
    assert path.parent == root / "snapshots" and (root / "refs" / "main").read_text() == path.name
    weights = path / "model.safetensors"
    assert weights.is_symlink() and os.readlink(weights).startswith("../../blobs/")
    assert weights.stat().st_size == 2 * 1024 * 1024
    assert json.loads((path / "config.json").read_text())["model"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert hub.cached_snapshot("Qwen/Qwen2.5-1.5B-Instruct", env) == path


def test_the_standin_download_takes_its_delay_and_fails_as_the_catalog_says(tmp_path, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(hub.time, "sleep", slept.append)
    env = _env(tmp_path)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / hub.CATALOG_FILE).write_text(json.dumps({
        "org/slow": {"size_mib": 1, "delay_s": 7},
        "org/limited": {"delay_s": 1, "fail": "429 Client Error: Too Many Requests"},
    }))  # fmt: skip
    hub.snapshot_download("org/slow", environ=env)
    assert slept == [7.0]
    hub.snapshot_download("org/slow", environ=env)  # cached: found at once
    assert slept == [7.0]
    with pytest.raises(hub.HfHubHTTPError, match="429 Client Error: Too Many Requests"):
        hub.snapshot_download("org/limited", environ=env)
    assert hub.cached_snapshot("org/limited", env) is None


def test_the_standin_download_refuses_an_unknown_model_and_offline_misses(tmp_path):
    env = _env(tmp_path)
    with pytest.raises(hub.RepositoryNotFoundError, match="Repository Not Found for model no/pe"):
        hub.snapshot_download("no/pe", environ=env)
    offline = _env(tmp_path, HF_HUB_OFFLINE="1")
    with pytest.raises(hub.LocalEntryNotFoundError, match="HF_HUB_OFFLINE=0"):
        hub.snapshot_download("Qwen/Qwen2.5-1.5B-Instruct", environ=offline)
    hub.snapshot_download("Qwen/Qwen2.5-1.5B-Instruct", environ=env)
    assert hub.snapshot_download("Qwen/Qwen2.5-1.5B-Instruct", environ=offline)


def test_the_deploys_prefetch_code_runs_against_the_standin_hub(tmp_path):
    """PREFETCH_CODE as the image runs it: python3 -c CODE MODEL, huggingface_hub importable
    (the stand-in image installs hub.py as that package); the last line on failure."""
    package = tmp_path / "site" / "huggingface_hub"
    package.mkdir(parents=True)
    shutil.copyfile(HUB, package / "__init__.py")
    env = {"PYTHONPATH": str(tmp_path / "site"), "HF_HOME": str(tmp_path / "hf"),
           "HF_TOKEN": TOKEN, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # fmt: skip
    good = subprocess.run([sys.executable, "-c", PREFETCH_CODE, "Qwen/Qwen2.5-0.5B-Instruct"],
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert good.returncode == 0 and good.stdout.strip().endswith(hub.revision_of(
        "Qwen/Qwen2.5-0.5B-Instruct"
    )), good.stderr  # fmt: skip
    bad = subprocess.run([sys.executable, "-c", PREFETCH_CODE, "no/pe"],
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and TOKEN not in bad.stderr + bad.stdout
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "huggingface_hub.RepositoryNotFoundError: 404 Client Error. Repository Not Found"
        )
    )


# --- the STAND-IN server offline -------------------------------------------------------------


def _settings(model: str = "Qwen/Qwen2.5-1.5B-Instruct"):
    return server.parse_settings([model], {})


def test_the_standin_server_refuses_to_start_offline_without_the_model(tmp_path, capsys):
    env = _env(tmp_path, HF_HUB_OFFLINE="1", STANDIN_STARTUP_DELAY_S="0")
    refused = server.offline_refusal(_settings(), env)
    assert refused and refused.startswith(
        "ValueError: Invalid repository ID or local directory specified: "
        "'Qwen/Qwen2.5-1.5B-Instruct'."
    )
    assert server.main(["Qwen/Qwen2.5-1.5B-Instruct", "--port", "1"], env) == 1
    assert "Invalid repository ID or local directory specified" in capsys.readouterr().err


def test_the_standin_server_starts_offline_once_cached_and_online_always(tmp_path):
    online = _env(tmp_path)
    assert server.offline_refusal(_settings(), online) is None  # online: it would download
    assert server.offline_refusal(_settings("/models/local"), _env(tmp_path, HF_HUB_OFFLINE="1"))\
        is None  # fmt: skip
    hub.snapshot_download("Qwen/Qwen2.5-1.5B-Instruct", environ=online)
    for value in ("1", "true", "ON"):
        assert server.offline_refusal(_settings(), _env(tmp_path, HF_HUB_OFFLINE=value)) is None
