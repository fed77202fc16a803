"""DriverState: the script runs under sh here, and its output parses as the layer expects."""

import subprocess

from operations.driver.facts import driver_command, parse_driver_state

H100_LINE = "gpu=0, 00000000:1B:00.0, NVIDIA H100 80GB HBM3, 580.95.05, Enabled, 0, No"


def test_script_runs_under_posix_sh_and_parses():
    done = subprocess.run(["sh", "-c", driver_command()], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    state = parse_driver_state(done.stdout.splitlines())
    assert set(state["units"]) == {"nvidia-persistenced", "nvidia-fabricmanager"}


def test_parse_gpus_packages_holds_units_and_flags():
    state = parse_driver_state([
        "nvml_version=580.95.05", "module_loaded=580.95.05", H100_LINE,
        "gpu=Failed to initialize NVML: Driver/library version mismatch", "nvidia_smi_rc=0",
        "package=nvidia-open-580 580.95.05-1", "held=nvidia-open-580",
        "unit=nvidia-persistenced enabled active", "nouveau_loaded=yes", "reboot_required=yes",
        "nouveau_blacklist=/etc/modprobe.d/x.conf", "initramfs=update-initramfs -u",
    ])  # fmt: skip
    (gpu,) = state["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["persistence_mode"] == "Enabled"
    assert gpu["retired_pages.pending"] == "No"
    assert state["gpu_errors"] == ["Failed to initialize NVML: Driver/library version mismatch"]
    assert state["packages"] == {"nvidia-open-580": "580.95.05-1"}
    assert state["held"] == ["nvidia-open-580"]
    assert state["units"]["nvidia-persistenced"] == {"enabled": "enabled", "active": "active"}
    assert state["nouveau_loaded"] and state["reboot_required"]
    assert state["initramfs"] == "update-initramfs -u"


def test_nothing_installed_parses_to_empty_state():
    state = parse_driver_state(["unit=nvidia-persistenced missing unknown"])
    assert state["packages"] == {} and state["gpus"] == [] and "nvml_version" not in state
