"""Facts of the vLLM layer, in one round trip: the deploy's containers and secrets files.

``VllmState`` lists every container labelled ``gpufleet.vllm`` (whatever its state) as its
full ``docker inspect`` JSON, and the SHA-256, owner and mode of each secrets file in
``SECRETS_DIR`` (the hash only: the files are root-only and their content stays there). Without a
Docker engine (a first run plans before the Docker layer installed it) it reports none.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import FactBase

LABEL = "gpufleet.vllm"  # value: the instance name
SPEC_LABEL = "gpufleet.spec"  # value: hash of everything the container was created from
SECRETS_DIR = "/etc/gpufleet/vllm"

_SCRIPT = rf"""
ids=$(docker ps -aq --filter label={LABEL} 2>/dev/null) || {{ echo docker=down; exit 0; }}
echo docker=up
[ -z "$ids" ] || docker inspect --format 'container={{{{json .}}}}' $ids
for f in {SECRETS_DIR}/*.env; do
  [ -f "$f" ] && echo "secrets=$(sha256sum "$f")" && echo "owner=$(stat -c %U:%G:%a "$f") $f"
done
true
"""


def state_command() -> str:
    """The one shell script behind VllmState (also run by the verify checks)."""
    return _SCRIPT


def parse_state(lines: list[str]) -> dict[str, Any]:
    """{"docker": up?, "containers": {instance: inspect JSON}, "secrets": {path: sha256},
    "owners": {path: "user:group:mode"}}."""
    state: dict[str, Any] = {"docker": False, "containers": {}, "secrets": {}, "owners": {}}
    for line in lines:
        key, _, value = line.partition("=")
        if key == "docker":
            state["docker"] = value == "up"
        elif key == "container":
            inspect = json.loads(value)
            labels = inspect.get("Config", {}).get("Labels") or {}
            state["containers"][labels.get(LABEL, inspect["Name"].lstrip("/"))] = inspect
        elif key == "secrets":
            digest, _, path = value.partition("  ")
            state["secrets"][path] = digest
        elif key == "owner":
            owner, _, path = value.partition(" ")
            state["owners"][path] = owner
    return state


class VllmState(FactBase):
    """The vLLM layer's containers and secrets files (see the module doc)."""

    def command(self) -> str:
        return state_command()

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_state(output)

    @staticmethod
    def default() -> dict[str, Any]:
        return parse_state([])
