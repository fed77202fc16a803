"""Facts of the Docker and toolkit layers as the verify checks read them, in one round trip.

``ContainerStack`` prints ``key=value`` lines: docker's unit state, server version and
``docker info`` (JSON), the docker group's members, the installed Docker and toolkit
packages (dpkg or rpm), ``nvidia-ctk --version``, and whether the /dev/char udev rule and
the CDI spec exist. The daemon.json files are read with ``daemon_json.DaemonJson``.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import FactBase

from operations.kit import scripts
from operations.kit.quoting import shell_join
from operations.toolkit.facts import CDI_SPEC, PACKAGES, UDEV_RULE

STACK_PACKAGES = ("docker-ce", "docker-ce-cli", "docker.io", "containerd.io", *PACKAGES)


def stack_command() -> str:
    """The one shell script behind ContainerStack (operations/kit/scripts/container_stack.sh)."""
    return scripts.render(
        "container_stack",
        UDEV_RULE=UDEV_RULE,
        CDI_SPEC=CDI_SPEC,
        raw_values={"PACKAGES": shell_join(STACK_PACKAGES)},
    )


def parse_stack(lines: list[str]) -> dict[str, Any]:
    """The script's lines as a dict; ``info`` parsed ({} when docker does not answer)."""
    state: dict[str, Any] = {"packages": {}, "udev_rule": False, "cdi_spec": False}
    for line in lines:
        key, _, value = line.partition("=")
        if key == "package":
            name, _, version = value.partition(" ")
            state["packages"][name] = version
        elif key in ("udev_rule", "cdi_spec"):
            state[key] = value == "yes"
        else:
            state[key] = value
    state["info"] = json.loads(state.get("info") or "{}")
    state["docker_group"] = [u for u in state.get("docker_group", "").split(",") if u]
    return state


class ContainerStack(FactBase):
    """Docker and toolkit state (see the module doc)."""

    def command(self) -> str:
        return stack_command()

    @staticmethod
    def default() -> dict[str, Any]:
        return parse_stack([])

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_stack(output)
