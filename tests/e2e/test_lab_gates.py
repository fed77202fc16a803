"""End to end: a compatibility gate (operations.gates) fails one lab host before any change
while the others deploy. lab-3 is given a toolkit pin below NVIDIA's security floor (1.16.1-1:
CVE-2024-0132 and CVE-2025-23266); the run fails lab-3 alone, naming the CVEs and the floor,
with no operation run on it; lab-3's toolkit and its pin stay as they were; the same pin with
both CVEs accepted passes the gate."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lab.state import inventory_hosts, load_state
from tests.e2e.helpers import ROOT, deploy, on_host, run

pytestmark = pytest.mark.lab
PIN = "/etc/apt/preferences.d/gpufleet-nvidia-container-toolkit"
TOOLKIT = "dpkg-query -W -f='${Version}' nvidia-container-toolkit"


def lab_inventory(tmp_path: Path, host: str, **data) -> Path:
    """The lab's inventory with ``data`` on ``host``, as a file named lab.py (so pyinfra puts
    its hosts in the group ``lab`` and group_data/lab.py applies, as with inventory/lab.py)."""
    hosts = [(name, {**hd, **data} if name == host else hd)
             for name, hd in inventory_hosts(load_state(ROOT))]  # fmt: skip
    path = tmp_path / "lab.py"
    path.write_text(f"lab_hosts = {hosts!r}\nmonitoring = [{hosts[0][0]!r}]\n")
    return path


def deploy_with(inventory: Path, *args: str):
    return run(sys.executable, "-m", "pyinfra", "-y", str(inventory), "deploy.py", *args)


def test_a_toolkit_below_the_floor_fails_that_host_alone_before_any_change(lab, tmp_path):
    done = deploy("-y")  # the fleet converged first
    assert done.returncode == 0, done.output
    before = {name: on_host(name, f"cat {PIN}; {TOOLKIT}").stdout for name in lab}
    done = deploy_with(lab_inventory(tmp_path, "lab-3", toolkit_version="1.16.1-1"))
    assert done.returncode != 0, done.output
    assert "lab-3: compatibility gates: toolkit_version 1.16.1-1 is below the NVIDIA " in (
        done.output
    ), done.output
    assert "CVE-2024-0132 (fixed in 1.16.2" in done.output
    assert "CVE-2025-23266 (fixed in 1.17.8" in done.output
    assert "--> Fleet: 2 of 3 host(s) succeeded; failed: lab-3" in done.output, done.output
    # no operation ran on lab-3 (the gate is its first and only one); the others ran theirs
    assert "[lab-3] Success" not in done.output and "[lab-3] No changes" not in done.output
    assert "[lab-1] No changes" in done.output or "[lab-1] Success" in done.output
    after = {name: on_host(name, f"cat {PIN}; {TOOLKIT}").stdout for name in lab}
    assert after == before  # lab-3 kept its 1.17.8-1 pin and packages


def test_the_same_pin_with_its_cves_accepted_passes_the_gate(lab, tmp_path):
    data = {"toolkit_version": "1.16.1-1", "toolkit_accept_cves": "CVE-2024-0132,CVE-2025-23266"}
    done = deploy_with(lab_inventory(tmp_path, "lab-3", **data), "--dry")
    assert "Compatibility gates failed" not in done.output, done.output
    assert "[lab-3] toolkit gate: toolkit_version 1.16.1-1 is below 1.16.2, the fix of " in (
        done.output
    ), done.output
    assert "CVE-2025-23266 (bulletin 5659, July 2025): accepted by toolkit_accept_cves" in (
        done.output
    ), done.output
