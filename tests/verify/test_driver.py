"""Verify, layer 1 (NVIDIA driver): installed at the pinned branch, held, loaded, readable
(GPU health, one check per concern, is tests/verify/test_gpu.py).

Package and configuration checks run on every host; GPU checks report "not applicable" on
hosts whose config says they have no GPU. All checks read one DriverState (the deploy's own
fact script) and, for NVSwitches, the preflight HostProfile.
"""

from __future__ import annotations

import pytest

from operations.driver import fabric_manager_wanted, health
from operations.driver.facts import is_driver_package, probe_problem
from tests.verify.facts import DRIVER, PROFILE
from tests.verify.fleet import FleetHost

pytestmark = pytest.mark.driver
FACTS = (DRIVER, PROFILE)


def _needs_gpus(fleet_host: FleetHost) -> None:
    """Skips a GPU check as not applicable where the config says the host has none: decided
    from the config, before the host is read, so an unreachable host keeps it N/A."""
    if not fleet_host.config.host.has_gpus:
        pytest.skip("not applicable: host_has_gpus is False")


def _gpu_state(fleet_host: FleetHost) -> dict:
    """The driver state, for checks that need GPUs (skipped as not applicable otherwise)."""
    _needs_gpus(fleet_host)
    return fleet_host.read(DRIVER)


def test_driver_at_configured_branch(fleet_host: FleetHost):
    """The driver the host runs (NVML's answer, else the loaded module, else the library the
    loader finds) is the configured branch, and version where pinned."""
    verdict = health.driver_version(health.Host(fleet_host.config, fleet_host.read(DRIVER)))
    assert not verdict.findings, "; ".join(str(finding) for finding in verdict.findings)


def test_driver_packages_held(fleet_host: FleetHost):
    config = fleet_host.config.driver
    if not config.hold_packages:
        pytest.skip("not applicable: driver_hold_packages is False")
    state = fleet_host.read(DRIVER)
    ours = [p for p in state["packages"] if is_driver_package(p)]
    if config.source == "preinstalled" and not ours:
        pytest.skip("not applicable: the preinstalled driver has no packages to hold")
    assert ours, "no driver package installed"
    unheld = sorted(set(ours) - set(state["held"]))
    assert not unheld, f"not held: {', '.join(unheld)}"


def test_nouveau_blacklisted_and_not_loaded(fleet_host: FleetHost):
    if not fleet_host.config.driver.blacklist_nouveau:
        pytest.skip("not applicable: driver_blacklist_nouveau is False")
    state = fleet_host.read(DRIVER)
    assert state["nouveau_blacklist"], "no modprobe.d file blacklists nouveau"
    assert not state["nouveau_loaded"], "nouveau is loaded"


def test_loaded_module_is_the_installed_driver(fleet_host: FleetHost):
    state = _gpu_state(fleet_host)
    loaded = state.get("module_loaded") or state.get("proc_version")
    installed = state.get("nvml_version")
    assert loaded, "the nvidia kernel module is not loaded"
    assert loaded == installed, f"loaded module {loaded} != installed driver {installed}"


def test_gpus_readable(fleet_host: FleetHost):
    """NVML (or, without python3, nvidia-smi) answers, and sees GPUs where host_gpu_count
    does not say how many (test_gpu_count_as_configured does, naming the count)."""
    state = _gpu_state(fleet_host)
    problem = probe_problem(state) if state["probe"] else "no NVIDIA driver is loaded"
    assert not problem, problem
    if fleet_host.config.host.gpu_count is None:  # else the GPU count check says how many
        assert state["gpus"], f"{state['probe']} sees no GPU"


def test_fabric_manager_active_on_nvswitch_systems(fleet_host: FleetHost):
    config = fleet_host.config
    _needs_gpus(fleet_host)
    if config.driver.fabric_manager == "disabled":  # by config: before the host is read
        pytest.skip("not applicable: driver_fabric_manager is disabled")
    if not fabric_manager_wanted(config, fleet_host.read(PROFILE)):  # the deploy's rule
        pytest.skip("not applicable: no NVSwitch and driver_fabric_manager is auto")
    state = fleet_host.read(DRIVER)
    if state.get("init") != "systemd":
        pytest.skip("not applicable: systemd does not run this host (no units to check)")
    unit = state["units"].get("nvidia-fabricmanager", {})
    assert unit.get("active") == "active", f"nvidia-fabricmanager is {unit or 'missing'}"
