"""gpufleet STAND-IN for `huggingface_hub` in the STAND-IN vLLM image. It is NOT huggingface_hub.

The deploy pre-fetches a model with the new image's own huggingface_hub
(`python3 -c "...snapshot_download(sys.argv[1])"`, operations/vllm: PREFETCH_CODE). The
stand-in image installs this file as the `huggingface_hub` package, so the same command runs
in the lab and "downloads" without a network: after a delay it writes the files of the
model into the Hugging Face cache in the real layout

    $HF_HUB_CACHE or $HF_HOME/hub / models--ORG--NAME / blobs/<sha256>
                                                      / snapshots/<revision>/<file> -> blob
                                                      / refs/main  (written last: complete)

A model is known when it is in CATALOG or in the host's STAND-IN catalog file
`$HF_HOME/gpufleet-standin-models.json` ({"org/name": {"size_mib": N, "delay_s": S,
"fail": "message"}}: tests write it into the host's cache directory, which is mounted there):
an unknown one fails as the Hub does (RepositoryNotFoundError), one with "fail" fails with
that message after its delay (a rate limit, say). A complete model is found without delay.
With HF_HUB_OFFLINE=1 nothing is "downloaded": a cached model is found, any other fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

DEFAULT_HF_HOME = "/root/.cache/huggingface"
CATALOG_FILE = "gpufleet-standin-models.json"  # under $HF_HOME, on the host's cache mount
WRITE_CHUNK = 1024 * 1024
# Models the stand-in "has": the lab's default model and a few others (size in MiB of the
# stand-in weights file, not the real model's: the lab's disks are small).
CATALOG: dict[str, dict] = {
    "Qwen/Qwen2.5-1.5B-Instruct": {"size_mib": 2, "delay_s": 0},
    "Qwen/Qwen2.5-0.5B-Instruct": {"size_mib": 1, "delay_s": 0},
    "Qwen/Qwen2.5-7B-Instruct": {"size_mib": 4, "delay_s": 1},
    "meta-llama/Llama-3.1-8B-Instruct": {"size_mib": 4, "delay_s": 1},
}
TRUE = ("1", "ON", "YES", "TRUE")  # huggingface_hub's truthy environment values

__version__ = "0.35.3+gpufleet-standin"


class HfHubHTTPError(OSError):
    """A failed Hub request (stand-in)."""


class RepositoryNotFoundError(HfHubHTTPError):
    """The Hub has no such repository, or the token may not read it (stand-in)."""


class LocalEntryNotFoundError(OSError):
    """Offline, and the model is not in the cache (stand-in)."""


def hub_cache(environ: dict[str, str] | None = None) -> Path:
    """Where huggingface_hub caches models: $HF_HUB_CACHE or $HF_HOME/hub."""
    env = os.environ if environ is None else environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    return Path(env.get("HF_HOME") or DEFAULT_HF_HOME) / "hub"


def repo_dir(repo_id: str, environ: dict[str, str] | None = None) -> Path:
    return hub_cache(environ) / ("models--" + repo_id.replace("/", "--"))


def revision_of(repo_id: str) -> str:
    """A stable 40-hex revision per model, as the Hub's commit ids look."""
    return hashlib.sha1(f"gpufleet-standin:{repo_id}".encode()).hexdigest()


def cached_snapshot(repo_id: str, environ: dict[str, str] | None = None) -> Path | None:
    """The model's complete snapshot in the cache (refs/main names it, config.json in it)."""
    root = repo_dir(repo_id, environ)
    try:
        revision = (root / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = root / "snapshots" / revision
    return snapshot if (snapshot / "config.json").is_file() else None


def catalog(environ: dict[str, str] | None = None) -> dict[str, dict]:
    """CATALOG plus the host's STAND-IN catalog file, when there is one."""
    env = os.environ if environ is None else environ
    path = Path(env.get("HF_HOME") or DEFAULT_HF_HOME) / CATALOG_FILE
    extra = json.loads(path.read_text()) if path.is_file() else {}
    return {**CATALOG, **extra}


def _blob(root: Path, name: str, content: bytes, size: int) -> str:
    """Write one blob (``content`` then ``size`` zero bytes) under its SHA-256; its digest."""
    digest = hashlib.sha256(content + name.encode() + str(size).encode()).hexdigest()
    target = root / "blobs" / digest
    if target.is_file():
        return digest
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(digest + ".incomplete")
    with tmp.open("wb") as out:
        out.write(content)
        for left in range(size, 0, -WRITE_CHUNK):
            out.write(b"\0" * min(left, WRITE_CHUNK))
    os.replace(tmp, target)
    return digest


def _write_model(repo_id: str, size_mib: float, environ: dict[str, str] | None) -> Path:
    root, revision = repo_dir(repo_id, environ), revision_of(repo_id)
    files = {
        "config.json": (json.dumps({"stand_in": "gpufleet", "model": repo_id}).encode(), 0),
        "model.safetensors": (b"", int(size_mib * 1024 * 1024)),
    }
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, (content, size) in files.items():
        digest = _blob(root, name, content, size)
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"../../blobs/{digest}")
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)  # last: the model is complete
    return snapshot


def snapshot_download(repo_id: str, environ: dict[str, str] | None = None, **_: object) -> str:
    """The model's snapshot directory, "downloaded" into the cache first when needed."""
    env = os.environ if environ is None else environ
    found = cached_snapshot(repo_id, env)
    if found:
        return str(found)
    if env.get("HF_HUB_OFFLINE", "").upper() in TRUE:
        raise LocalEntryNotFoundError(
            f"Cannot find an appropriate cached snapshot folder for the specified revision on "
            f"the local disk and outgoing traffic has been disabled (model {repo_id}). To "
            f"enable repo look-ups and downloads online, set 'HF_HUB_OFFLINE=0'."
        )
    entry = catalog(env).get(repo_id)
    if entry is None:
        raise RepositoryNotFoundError(
            f"404 Client Error. Repository Not Found for model {repo_id} (gpufleet STAND-IN "
            f"catalog). Make sure the repository id is right and your token may read it."
        )
    time.sleep(float(entry.get("delay_s", 0)))
    if entry.get("fail"):
        raise HfHubHTTPError(str(entry["fail"]))
    return str(_write_model(repo_id, float(entry.get("size_mib", 1)), env))
