"""Verify, layer 3 (NVIDIA Container Toolkit): pinned packages, the runtime registered, the
NVML-after-reload fix in place and, on GPU hosts, CDI specs and a GPU container that sees
every GPU (GPU checks are "not applicable" where the config says there is none)."""

from __future__ import annotations

import fnmatch

import pytest

from operations.kit.daemon_json import holds, parse
from operations.kit.packages import version_glob
from operations.toolkit import PACKAGES, daemon_keys
from tests.verify.facts import DAEMON_JSON, STACK
from tests.verify.fleet import FleetHost

pytestmark = pytest.mark.toolkit
FACTS = (STACK, DAEMON_JSON)


def _gpu_host(fleet_host: FleetHost) -> None:
    if not fleet_host.config.host.has_gpus:
        pytest.skip("not applicable: host_has_gpus is False")


def test_toolkit_packages_installed_at_one_pinned_version(fleet_host: FleetHost):
    installed = fleet_host.read(STACK)["packages"]
    missing = [name for name in PACKAGES if name not in installed]
    assert not missing, f"not installed: {', '.join(missing)}"
    versions = {installed[name] for name in PACKAGES}
    assert len(versions) == 1, f"the four packages differ: {sorted(versions)}"
    pinned = fleet_host.config.toolkit.version
    if pinned:
        (version,) = versions
        assert fnmatch.fnmatch(version, version_glob(pinned)), f"{version} is not {pinned}"


def test_nvidia_ctk_is_the_installed_version(fleet_host: FleetHost):
    state = fleet_host.read(STACK)
    upstream = state["packages"].get("nvidia-container-toolkit-base", "?").split("-")[0]
    assert state.get("ctk_version", "").endswith(f"version {upstream}"), state.get("ctk_version")


def test_docker_lists_the_nvidia_runtime(fleet_host: FleetHost):
    info = fleet_host.read(STACK)["info"]
    assert "nvidia" in info.get("Runtimes", {}), f"runtimes: {sorted(info.get('Runtimes', {}))}"
    if fleet_host.config.toolkit.default_runtime:
        assert info.get("DefaultRuntime") == fleet_host.config.toolkit.default_runtime


def test_daemon_json_holds_the_runtime_keys(fleet_host: FleetHost):
    current = parse(fleet_host.read(DAEMON_JSON)["current"]) or {}
    wrong = holds(current, daemon_keys(fleet_host.config.toolkit))
    assert not wrong, f"daemon.json differs from the config at: {', '.join(wrong)}"


def test_dev_char_udev_rule_installed(fleet_host: FleetHost):
    assert fleet_host.read(STACK)["udev_rule"], (
        "the /dev/char udev rule is missing (NVML after reload)"
    )


def test_cdi_spec_generated(fleet_host: FleetHost):
    _gpu_host(fleet_host)
    if not fleet_host.config.toolkit.cdi:
        pytest.skip("not applicable: toolkit_cdi is False")
    assert fleet_host.read(STACK)["cdi_spec"], "no /etc/cdi/nvidia.yaml"


def test_gpu_container_sees_every_gpu(fleet_host: FleetHost):
    """nvidia-smi inside the configured vLLM image (entrypoint overridden: nothing else is
    pulled) lists as many GPUs as on the host."""
    _gpu_host(fleet_host)
    image = fleet_host.config.vllm.image
    host = fleet_host.host.run("nvidia-smi -L")
    inside = fleet_host.host.run(
        f"docker run --rm --runtime=nvidia --gpus all --entrypoint nvidia-smi {image} -L"
    )
    assert host.rc == 0, f"nvidia-smi -L on the host: {host!r}"
    assert inside.rc == 0, f"nvidia-smi -L in {image}: {inside!r}"
    count, seen = host.stdout.count("GPU "), inside.stdout.count("GPU ")
    assert count and seen == count, f"{count} GPU(s) on the host, {seen} in a container"
