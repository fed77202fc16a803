"""The STAND-IN GPUs of tests/standins/gpu: the libnvidia-ml.so.1 build and its C ABI (called
through ctypes as pynvml calls it), that it has every NVML symbol pynvml resolves for the
probe, its strict JSON reading, the stand-in nvidia-smi and dmesg, the fault helper and the
sysfs files the lab GPU host mounts."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

from operations.driver import nvml
from operations.driver.facts import GPU_QUERY
from tests.standins import gpu as standin
from tests.standins.gpu import build

SUCCESS, UNINITIALIZED, INVALID_ARGUMENT, NOT_SUPPORTED = 0, 1, 2, 3
INSUFFICIENT_SIZE, DRIVER_NOT_LOADED, UNKNOWN = 7, 9, 999


@pytest.fixture(scope="session")
def library(tmp_path_factory) -> Path:
    return build.build_library(tmp_path_factory.mktemp("standin-gpu"))


@pytest.fixture
def describe(tmp_path, monkeypatch):
    """Writes a description and points the stand-ins at it."""

    def write(description) -> Path:
        path = tmp_path / "gpus.json"
        text = description if isinstance(description, str) else standin.dumps(description)
        path.write_text(text)
        monkeypatch.setenv(standin.ENV, str(path))
        return path

    return write


@pytest.fixture
def nvml_lib(library, describe):
    """The stand-in loaded in this process, initialized on the H100; shut down after."""
    lib = ctypes.CDLL(str(library))
    lib.nvmlErrorString.restype = ctypes.c_char_p
    describe(standin.load("h100"))
    assert lib.nvmlInitWithFlags(0) == SUCCESS
    yield lib
    while lib.nvmlShutdown() == SUCCESS:
        pass


def handle(lib, index=0):
    device = ctypes.c_void_p()
    assert lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(device)) == SUCCESS
    return device


# --- the build


def test_the_build_is_cached_by_source_hash(tmp_path, monkeypatch):
    first = build.build_library(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build.build_library(tmp_path) == first and first.stat().st_mtime_ns == stamp
    source = tmp_path / "copy.c"
    source.write_text(build.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(build, "SOURCE", source)
    assert build.build_library(tmp_path) == first
    assert (tmp_path / build.STAMP).read_text().strip() == build.source_hash()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".libnvidia")] == []


def test_no_gcc_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(build.BuildError, match="gcc is not installed.*STAND-IN"):
        build.build_library(tmp_path)


def test_a_compile_error_names_the_source(tmp_path, monkeypatch):
    source = tmp_path / "bad.c"
    source.write_text("int f(void) { return x; }\n")
    monkeypatch.setattr(build, "SOURCE", source)
    with pytest.raises(build.BuildError, match="gcc failed on .*bad.c"):
        build.build_library(tmp_path / "out")
    assert not (tmp_path / "out" / build.LIBRARY).exists()


def test_the_soname_is_libnvidia_ml_so_1(library):
    if shutil.which("objdump") is None:
        pytest.skip("objdump is not installed")
    done = subprocess.run(["objdump", "-p", str(library)], capture_output=True, text=True)
    assert "SONAME               libnvidia-ml.so.1" in done.stdout


def test_every_symbol_pynvml_resolves_for_the_probe_is_there(tmp_path, library, describe):
    """Runs the probe with pynvml's symbol lookup recorded, on both descriptions: every name
    it asked for must be in the stand-in (a missing one would read as unsupported)."""
    box = tmp_path / "box"
    box.mkdir()
    shutil.copy(pynvml.__file__, box / "pynvml.py")
    shutil.copy(nvml.PROBE, box / "probe.py")
    (box / "trace.py").write_text(
        "import io, json, runpy, sys, contextlib\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import pynvml\n"
        "asked = set()\n"
        "real = pynvml._nvmlGetFunctionPointer\n"
        "def traced(name):\n"
        "    asked.add(name)\n"
        "    return real(name)\n"
        "pynvml._nvmlGetFunctionPointer = traced\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    runpy.run_path(sys.argv[1] + '/probe.py', run_name='__main__')\n"
        "print(json.dumps(sorted(asked)))\n"
    )
    describe(standin.load("h100"))
    env = {**os.environ, "LD_LIBRARY_PATH": str(library.parent)}
    done = subprocess.run([sys.executable, str(box / "trace.py"), str(box)], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    asked = json.loads(done.stdout.splitlines()[-1])
    lib = ctypes.CDLL(str(library))
    assert {"nvmlInitWithFlags", "nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetCount_v2"} <= set(asked)
    assert [name for name in asked if not hasattr(lib, name)] == []


# --- the C ABI, as pynvml calls it


def test_calls_before_init_and_a_second_shutdown_are_uninitialized(library, describe):
    lib = ctypes.CDLL(str(library))
    describe(standin.load("h100"))
    count = ctypes.c_uint()
    assert lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == UNINITIALIZED
    assert lib.nvmlInitWithFlags(0) == SUCCESS and lib.nvmlInit_v2() == SUCCESS  # counted
    assert lib.nvmlShutdown() == SUCCESS
    assert lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == SUCCESS and count.value == 1
    assert lib.nvmlShutdown() == SUCCESS
    assert lib.nvmlShutdown() == UNINITIALIZED
    assert lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == UNINITIALIZED


def test_bad_handles_indexes_enums_and_pointers_are_invalid_arguments(nvml_lib):
    lib, value = nvml_lib, ctypes.c_uint()
    device = ctypes.c_void_p()
    assert lib.nvmlDeviceGetHandleByIndex_v2(1, ctypes.byref(device)) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetHandleByIndex_v2(0, None) == INVALID_ARGUMENT
    good = handle(lib)
    stray = ctypes.c_void_p(good.value + 8)
    assert lib.nvmlDeviceGetPowerUsage(stray, ctypes.byref(value)) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetPowerUsage(None, ctypes.byref(value)) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetPowerUsage(good, None) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetTemperature(good, 1, ctypes.byref(value)) == INVALID_ARGUMENT
    count = ctypes.c_ulonglong()
    assert lib.nvmlDeviceGetTotalEccErrors(good, 2, 0, ctypes.byref(count)) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetTotalEccErrors(good, 1, 2, ctypes.byref(count)) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetTemperatureThreshold(good, 99, ctypes.byref(value)) == INVALID_ARGUMENT


def test_strings_need_room_for_their_nul(nvml_lib):
    lib, device = nvml_lib, handle(nvml_lib)
    name = ctypes.create_string_buffer(21)  # "NVIDIA H100 80GB HBM3" is 21 characters
    assert lib.nvmlDeviceGetName(device, name, 21) == INSUFFICIENT_SIZE
    name = ctypes.create_string_buffer(22)
    assert lib.nvmlDeviceGetName(device, name, 22) == SUCCESS
    assert name.value == b"NVIDIA H100 80GB HBM3"
    version = ctypes.create_string_buffer(80)
    assert lib.nvmlSystemGetDriverVersion(version, 80) == SUCCESS
    assert version.value == b"580.159.04"
    assert lib.nvmlErrorString(3) == b"Not Supported" and lib.nvmlErrorString(12345)


def test_pci_info_v3_has_nvml_layout(nvml_lib):
    info = pynvml.nvmlPciInfo_t()
    assert nvml_lib.nvmlDeviceGetPciInfo_v3(handle(nvml_lib), ctypes.byref(info)) == SUCCESS
    assert info.busId == "00000000:18:00.0" and info.busIdLegacy == "0000:18:00.0"  # decoded
    assert (info.domain, info.bus, info.device) == (0, 0x18, 0)
    assert info.pciDeviceId == 0x233010DE and info.pciSubSystemId == 0x16C110DE


def test_pynvml_structures_fill_through_byref(library, describe):
    """The fabric struct of pynvml, filled when passed by reference (hgx8)."""
    lib = ctypes.CDLL(str(library))
    describe(standin.load("hgx8"))
    assert lib.nvmlInitWithFlags(0) == SUCCESS
    try:
        info = pynvml.c_nvmlGpuFabricInfo_t()
        assert lib.nvmlDeviceGetGpuFabricInfo(handle(lib, 7), ctypes.byref(info)) == SUCCESS
        assert (info.state, info.status, info.cliqueId) == (3, 0, 1)
        active = ctypes.c_uint()
        assert lib.nvmlDeviceGetNvLinkState(handle(lib, 7), 17, ctypes.byref(active)) == SUCCESS
        assert active.value == 1
        assert lib.nvmlDeviceGetNvLinkState(handle(lib, 7), 18, ctypes.byref(active)) == (
            INVALID_ARGUMENT
        )
    finally:
        lib.nvmlShutdown()


def test_a_gpu_without_nvlink_or_fabric_says_not_supported(nvml_lib):
    device, active = handle(nvml_lib), ctypes.c_uint()
    assert nvml_lib.nvmlDeviceGetNvLinkState(device, 0, ctypes.byref(active)) == NOT_SUPPORTED
    info = pynvml.c_nvmlGpuFabricInfo_t()
    assert nvml_lib.nvmlDeviceGetGpuFabricInfo(device, ctypes.byref(info)) == NOT_SUPPORTED
    pending = ctypes.c_uint()
    assert nvml_lib.nvmlDeviceGetRetiredPagesPendingStatus(device, ctypes.byref(pending)) == (
        NOT_SUPPORTED
    )


def test_real_pynvml_reads_it_in_process(library, describe, monkeypatch):
    """pynvml itself, loading the stand-in by name as on a host."""
    describe(standin.with_fault(standin.load("h100"), "thermal_throttle"))
    monkeypatch.setattr(pynvml, "nvmlLib", ctypes.CDLL(str(library)))
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    pynvml.nvmlInit()
    try:
        device = pynvml.nvmlDeviceGetHandleByIndex(0)
        assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(device) == (
            pynvml.nvmlClocksEventReasonHwThermalSlowdown
        )
        assert pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(device) == 0x40
        assert pynvml.nvmlDeviceGetRemappedRows(device) == (0, 0, 0, 0)
        assert (
            pynvml.nvmlDeviceGetTemperatureThreshold(
                device, pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN
            )
            == 92
        )
        with pytest.raises(pynvml.NVMLError_NotSupported):
            pynvml.nvmlDeviceGetRetiredPagesPendingStatus(device)
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            pynvml.nvmlDeviceGetPowerState(device)  # not a call the probe makes
    finally:
        pynvml.nvmlShutdown()


def test_strings_with_escapes_and_unicode_read_back(library, describe):
    description = standin.load("h100")
    description["gpus"][0]["name"] = 'H100 "caf\u00e9" \U0001f600 a\\b'
    describe(json.dumps(description, ensure_ascii=True))  # \u escapes, a surrogate pair
    lib = ctypes.CDLL(str(library))
    assert lib.nvmlInitWithFlags(0) == SUCCESS
    try:
        name = ctypes.create_string_buffer(96)
        assert lib.nvmlDeviceGetName(handle(lib), name, 96) == SUCCESS
        assert name.value.decode() == 'H100 "caf\u00e9" \U0001f600 a\\b'
    finally:
        lib.nvmlShutdown()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"driver": "5", "cuda_driver": 1, "gpus": [{"name": "\\ud800"}]}', "lone high"),
        ('{"driver": "5\\u0000", "cuda_driver": 1, "gpus": []}', "NUL in a string"),
        ('{"driver": "5\n", "cuda_driver": 1, "gpus": []}', "control character"),
        ('{"driver": "5", "cuda_driver": 1, "gpus": []', "expected ',' or '}'"),
        ("[" * 40 + "]" * 40, "nested too deeply"),
        ('{"driver": "5", "cuda_driver": 99999999999999999999, "gpus": []}', "out of range"),
        ('{"driver": "5", "cuda_driver": 01, "gpus": []}', "expected ',' or '}'"),
    ],
)
def test_the_json_reader_is_strict(library, describe, capfd, text, why):
    describe(text)
    lib = ctypes.CDLL(str(library))
    assert lib.nvmlInitWithFlags(0) == UNKNOWN
    assert why in capfd.readouterr().err


def test_no_description_file_is_driver_not_loaded(library, monkeypatch, tmp_path):
    monkeypatch.setenv(standin.ENV, str(tmp_path / "none.json"))
    assert ctypes.CDLL(str(library)).nvmlInitWithFlags(0) == DRIVER_NOT_LOADED


# --- nvidia-smi and dmesg


def smi(*args, check=True):
    done = subprocess.run([str(standin.NVIDIA_SMI), *args], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_nvidia_smi_answers_the_driver_facts_query(describe):
    describe(standin.load("h100"))
    line = smi(f"--query-gpu={GPU_QUERY}", "--format=csv,noheader").stdout.splitlines()
    fields = dict(zip(GPU_QUERY.split(","), line[0].split(", "), strict=True))
    assert len(line) == 1 and fields["index"] == "0"
    assert fields["pci.bus_id"] == "00000000:18:00.0" and fields["driver_version"] == "580.159.04"
    assert fields["name"] == "NVIDIA H100 80GB HBM3" and fields["persistence_mode"] == "Enabled"
    assert fields["ecc.errors.uncorrected.volatile.total"] == "0"
    assert fields["retired_pages.pending"] == "[N/A]"  # as nvidia-smi prints NotSupported


def test_nvidia_smi_shows_faults_and_units(describe):
    sick = standin.with_fault(standin.load("hgx8"), "persistence_off", gpu=2)
    sick = standin.with_fault(sick, "ecc_uncorrected", gpu=2)
    sick = standin.with_fault(sick, "fabric_incomplete", gpu=2)
    describe(sick)
    out = smi("--query-gpu=index,persistence_mode,ecc.errors.uncorrected.volatile.total,"
              "fabric.state,power.draw", "--format=csv", "-i", "1,2").stdout  # fmt: skip
    assert out.splitlines() == [
        "index, persistence_mode, ecc.errors.uncorrected.volatile.total, fabric.state, "
        "power.draw [W]",
        "1, Enabled, 0, Completed, 71.00 W",
        "2, Disabled, 1, Not Started, 71.00 W",
    ]
    nounits = smi("--query-gpu=power.limit", "--format=csv,noheader,nounits", "-i", "0")
    assert nounits.stdout == "700.00\n"
    remap = standin.with_fault(standin.load("h100"), "row_remap_pending")
    describe(remap)
    out = smi("--query-remapped-rows=gpu_bus_id,remapped_rows.pending", "--format=csv,noheader")
    assert out.stdout == "00000000:18:00.0, 1\n"
    throttled = describe(standin.with_fault(standin.load("h100"), "thermal_throttle"))
    assert throttled.exists()
    out = smi("--query-gpu=clocks_event_reasons.hw_thermal_slowdown,clocks_event_reasons.active",
              "--format=csv,noheader")  # fmt: skip
    assert out.stdout == "Active, 0x0000000000000040\n"


def test_nvidia_smi_list_table_and_version(describe):
    describe(standin.load("hgx8"))
    listed = smi("-L").stdout.splitlines()
    assert len(listed) == 8
    uuid = "GPU-5374616e-642d-696e-4831-303000000000"
    assert listed[0] == f"GPU 0: NVIDIA H100 80GB HBM3 (UUID: {uuid})"
    table = smi().stdout
    assert "STAND-IN" in table and "Driver Version: 580.159.04" in table
    assert "CUDA Version: 13.0" in table and "00000000:DB:00.0" in table
    assert "DRIVER version      : 580.159.04" in smi("--version").stdout


def test_nvidia_smi_errors_as_nvidia_smi_does(describe, tmp_path, monkeypatch):
    describe(standin.load("h100"))
    bad = smi("--query-gpu=index,bogus", "--format=csv", check=False)
    assert bad.returncode == 2 and 'Field "bogus" is not a valid field to query.' in bad.stderr
    assert smi("--frobnicate", check=False).returncode == 2
    assert smi("-i", "3", "-L", check=False).returncode == 6
    monkeypatch.setenv(standin.ENV, str(tmp_path / "absent.json"))
    gone = smi("-L", check=False)
    assert gone.returncode == 9 and "couldn't communicate with the NVIDIA driver" in gone.stdout
    describe("{not json")
    broken = smi("-L", check=False)
    assert broken.returncode == 9 and "STAND-IN nvidia-smi" in broken.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="nvidia-smi -pm needs root, as the real one")
def test_nvidia_smi_persistence_mode_rewrites_the_description(describe):
    path = describe(standin.with_fault(standin.load("h100"), "persistence_off"))
    done = smi("-pm", "1")
    assert done.stdout == "Enabled persistence mode for GPU 00000000:18:00.0.\nAll done.\n"
    assert json.loads(path.read_text())["gpus"][0]["persistence"] == 1
    assert json.loads(path.read_text())["gpus"][0]["uuid"].startswith("GPU-")


def test_dmesg_prints_the_kernel_log_and_the_xid_fault(describe, tmp_path, monkeypatch):
    describe(standin.load("hgx8"))
    run = [str(standin.DMESG), "-T"]
    healthy = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert "NVRM: loading NVIDIA UNIX Open Kernel Module" in healthy and "Xid" not in healthy
    describe(standin.with_fault(standin.load("hgx8"), "xid_79", gpu=3))
    sick = subprocess.run(run, capture_output=True, text=True, check=True).stdout.splitlines()
    assert sick[-1].endswith("NVRM: Xid (PCI:0000:5d:00): 79, pid='<unknown>', name=<unknown>, "
                             "GPU has fallen off the bus.")  # fmt: skip
    monkeypatch.setenv(standin.ENV, str(tmp_path / "absent.json"))
    assert subprocess.run(run, capture_output=True, text=True, check=True).stdout == ""


# --- descriptions, faults, sysfs


def test_the_shipped_descriptions_are_the_recorded_h100_and_an_hgx():
    h100, hgx = standin.load("h100"), standin.load("hgx8")
    (gpu,) = h100["gpus"]
    assert (h100["driver"], h100["cuda_driver"]) == ("580.159.04", 13000)
    assert gpu["pci_device_id"] == "0x2330" and gpu["pci_bus_id"] == "00000000:18:00.0"
    assert gpu["persistence"] == 1 and gpu["ecc_mode"] == [1, 1] and gpu["ecc_volatile"] == 0
    assert "retired_pages_pending" in gpu["unsupported"] and gpu["remapped_rows"] == [0, 0, 0, 0]
    assert (gpu["pcie_max_gen"], gpu["pcie_width"]) == (5, 16) and gpu["nvlinks"] == []
    assert "fabric" in gpu["unsupported"] and gpu["mig_mode"] == [0, 0]
    assert len(hgx["gpus"]) == 8 and len({g["pci_bus_id"] for g in hgx["gpus"]}) == 8
    assert all(g["nvlinks"] == [True] * 18 and g["fabric"]["state"] == 3 for g in hgx["gpus"])
    assert [(d["class"], d["device"]) for d in hgx["pci_devices"]] == [("0x068000", "0x22a3")] * 4
    for variant in standin.VARIANTS:  # the files are as dumps() writes them
        assert (standin.HERE / f"{variant}.json").read_text() == standin.dumps(
            standin.load(variant)
        )


def test_every_fault_changes_the_description_and_bad_names_are_refused():
    for variant in standin.VARIANTS:
        healthy = standin.load(variant)
        for fault in standin.faults_for(healthy):
            assert standin.with_fault(healthy, fault) != healthy
        assert healthy == standin.load(variant)  # copies, never the input
    assert standin.faults_for(standin.load("hgx8")) == standin.FAULTS
    assert set(standin.FAULTS) - set(standin.faults_for(standin.load("h100"))) == {
        "nvlink_down", "fabric_incomplete",
    }  # fmt: skip
    with pytest.raises(ValueError, match="no fault"):
        standin.with_fault(standin.load("h100"), "gpu_on_fire")
    with pytest.raises(ValueError, match="hgx8"):
        standin.with_fault(standin.load("h100"), "nvlink_down")
    with pytest.raises(ValueError, match="h100"):
        standin.load("a100")


def test_sysfs_files_carry_the_pci_ids_and_the_module_version():
    files = standin.sysfs_files(standin.load("h100"))
    assert files == {
        "module/nvidia/version": "580.159.04\n",
        "bus/pci/devices/0000:18:00.0/vendor": "0x10de\n",
        "bus/pci/devices/0000:18:00.0/class": "0x030200\n",
        "bus/pci/devices/0000:18:00.0/device": "0x2330\n",
    }
    hgx = standin.sysfs_files(standin.load("hgx8"))
    assert sum(path.endswith("/vendor") for path in hgx) == 12  # 8 GPUs, 4 NVSwitches
    assert hgx["bus/pci/devices/0000:db:00.0/device"] == "0x2330\n"
    assert hgx["bus/pci/devices/0000:08:00.0/class"] == "0x068000\n"
    missing = standin.sysfs_files(standin.with_fault(standin.load("hgx8"), "gpu_missing"))
    assert missing.keys() == hgx.keys()  # still on the PCI bus, gone from NVML
    other = standin.with_fault(standin.load("h100"), "driver_branch")
    assert standin.sysfs_files(other)["module/nvidia/version"] == "570.195.03\n"
    assert "570.195.03" in standin.proc_version(other)


def test_every_standin_file_says_it_is_one():
    for path in standin.HERE.iterdir():
        if path.is_file() and path.suffix != ".pyc":
            assert "STAND-IN" in path.read_text(), path


# --- the lab's GPU host (lab/gpu.py): what it installs and mounts, without Docker


def test_the_lab_payload_installs_the_standins_as_a_cloud_image_does(library):
    import io
    import tarfile

    from lab import gpu as lab_gpu

    description = standin.with_fault(standin.load("h100"), "driver_branch")
    with tarfile.open(fileobj=io.BytesIO(lab_gpu.payload(library, description))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        lib = "usr/local/nvidia/lib64/libnvidia-ml.so.570.195.03"
        assert members[lib].mode == 0o755 and members[lib].size == library.stat().st_size
        assert members["usr/local/nvidia/lib64/libnvidia-ml.so.1"].linkname == (
            "libnvidia-ml.so.570.195.03"
        )
        assert members["usr/local/bin/nvidia-smi"].linkname == "/usr/local/nvidia/bin/nvidia-smi"
        assert members["usr/local/bin/dmesg"].mode == 0o755
        conf = tar.extractfile("etc/ld.so.conf.d/gpufleet-standin-nvidia.conf").read().decode()
        assert "STAND-IN" in conf and "/usr/local/nvidia/lib64\n" in conf
        shipped = json.loads(tar.extractfile("etc/gpufleet-standin/gpus.json").read())
        assert shipped == description
        unit = tar.extractfile("etc/systemd/system/gpufleet-standin.service").read().decode()
        assert "mount --bind /opt/gpufleet-standin/proc-driver /proc/driver" in unit
        # the /proc source is docker's read-only mount point: never in the tar (lchown fails)
        assert "opt/gpufleet-standin/proc-driver" not in members


def test_only_the_nvswitch_host_ships_a_stand_in_fabric_manager_unit(library):
    import io
    import tarfile

    from lab import gpu as lab_gpu

    unit = f"etc/systemd/system/{lab_gpu.FABRIC_MANAGER}"
    for variant, has_unit in (("hgx8", True), ("h100", False)):
        payload = lab_gpu.payload(library, standin.load(variant))
        with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
            assert (unit in tar.getnames()) is has_unit, variant
            if has_unit:
                text = tar.extractfile(unit).read().decode()
                assert "STAND-IN" in text and "ExecStart=/bin/sleep infinity" in text


def test_the_lab_trees_follow_the_description_in_place(tmp_path):
    from lab import gpu as lab_gpu

    base = lab_gpu.write_tree(tmp_path, "hgx8", standin.load("hgx8"))
    devices = base / "sys/bus/pci/devices"
    mounted = devices.stat().st_ino
    assert len(list(devices.iterdir())) == 12
    assert (base / "sys/module/nvidia/version").read_text() == "580.159.04\n"
    smaller = standin.load("hgx8")
    smaller["pci_devices"] = []
    lab_gpu.write_tree(tmp_path, "hgx8", standin.with_fault(smaller, "driver_branch"))
    assert len(list(devices.iterdir())) == 8 and devices.stat().st_ino == mounted
    assert "570.195.03" in (base / "proc/driver/nvidia/version").read_text()
    assert all(arg.endswith(":ro") for arg in lab_gpu.mounts(tmp_path, "h100")[1::2])


def test_the_lab_gpu_inventory_says_gpus_and_a_preinstalled_driver(tmp_path, monkeypatch):
    from lab import gpu as lab_gpu

    (tmp_path / ".lab/gpu").mkdir(parents=True)
    (tmp_path / ".lab/gpu/state.json").write_text(json.dumps({
        "hosts": [{"name": "lab-gpu-hgx8", "container": "gpufleet-lab-gpu-hgx8", "port": 3222,
                   "variant": "hgx8", "address": "172.17.0.9"}],
        "ssh_key": "/k", "known_hosts": "/kh",
    }))  # fmt: skip
    ((name, data),) = lab_gpu.inventory_hosts(tmp_path)
    assert name == "lab-gpu-hgx8" and data["ssh_port"] == 3222
    assert data["ssh_known_hosts_file"] == "/kh" and data["ssh_key"] == "/k"
    assert (data["host_has_gpus"], data["host_gpu_count"]) == (True, 8)
    assert (data["driver_source"], data["driver_branch"]) == ("preinstalled", "580")
    assert data["host_address"] == "172.17.0.9"
    (tmp_path / ".lab/gpu/state.json").unlink()
    with pytest.raises(lab_gpu.LabError, match="lab gpu up"):
        lab_gpu.inventory_hosts(tmp_path)
