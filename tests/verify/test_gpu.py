"""Verify, GPU health (layer 1, NVIDIA driver): one check per concern of
operations/driver/health.py, each failing only for its own fault, with a message naming the
GPU (index and PCI bus id), the value and the limit. Read from the driver state fact (the NVML
probe through pynvml; nvidia-smi's CSV on a host without python3) and the preflight profile
(NVSwitches). "Not applicable" where the config says the host has no GPU, where no GPU of
the host supports the concern, or where the fallback does not read it. Each unhealthy GPU
goes into the fleet report's JSON with its reason (``unhealthy_gpus``). The driver's branch
is checked once, for every host, by tests/verify/test_driver.py."""

from __future__ import annotations

import pytest

from operations.driver import health
from tests.verify.facts import DRIVER, PROFILE
from tests.verify.fleet import FleetHost

pytestmark = pytest.mark.driver
FACTS = (DRIVER, PROFILE)
DCGM_DIAG = "dcgmi diag -r 1"
DCGM_TIMEOUT_S = 300


def _judge(fleet_host: FleetHost, concern: str, request) -> None:
    """Run one concern: skip as not applicable, or fail naming every unhealthy GPU (kept
    on the test's report for the fleet report: ``user_properties``, as the plugin's own)."""
    if not fleet_host.config.host.has_gpus:
        pytest.skip("not applicable: host_has_gpus is False")
    host = health.Host(fleet_host.config, fleet_host.read(DRIVER), fleet_host.read(PROFILE))
    try:
        verdict = health.verdict(concern, host)
    except health.NotApplicable as why:
        pytest.skip(str(why))
    if verdict.notes:
        request.node.user_properties.append(("gpu_notes", verdict.notes))
    if verdict.findings:
        request.node.user_properties.append(("unhealthy_gpus", [
            {"gpu": f.gpu, "pci_bus_id": f.bus, "reason": f.reason} for f in verdict.findings
        ]))  # fmt: skip
    assert not verdict.findings, "; ".join(str(finding) for finding in verdict.findings)


def test_gpu_count_as_configured(fleet_host: FleetHost, request):
    _judge(fleet_host, "gpu_count", request)


def test_cuda_driver_supports_the_vllm_image(fleet_host: FleetHost, request):
    _judge(fleet_host, "cuda_version", request)


def test_persistence_mode_on(fleet_host: FleetHost, request):
    _judge(fleet_host, "persistence", request)


def test_ecc_enabled(fleet_host: FleetHost, request):
    _judge(fleet_host, "ecc_enabled", request)


def test_no_uncorrected_volatile_ecc_errors(fleet_host: FleetHost, request):
    _judge(fleet_host, "ecc_uncorrected", request)


def test_no_pending_page_retirement(fleet_host: FleetHost, request):
    _judge(fleet_host, "retired_pages_pending", request)


def test_no_pending_row_remap(fleet_host: FleetHost, request):
    _judge(fleet_host, "row_remap_pending", request)


def test_no_row_remap_failure(fleet_host: FleetHost, request):
    _judge(fleet_host, "row_remap_failure", request)


def test_correctable_row_remaps_within_limit(fleet_host: FleetHost, request):
    _judge(fleet_host, "row_remap_correctable", request)


def test_pcie_link_at_full_width(fleet_host: FleetHost, request):
    _judge(fleet_host, "pcie_width", request)


def test_no_hardware_thermal_or_power_brake_slowdown(fleet_host: FleetHost, request):
    _judge(fleet_host, "clock_slowdown", request)


def test_temperature_below_slowdown_margin(fleet_host: FleetHost, request):
    _judge(fleet_host, "temperature", request)


def test_every_nvlink_up(fleet_host: FleetHost, request):
    _judge(fleet_host, "nvlink", request)


def test_fabric_completed_on_nvswitch_systems(fleet_host: FleetHost, request):
    _judge(fleet_host, "fabric", request)


def test_no_fatal_xid_since_boot(fleet_host: FleetHost, request):
    _judge(fleet_host, "xid", request)


def test_dcgm_quick_diagnostic(fleet_host: FleetHost):
    """``dcgmi diag -r 1`` (DCGM's quick deployment checks) where DCGM is installed."""
    if not fleet_host.config.host.has_gpus:
        pytest.skip("not applicable: host_has_gpus is False")
    if fleet_host.host.run("command -v dcgmi").rc != 0:
        pytest.skip("not applicable: DCGM is not installed (driver_dcgm)")
    done = fleet_host.host.run(f"timeout {DCGM_TIMEOUT_S} {DCGM_DIAG}")
    failed = health.dcgm_failures(done.stdout)
    assert done.rc == 0 and not failed, f"{DCGM_DIAG} (exit {done.rc}): " + (
        "; ".join(failed) or (done.stderr or done.stdout).strip()[-300:]
    )
