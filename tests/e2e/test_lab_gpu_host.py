"""End to end: the STAND-IN GPU lab hosts (lab/gpu.py) answer, over real SSH, every fact the
project reads as the recorded H100 host (and an HGX) would: PCI ids in sysfs, the loaded
module, NVML through the stand-in library found by ldconfig, nvidia-smi, the kernel log; a
fault written into the description shows; lab-1..N are left alone."""

from __future__ import annotations

import json
import time

import pytest

from lab.gpu import container_name, heal
from lab.hosts import list_containers
from operations.driver import nvml
from tests.e2e import gpu_host
from tests.e2e.gpu_host import fault, on_gpu_host
from tests.e2e.helpers import ROOT
from tests.standins import gpu as standin

pytestmark = pytest.mark.lab
gpu_hosts, gpu_h100, gpu_hgx8 = gpu_host.gpu_hosts, gpu_host.gpu_h100, gpu_host.gpu_hgx8  # fixtures


# host_profile.sh's PCI loop (operations/kit/scripts), as preflight runs it
PCI_LOOP = (
    'for dev in /sys/bus/pci/devices/*; do [ "$(cat "$dev/vendor")" = 0x10de ] || continue; '
    'echo "pci=${dev##*/} $(cat "$dev/class") $(cat "$dev/device")"; done'
)


def probe(host) -> tuple[dict, float]:
    """The NVML probe over SSH as the driver facts send it: its document and wall time (ms)."""
    started = time.monotonic()
    done = on_gpu_host(host, nvml.probe_command())
    elapsed = (time.monotonic() - started) * 1000
    assert done.returncode == 0, done.output
    return nvml.parse(done.stdout.splitlines()), elapsed


def test_the_h100_host_shows_the_recorded_facts(gpu_h100):
    done = on_gpu_host(gpu_h100, "; ".join([
        PCI_LOOP,
        'echo "module=$(cat /sys/module/nvidia/version)"',
        "[ -d /sys/module/nouveau ] || echo nouveau=absent",
        "head -n 1 /proc/driver/nvidia/version",
        "ldconfig -p | awk '$1 == \"libnvidia-ml.so.1\" { print \"ldconfig=\" $NF }'",
        'echo "library=$(readlink -f /usr/local/nvidia/lib64/libnvidia-ml.so.1)"',
        "nvidia-smi --query-gpu=index,pci.bus_id,driver_version,persistence_mode "
        "--format=csv,noheader",
        "dmesg | grep -c 'NVRM: Xid' || true",
        "systemctl is-active gpufleet-standin.service",
    ]))  # fmt: skip
    assert done.returncode == 0, done.output
    assert done.stdout.splitlines() == [
        "pci=0000:18:00.0 0x030200 0x2330",
        "module=580.159.04",
        "nouveau=absent",
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  "
        "(gpufleet STAND-IN)",
        "ldconfig=/usr/local/nvidia/lib64/libnvidia-ml.so.1",
        "library=/usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04",
        "0, 00000000:18:00.0, 580.159.04, Enabled",
        "0",
        "active",
    ]


def test_the_probe_reads_the_h100_over_ssh(gpu_h100, record_property):
    found, elapsed = probe(gpu_h100)
    record_property("probe_ms", round(elapsed))
    assert found["probe"] == "nvml" and found["driver"] == "580.159.04", found
    assert found["cuda_driver"] == 13000
    (gpu,) = found["gpus"]
    assert gpu["pci_bus_id"] == "00000000:18:00.0" and gpu["persistence"] == 1
    assert gpu["retired_pages_pending"] == {"unsupported": True}
    assert gpu["pcie"]["width"] == 16 and gpu["fabric"] == {"unsupported": True}


def test_a_fault_written_over_ssh_shows_and_heals(gpu_h100):
    """The plain way (any fault but driver_branch): rewrite the description on the host."""
    sick = standin.with_fault(standin.load("h100"), "pcie_x8")
    try:
        written = on_gpu_host(gpu_h100, "cat > /etc/gpufleet-standin/gpus.json",
                              input=standin.dumps(sick))  # fmt: skip
        assert written.returncode == 0, written.output
        (gpu,) = probe(gpu_h100)[0]["gpus"]
        assert (gpu["pcie"]["width"], gpu["pcie"]["max_width"]) == (8, 16)
    finally:
        heal("h100", ROOT)
    (gpu,) = probe(gpu_h100)[0]["gpus"]
    assert gpu["pcie"]["width"] == 16


def test_the_driver_branch_fault_moves_module_library_and_nvml(gpu_h100):
    with fault(gpu_h100, "driver_branch"):
        done = on_gpu_host(gpu_h100, "cat /sys/module/nvidia/version; "
                           "readlink -f /usr/local/nvidia/lib64/libnvidia-ml.so.1; "
                           "ls /usr/local/nvidia/lib64")  # fmt: skip
        assert done.stdout.splitlines() == [
            "570.195.03",
            "/usr/local/nvidia/lib64/libnvidia-ml.so.570.195.03",
            "libnvidia-ml.so.1",
            "libnvidia-ml.so.570.195.03",
        ]
        assert probe(gpu_h100)[0]["driver"] == "570.195.03"
    assert on_gpu_host(gpu_h100, "cat /sys/module/nvidia/version").stdout == "580.159.04\n"


def test_the_hgx8_host_has_eight_gpus_and_four_nvswitches(gpu_hgx8):
    done = on_gpu_host(gpu_hgx8, PCI_LOOP + "; nvidia-smi --query-gpu=pci.bus_id,fabric.state "
                       "--format=csv,noheader")  # fmt: skip
    lines = done.stdout.splitlines()
    assert sum(line.endswith(" 0x030200 0x2330") for line in lines) == 8
    assert sum(line.endswith(" 0x068000 0x22a3") for line in lines) == 4
    assert [line for line in lines if not line.startswith("pci=")] == [
        f"{g['pci_bus_id']}, Completed" for g in standin.load("hgx8")["gpus"]
    ]


def test_the_probe_reads_the_hgx8_over_ssh(gpu_hgx8):
    found, _elapsed = probe(gpu_hgx8)
    assert len(found.get("gpus", [])) == 8, found
    assert all(g["nvlinks"] == [True] * 18 for g in found["gpus"])
    assert all(g["fabric"] == {"state": 3, "status": 0} for g in found["gpus"])


def test_the_gpu_hosts_are_not_lab_hosts(gpu_h100, lab):
    """`lab up --hosts N` neither lists nor removes them, and they carry their description."""
    names = {c.name for c in list_containers().values()}
    assert container_name("h100") not in names and len(names) == len(lab)
    description = on_gpu_host(gpu_h100, "cat /etc/gpufleet-standin/gpus.json").stdout
    assert json.loads(description) == standin.load("h100")
