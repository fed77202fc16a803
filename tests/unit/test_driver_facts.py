"""DriverState: the script runs under sh here (this machine has no GPU, no driver and no
systemd as PID 1), finds the driver library wherever the dynamic loader's cache says it is,
says when no package owns it, falls back to nvidia-smi without python3, and its output
parses as the layer expects."""

import json
import os
import subprocess
from pathlib import Path

from operations.driver.facts import driver_command, loaded_driver, parse_driver_state, unmanaged

H100_LINE = "gpu=0, 00000000:1B:00.0, NVIDIA H100 80GB HBM3, 580.95.05, Enabled, 0, No"


def run_script(path: str) -> dict:
    done = subprocess.run(["sh", "-c", driver_command()], capture_output=True, text=True,
                          env={"PATH": path}, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return parse_driver_state(done.stdout.splitlines())


def test_script_runs_under_posix_sh_and_parses():
    state = run_script(os.environ["PATH"])
    assert state["init"] in ("systemd", "other")
    if state["init"] == "systemd":
        assert set(state["units"]) == {"nvidia-persistenced", "nvidia-fabricmanager"}
    assert state["probe"] is None and loaded_driver(state) is None  # no driver here


def fake_tools(tmp_path: Path, *, without: tuple[str, ...] = (), **scripts: str) -> str:
    """A PATH of this machine's tools less ``without``, plus ``scripts`` (name -> sh body)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for tool in Path(directory).iterdir() if Path(directory).is_dir() else ():
            target = bin_dir / tool.name
            if (
                not target.exists()
                and not tool.name.startswith(without)
                and tool.name not in scripts
            ):
                target.symlink_to(tool)
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def cloud_image_library(tmp_path: Path) -> Path:
    """A driver library as a cloud image lays it out: /usr/local/nvidia/lib64, no package."""
    lib64 = tmp_path / "usr" / "local" / "nvidia" / "lib64"
    lib64.mkdir(parents=True)
    (lib64 / "libnvidia-ml.so.580.159.04").write_bytes(b"\x7fELF stand-in")
    (lib64 / "libnvidia-ml.so.1").symlink_to("libnvidia-ml.so.580.159.04")
    return lib64 / "libnvidia-ml.so.1"


def cloud_image_tools(tmp_path: Path, lib: Path, **scripts: str) -> str:
    """fake_tools without python3 (nor the tools ``scripts`` replace), whose ldconfig's
    cache names ``lib``."""
    ldconfig = f'echo "	libnvidia-ml.so.1 (libc6,x86-64) => {lib}"\n'
    return fake_tools(tmp_path, ldconfig=ldconfig, without=("python3", *scripts), **scripts)


def test_the_library_is_found_through_the_loader_cache_and_no_package_owns_it(tmp_path):
    lib = cloud_image_library(tmp_path)
    state = run_script(cloud_image_tools(tmp_path, lib))
    assert state["nvml_version"] == "580.159.04"
    assert state["library"] == str(lib.resolve())
    assert state["library_owner"] == "none" and unmanaged(state)
    # a driver is present, the probe has no python3 and there is no nvidia-smi: it says so
    assert state["probe"] == "none" and state["nvml"]["why"] == "python3 is not installed"


def test_without_python3_nvidia_smi_gives_what_it_can(tmp_path):
    lib = cloud_image_library(tmp_path)
    smi = "echo '0, 00000000:18:00.0, NVIDIA H100 80GB HBM3, 580.159.04, Enabled, 0, [N/A]'\n"
    state = run_script(cloud_image_tools(tmp_path, lib, **{"nvidia-smi": smi}))
    assert state["probe"] == "nvidia-smi" and state["nvidia_smi_rc"] == "0"
    (gpu,) = state["gpus"]
    assert gpu == {"index": 0, "pci_bus_id": "00000000:18:00.0", "name": "NVIDIA H100 80GB HBM3",
                   "driver": "580.159.04", "persistence": 1, "ecc_uncorrected_volatile": 0,
                   "retired_pages_pending": {"unsupported": True}}  # fmt: skip


def test_a_failing_nvidia_smi_keeps_its_exit_status(tmp_path):
    lib = cloud_image_library(tmp_path)
    smi = "echo 'Failed to initialize NVML: Driver/library version mismatch'; exit 18\n"
    state = run_script(cloud_image_tools(tmp_path, lib, **{"nvidia-smi": smi}))
    assert state["nvidia_smi_rc"] == "18" and state["gpus"] == []
    assert state["gpu_errors"] == ["Failed to initialize NVML: Driver/library version mismatch"]


def test_xid_lines_of_the_kernel_log_are_read_once_each(tmp_path):
    line = "NVRM: Xid (PCI:0000:18:00): 79, pid=1911, name=python3, GPU has fallen off the bus."
    journal, ring = f"echo '{line}'\n", f"echo '[ 812.4] {line}'\n"
    tools = fake_tools(tmp_path, without=("journalctl", "dmesg"), journalctl=journal, dmesg=ring)
    (xid,) = run_script(tools)["xids"]
    assert xid == {"pci": "0000:18:00", "code": 79, "line": line}


def test_parse_packages_holds_units_probe_and_flags():
    probe = {"probe": "nvml", "driver": "580.95.05", "cuda_driver": 13000, "gpus": [{"index": 0}]}
    state = parse_driver_state([
        "nvml_version=580.95.05", "module_loaded=580.95.05", "nvml=" + json.dumps(probe),
        "package=nvidia-open-580 580.95.05-1", "held=nvidia-open-580", "init=systemd",
        "unit=nvidia-persistenced enabled active", "nouveau_loaded=yes", "reboot_required=yes",
        "nouveau_blacklist=/etc/modprobe.d/x.conf", "initramfs=update-initramfs -u",
        "library=/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.95.05",
        "library_owner=libnvidia-compute-580", "proc_version=580.95.05", "proc_flavour=open",
    ])  # fmt: skip
    assert state["probe"] == "nvml" and state["gpus"] == [{"index": 0}]
    assert loaded_driver(state) == "580.95.05" and not unmanaged(state)
    assert state["packages"] == {"nvidia-open-580": "580.95.05-1"}
    assert state["held"] == ["nvidia-open-580"]
    assert state["units"]["nvidia-persistenced"] == {"enabled": "enabled", "active": "active"}
    assert state["nouveau_loaded"] and state["reboot_required"]
    assert state["initramfs"] == "update-initramfs -u" and state["proc_flavour"] == "open"


def test_csv_lines_count_only_without_the_probe():
    lines = ["nvml=" + json.dumps({"probe": "nvml", "error": "Unknown Error"}), H100_LINE]
    state = parse_driver_state(lines)
    assert state["probe"] == "nvml" and state["gpus"] == []


def test_nothing_installed_parses_to_empty_state():
    state = parse_driver_state(["unit=nvidia-persistenced missing unknown"])
    assert state["packages"] == {} and state["gpus"] == [] and "nvml_version" not in state
    assert state["probe"] is None and state["xids"] == []
