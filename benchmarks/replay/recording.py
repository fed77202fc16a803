"""STAND-IN replay recordings: command -> (stdout, stderr, exit status) of a real lab host.

A recording is a JSON file::

    {"stand_in": "...", "host": "lab-1", "address": "172.17.0.4", "host_data": {...},
     "commands": {"<normalised command>": {"stdout": ..., "stderr": ..., "rc": 0}}}

Normalisations (the minimum that legitimately differs between hosts or runs), applied to the
command before it is looked up and, reversed, to the answer sent back:

- the host's inventory name (``lab-1`` -> ``{HOST}`` -> ``sim-0001``);
- the host's address, ``host_address`` (``172.17.0.4`` -> ``{ADDRESS}`` -> ``10.77.0.1``);
- pyinfra's temporary file names (``/tmp/pyinfra-<40 hex>`` -> ``/tmp/pyinfra-{TEMP}``):
  they hash the time and the operation, so they differ on every run.

- the deploy lock's owner text (``root@vm pid 843 since <time> UTC (pyinfra ...)``, in the
  lock command and its answer) -> ``{LOCK_OWNER}``: the controller's pid, clock and paths;
- the digest of a vLLM secrets file (``secrets=<sha256>`` in the vLLM state fact) becomes the
  digest of the file the benchmark's own STAND-IN key makes (``STANDIN_ENV``): the lab's key
  is random per test session and is never read by the recorder, so the recording cannot match
  it; everything else about the file (owner, mode, path) is as recorded.

``host_data`` is the recorded host's inventory data without its SSH settings, so a simulated
fleet gets the same config (and so sends the same commands) as the recorded host.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST, ADDRESS = "{HOST}", "{ADDRESS}"
_TEMP = re.compile(r"pyinfra-[0-9a-f]{40}")
TEMP = "pyinfra-{TEMP}"
_OWNER = re.compile(r"[\w.-]+@[\w.-]+ pid \d+ since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \([^)']*\)")
OWNER = "{LOCK_OWNER}"
STAND_IN = "STAND-IN replay recording: what a converged lab host answered; not a real host"
# The benchmark's API key: no secret (it is in this file), set as VLLM_API_KEY for every run.
STANDIN_ENV = {"VLLM_API_KEY": "sk-STAND-IN-replay-not-a-secret"}
_DIGEST = re.compile(r"secrets=[0-9a-f]{64}")
# What a lab secret looks like (tests/e2e/helpers.py, ./dev): never in a recording.
SECRET_SHAPES = re.compile(r"sk-(lab|demo|killed)[\w-]*|hf_\w{8,}")


def _sub_word(text: str, old: str, new: str) -> str:
    """``old`` replaced by ``new`` where it is not part of a longer name or number."""
    return re.sub(rf"(?<![\w.]){re.escape(old)}(?![\w])", new, text) if old else text


@dataclass(frozen=True)
class Identity:
    """What is normalised for one host: its inventory name and address."""

    name: str
    address: str

    def normalise(self, text: str) -> str:
        """``text`` as recorded: this host's name and address and pyinfra temp names as tokens."""
        text = _OWNER.sub(OWNER, _TEMP.sub(TEMP, text))
        return _sub_word(_sub_word(text, self.address, ADDRESS), self.name, HOST)

    def localise(self, text: str) -> str:
        """A recorded answer as this host gives it (tokens back to its name and address)."""
        return text.replace(HOST, self.name).replace(ADDRESS, self.address)


def standin_digest() -> str:
    """The sha256 of the secrets file that STANDIN_ENV makes (operations.config.secrets)."""
    import hashlib

    from operations.config.secrets import env_file

    return hashlib.sha256(env_file(STANDIN_ENV).reveal().encode()).hexdigest()


def replace_digests(commands: dict[str, dict[str, Any]]) -> int:
    """Every digest of a recorded secrets file (found in ``secrets=<sha256>`` lines, then
    replaced wherever it appears: verify reads it too) replaced by standin_digest(); how many
    distinct digests were."""
    found = {m[len("secrets=") :] for a in commands.values() for m in _DIGEST.findall(a["stdout"])}
    digest = standin_digest()
    for answer in commands.values():
        for old in found:
            answer["stdout"] = answer["stdout"].replace(old, digest)
    return len(found)


def load(path: Path) -> dict[str, Any]:
    """A recording file; ValueError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a replay recording: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("commands"), dict):
        raise ValueError(f"{path}: not a replay recording: no 'commands' object")
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def secrets_in(data: dict[str, Any], secrets: list[str]) -> list[str]:
    """The recorded commands whose command or answer contains one of ``secrets``."""
    found = []
    for command, answer in data["commands"].items():
        text = command + answer.get("stdout", "") + answer.get("stderr", "")
        if any(secret and secret in text for secret in secrets) or SECRET_SHAPES.search(text):
            found.append(command[:80])
    return found
