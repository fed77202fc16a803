"""Facts of the vLLM layer, in one round trip: the deploy's containers and files on the host.

``VllmState`` lists every container labelled ``gpufleet.vllm`` (whatever its state) as its
full ``docker inspect`` JSON, and, in ``SECRETS_DIR``: the SHA-256, owner and mode of each
secrets file (the hash only: the files are root-only and their content stays there), the
readiness mark of each instance (``<name>.ready``: the spec hash whose server passed the
readiness gate, written only after it did) and any other file there (``strays``: a temporary
file a failed run left, which may hold secrets). A container named ``<name>.previous`` is the
server kept while its replacement proves ready (the vLLM layer); it is listed apart, under
``previous``. Without a Docker engine (a first run plans before the Docker layer installed it)
it reports no container.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import FactBase

from operations.kit import scripts

LABEL = "gpufleet.vllm"  # value: the instance name
SPEC_LABEL = "gpufleet.spec"  # value: hash of everything the container was created from
SECRETS_DIR = "/etc/gpufleet/vllm"
PREVIOUS = ".previous"  # suffix of the name of a server kept while its replacement starts


def state_command() -> str:
    """The one shell script behind VllmState (also run by the verify checks;
    operations/kit/scripts/vllm_state.sh)."""
    return scripts.render("vllm_state", LABEL=LABEL, SECRETS_DIR=SECRETS_DIR)


def ready_path(name: str) -> str:
    """The readiness mark of instance ``name``."""
    return f"{SECRETS_DIR}/{name}.ready"


def _instance(path: str, suffix: str) -> str:
    return path.rpartition("/")[2].removesuffix(suffix)


def _add_container(state: dict[str, Any], inspect: dict[str, Any]) -> None:
    labels = inspect.get("Config", {}).get("Labels") or {}
    name = inspect["Name"].lstrip("/")
    where = "previous" if name.endswith(PREVIOUS) else "containers"
    state[where][labels.get(LABEL, name.removesuffix(PREVIOUS))] = inspect


def parse_state(lines: list[str]) -> dict[str, Any]:
    """{"docker": up?, "containers": {instance: inspect JSON}, "previous": {instance: inspect
    JSON of its kept server}, "secrets": {path: sha256}, "owners": {path: "user:group:mode"},
    "ready": {instance: spec hash}, "strays": [path], "not_files": [secrets path that is not
    a regular file: a directory Docker's --volume made when the file was missing]}."""
    state: dict[str, Any] = {
        "docker": False, "containers": {}, "previous": {}, "secrets": {}, "owners": {},
        "ready": {}, "strays": [], "not_files": [],
    }  # fmt: skip
    for line in lines:
        key, _, value = line.partition("=")
        if key == "docker":
            state["docker"] = value == "up"
        elif key == "container":
            _add_container(state, json.loads(value))
        elif key == "secrets":
            digest, _, path = value.partition("  ")
            state["secrets"][path] = digest
        elif key == "owner":
            owner, _, path = value.partition(" ")
            state["owners"][path] = owner
        elif key == "ready":
            spec, _, path = value.partition(" ")
            state["ready"][_instance(path, ".ready")] = spec
        elif key == "stray":
            state["strays"].append(value)
        elif key == "notfile":
            state["not_files"].append(value)
    return state


class VllmState(FactBase):
    """The vLLM layer's containers and files on the host (see the module doc)."""

    def command(self) -> str:
        return state_command()

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_state(output)

    @staticmethod
    def default() -> dict[str, Any]:
        return parse_state([])
