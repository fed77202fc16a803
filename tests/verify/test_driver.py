"""Verify, layer 1 (NVIDIA driver): installed at the pinned branch, held, loaded, healthy.

Package and configuration checks run on every host; GPU checks report "not applicable" on
hosts whose config says they have no GPU. All checks read one DriverState (the deploy's own
fact script) and, for NVSwitches, the preflight HostProfile.
"""

from __future__ import annotations

import pytest

from operations.driver import fabric_manager_wanted
from operations.driver.facts import is_driver_package
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


def test_driver_installed_at_configured_branch(fleet_host: FleetHost):
    driver = fleet_host.config.driver
    installed = fleet_host.read(DRIVER).get("nvml_version")
    assert installed, "no NVIDIA driver installed (no libnvidia-ml.so.1)"
    assert installed.split(".")[0] == driver.branch, f"{installed} is not branch {driver.branch}"
    if driver.version:
        assert installed == driver.version


def test_driver_packages_held(fleet_host: FleetHost):
    if not fleet_host.config.driver.hold_packages:
        pytest.skip("not applicable: driver_hold_packages is False")
    state = fleet_host.read(DRIVER)
    ours = [p for p in state["packages"] if is_driver_package(p)]
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
    loaded, installed = state.get("module_loaded"), state.get("nvml_version")
    assert loaded, "the nvidia kernel module is not loaded"
    assert loaded == installed, f"loaded module {loaded} != installed driver {installed}"


def test_nvidia_smi_works(fleet_host: FleetHost):
    state = _gpu_state(fleet_host)
    assert state.get("nvidia_smi_rc") == "0" and state["gpus"], state["gpu_errors"]


def test_gpu_count_as_configured(fleet_host: FleetHost):
    expected = fleet_host.config.host.gpu_count
    _needs_gpus(fleet_host)
    if expected is None:
        pytest.skip("not applicable: host_gpu_count is not set")
    found = len(fleet_host.read(DRIVER)["gpus"])
    assert found == expected, f"{found} GPU(s), host_gpu_count is {expected}"


def test_persistence_mode_on_every_gpu(fleet_host: FleetHost):
    state = _gpu_state(fleet_host)
    off = [g["index"] for g in state["gpus"] if g["persistence_mode"] != "Enabled"]
    assert state["gpus"] and not off, f"persistence mode off on GPU(s) {off}"


def test_no_uncorrected_ecc_errors_or_pending_retirements(fleet_host: FleetHost):
    state = _gpu_state(fleet_host)
    ecc = [g["index"] for g in state["gpus"] if g["ecc.errors.uncorrected.volatile.total"] not in
           ("0", "[N/A]")]  # fmt: skip
    pending = [g["index"] for g in state["gpus"] if g["retired_pages.pending"] not in
               ("No", "[N/A]")]  # fmt: skip
    assert not ecc, f"uncorrected ECC errors on GPU(s) {ecc}"
    assert not pending, f"page retirement pending (reboot) on GPU(s) {pending}"


def test_fabric_manager_active_on_nvswitch_systems(fleet_host: FleetHost):
    config = fleet_host.config
    _needs_gpus(fleet_host)
    if config.driver.fabric_manager == "disabled":  # by config: before the host is read
        pytest.skip("not applicable: driver_fabric_manager is disabled")
    if not fabric_manager_wanted(config, fleet_host.read(PROFILE)):  # the deploy's rule
        pytest.skip("not applicable: no NVSwitch and driver_fabric_manager is auto")
    state = fleet_host.read(DRIVER)
    unit = state["units"].get("nvidia-fabricmanager", {})
    assert unit.get("active") == "active", f"nvidia-fabricmanager is {unit or 'missing'}"
