"""End to end on the STAND-IN GPU lab hosts (lab/gpu.py: the recorded H100, an 8-GPU HGX with
NVSwitches): the whole deploy and verify pass on them with driver_source = "preinstalled"
(the stand-in driver is installed outside the package manager, as on the cloud image), a
second deploy plans no change, a package source refuses the driver before any change, and
each fault of tests/standins/gpu makes exactly its own check fail, with a clear message,
while every other check passes."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import pytest

from tests.e2e import gpu_host
from tests.e2e.gpu_host import fault, on_gpu_host
from tests.e2e.helpers import run
from tests.standins import gpu as standin

pytestmark = pytest.mark.lab
gpu_hosts = gpu_host.gpu_hosts  # the fixture, in this module
INVENTORY = "inventory/lab_gpu.py"
# fault -> the one check it must fail, and words its message must hold
CAUGHT_BY = {
    "ecc_uncorrected": ("test_no_uncorrected_volatile_ecc_errors", "uncorrected volatile ECC"),
    "retired_page_pending": ("test_no_pending_page_retirement", "page retirement pending"),
    "row_remap_pending": ("test_no_pending_row_remap", "the GPU needs a reset"),
    "row_remap_failure": ("test_no_row_remap_failure", "RMA"),
    "pcie_x8": ("test_pcie_link_at_full_width", "PCIe link x8 of x16"),
    "thermal_throttle": ("test_no_hardware_thermal_or_power_brake_slowdown",
                         "hardware thermal slowdown"),
    "nvlink_down": ("test_every_nvlink_up", "NVLink(s) 17 of 18 down"),
    "fabric_incomplete": ("test_fabric_completed_on_nvswitch_systems", "GPU fabric not started"),
    "xid_79": ("test_no_fatal_xid_since_boot", "Xid 79"),
    "persistence_off": ("test_persistence_mode_on", "persistence mode is off"),
    "gpu_missing": ("test_gpu_count_as_configured", "host_gpu_count is"),
    "driver_branch": ("test_driver_at_configured_branch", "is not branch 580"),
    "cuda_older": ("test_cuda_driver_supports_the_vllm_image", "supports CUDA 12.2"),
}  # fmt: skip
DRIVER_PACKAGES = (  # how many driver packages dpkg knows of
    "dpkg-query -W -f='${Package}\\n' 'nvidia-driver*' 'cuda-drivers*' 'libnvidia-compute*' "
    "2>/dev/null | wc -l"
)
CASES = [(variant, name) for variant in standin.VARIANTS
         for name in standin.faults_for(standin.load(variant))]  # fmt: skip


def gpu_deploy(*args: str):
    return run(sys.executable, "-m", "pyinfra", INVENTORY, "deploy.py", *args, timeout=900)


def gpu_verify(tmp_path, *args: str) -> tuple[object, dict]:
    report = tmp_path / "report.json"
    done = run(sys.executable, "-m", "pytest", "tests/verify", "--inventory", INVENTORY,
               "-p", "no:cacheprovider", f"--fleet-report={report}",
               f"--junitxml={tmp_path / 'junit.xml'}", *args)  # fmt: skip
    return done, json.loads(report.read_text())


@pytest.fixture(scope="module")
def deployed(gpu_hosts):
    """Both GPU hosts up, healthy and deployed once (every layer)."""
    hosts = [gpu_hosts(variant) for variant in standin.VARIANTS]
    done = gpu_deploy("-y")
    assert done.returncode == 0, done.output[-3000:]
    assert "Driver failed" not in done.output
    return hosts


def test_the_whole_deploy_converges_and_a_second_run_plans_no_change(deployed):
    done = gpu_deploy("--dry", "--json", "-y")
    assert done.returncode == 0, done.output[-3000:]
    plan = json.loads(done.stdout)["plan"]
    assert [(op["name"], op["hosts_with_change"]) for op in plan if op["hosts_with_change"]] == []


def test_verify_passes_every_layer_and_the_gpu_checks_run(deployed, tmp_path):
    done, report = gpu_verify(tmp_path)
    assert done.returncode == 0, done.output[-3000:]
    for host, cells in report["hosts"].items():
        assert {cell["status"] for cell in cells.values()} == {"PASS"}, (host, cells)
    # the driver layer's own checks and the GPU health checks that apply: the H100 has no
    # NVLink, fabric or NVSwitch; neither has DCGM or a correctable-remap limit set
    assert report["hosts"]["lab-gpu-h100"]["driver"]["passed"] == 15
    assert report["hosts"]["lab-gpu-hgx8"]["driver"]["passed"] == 18
    assert report["unhealthy_gpus"] == {}


def test_preinstalled_adopted_the_driver_and_installed_no_driver_package(deployed):
    for host in deployed:
        done = on_gpu_host(host, DRIVER_PACKAGES)
        assert done.stdout.strip() == "0", done.output
        assert "580.159.04" in on_gpu_host(host, "cat /sys/module/nvidia/version").stdout


def test_a_package_source_refuses_the_unmanaged_driver_before_any_change(deployed):
    done = gpu_deploy("-y", "--data", "driver_source=cuda-repo", "--data", "deploy_layers=driver")
    assert done.returncode != 0
    assert done.output.count("belongs to no package") >= 2, done.output[-3000:]
    assert 'driver_source = "preinstalled"' in done.output
    for host in deployed:
        listed = on_gpu_host(host, "ls /etc/apt/sources.list.d /etc/apt/keyrings 2>/dev/null")
        assert "cuda" not in listed.stdout, listed.output  # nothing of NVIDIA's repository


@pytest.mark.parametrize(("variant", "name"), CASES, ids=[f"{v}-{n}" for v, n in CASES])
def test_each_fault_fails_exactly_its_check(deployed, gpu_hosts, tmp_path, variant, name):
    host = gpu_hosts(variant)
    check, words = CAUGHT_BY[name]
    with fault(host, name):
        done, report = gpu_verify(tmp_path, "--limit", host.name, "-m", "driver")
    cell = report["hosts"][host.name]["driver"]
    failed = {failure["check"]: failure["message"] for failure in cell["failures"]}
    assert list(failed) == [check], (name, failed)
    assert words in failed[check], failed[check]
    assert done.returncode == 1


# fault -> the alert its DCGM metric fires at the GPU inventory's Prometheus (on the HGX)
ALERTED_BY = {
    "xid_79": "GpuFatalXid",
    "row_remap_pending": "GpuRowRemapPending",
    "ecc_uncorrected": "GpuUncorrectableEccErrors",
}


def gpu_alerts(prometheus_host) -> list[dict]:
    url = f"http://{prometheus_host.address}:9090/api/v1/alerts"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["alerts"]


def test_prometheus_scrapes_both_gpu_hosts_dcgm_exporters(deployed, gpu_hosts):
    prometheus = gpu_hosts("hgx8")
    url = f"http://{prometheus.address}:9090/api/v1/targets?state=active"
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(url, timeout=5) as response:
            targets = json.loads(response.read())["data"]["activeTargets"]
        dcgm = {t["labels"]["gpufleet_host"]: t["health"] for t in targets
                if t["labels"]["job"] == "dcgm"}  # fmt: skip
        if set(dcgm.values()) == {"up"} or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert dcgm == {"lab-gpu-h100": "up", "lab-gpu-hgx8": "up"}


@pytest.mark.parametrize("name", sorted(ALERTED_BY))
def test_a_gpu_fault_fires_its_alert_through_the_standin_dcgm_exporter(deployed, gpu_hosts, name):
    """The fault on the H100 stand-in shows in its dcgm-exporter's metrics, which the HGX's
    Prometheus scrapes: the alert fires for that host and GPU, and clears once healed."""
    host, prometheus = gpu_hosts("h100"), gpu_hosts("hgx8")
    alert = ALERTED_BY[name]

    def state() -> set[str]:
        return {a["state"] for a in gpu_alerts(prometheus)
                if a["labels"]["alertname"] == alert
                and a["labels"].get("gpufleet_host") == host.name}  # fmt: skip

    with fault(host, name):
        deadline = time.monotonic() + 90
        while "firing" not in state():
            assert time.monotonic() < deadline, f"{alert} did not fire for {name}"
            time.sleep(2)
        fired = [a for a in gpu_alerts(prometheus) if a["labels"]["alertname"] == alert]
        assert {a["labels"]["gpufleet_host"] for a in fired} == {host.name}
        assert all(a["labels"].get("UUID") for a in fired)
