"""Verify, layer 2 (Docker Engine): running, enabled, pinned, configured as the config says.

All checks read one ContainerStack fact and the DaemonJson fact: the deploy's own scripts.
"""

from __future__ import annotations

import pytest

from operations.docker import daemon_keys
from operations.kit.daemon_json import holds, parse
from tests.verify.facts import DAEMON_JSON, STACK
from tests.verify.fleet import FleetHost

pytestmark = pytest.mark.docker
FACTS = (STACK, DAEMON_JSON)


def test_docker_active_and_enabled(fleet_host: FleetHost):
    state = fleet_host.read(STACK)
    assert state["active"] == "active", f"docker.service is {state['active'] or 'missing'}"
    assert state["enabled"] == "enabled", f"docker.service is {state['enabled'] or 'missing'}"
    assert state["info"].get("ServerVersion"), "docker info does not answer"


def test_docker_version_as_pinned(fleet_host: FleetHost):
    pinned = fleet_host.config.docker.version
    if pinned is None:
        pytest.skip("not applicable: docker_version is not set")
    version = fleet_host.read(STACK)["server_version"]
    assert version == pinned or version.startswith((f"{pinned}.", f"{pinned}+", f"{pinned}-")), (
        f"Docker {version or '(none)'} is not docker_version {pinned}"
    )


def test_daemon_json_is_valid_and_holds_the_configured_keys(fleet_host: FleetHost):
    current = parse(fleet_host.read(DAEMON_JSON)["current"])
    assert current is not None, "/etc/docker/daemon.json is not a JSON object"
    wrong = holds(current, daemon_keys(fleet_host.config.docker))
    assert not wrong, f"daemon.json differs from the config at: {', '.join(wrong)}"


def test_running_daemon_uses_those_settings(fleet_host: FleetHost):
    info, docker = fleet_host.read(STACK)["info"], fleet_host.config.docker
    wanted = {"LiveRestoreEnabled": docker.live_restore, "LoggingDriver": "json-file"}
    wanted |= {"CgroupDriver": docker.cgroup_driver} if docker.cgroup_driver else {}
    wanted |= {"DockerRootDir": docker.data_root} if docker.data_root else {}
    wrong = [f"{key} is {info.get(key)!r}, not {value!r}" for key, value in wanted.items()
             if info.get(key) != value]  # fmt: skip
    assert not wrong, f"docker info: {'; '.join(wrong)}"


def test_docker_group_holds_only_the_configured_users(fleet_host: FleetHost):
    members = sorted(fleet_host.read(STACK)["docker_group"])
    assert members == sorted(fleet_host.config.docker.users), "docker group is root-equivalent"
