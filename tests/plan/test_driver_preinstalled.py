"""Plan tests of the driver layer on GPU hosts as cloud images ship them (issue 16): a driver
installed outside the package manager (libraries under /usr/local/nvidia, no package owns
them), often no systemd as PID 1. driver_source = "preinstalled" adopts it and installs
nothing; the other sources refuse it before any change; hosts without systemd get no unit
steps; GPU-less hosts get no GPU daemons enabled."""

from __future__ import annotations

import json

from operations.kit.converged import MARK
from tests.plan.harness import FakeFleet
from tests.plan.test_driver_plan import H100, host, names, plan_of, profile

UBUNTU = profile("ubuntu", "24.04", "noble", (H100,))
GPU = {"index": 0, "pci_bus_id": "00000000:18:00.0", "persistence": 1}
PROBE = {"probe": "nvml", "driver": "580.159.04", "cuda_driver": 13000, "gpus": [GPU]}


def cloud_driver(*extra: str, probe: dict = PROBE, init: str = "other") -> list[str]:
    """DriverState of the recorded H100 cloud host: open module 580.159.04 loaded, its
    libraries under /usr/local/nvidia owned by no package."""
    return [
        "nvml_version=580.159.04",
        "library=/usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04",
        "library_owner=none", "module_loaded=580.159.04", "proc_version=580.159.04",
        "proc_flavour=open", f"init={init}", "nvml=" + json.dumps(probe),
        "nouveau_blacklist=/etc/modprobe.d/gpufleet-blacklist-nouveau.conf", *extra,
    ]  # fmt: skip


def commands_of(planned) -> str:
    return "\n".join(" ".join(commands) for _, commands in planned)


def test_preinstalled_adopts_the_cloud_driver_and_installs_nothing(tmp_path):
    planned = plan_of(tmp_path, profile_lines=UBUNTU, sources=(), driver_lines=cloud_driver(),
                      driver_source="preinstalled")  # fmt: skip
    steps = names(planned)
    assert not [s for s in steps if s.startswith(("Install", "Upgrade", "Reboot", "Driver failed"))]
    assert not [s for s in steps if "nvidia-persistenced" in s]  # no systemd: no unit steps
    assert "apt" not in commands_of(planned)


def test_preinstalled_at_another_branch_fails_the_host_naming_both(tmp_path):
    probe = PROBE | {"driver": "570.172.08"}
    lines = [line.replace("580.159.04", "570.172.08") for line in cloud_driver(probe=probe)]
    planned = plan_of(tmp_path, profile_lines=UBUNTU, sources=(), driver_lines=lines,
                      driver_source="preinstalled", driver_branch="580")  # fmt: skip
    assert names(planned) == ["Driver failed"]
    assert "the preinstalled driver is 570.172.08, not driver_branch 580" in commands_of(planned)


def test_preinstalled_with_no_driver_at_all_fails_the_host(tmp_path):
    planned = plan_of(tmp_path, profile_lines=UBUNTU, sources=(), driver_lines=["init=systemd"],
                      driver_source="preinstalled")  # fmt: skip
    assert names(planned) == ["Driver failed"]
    assert "no NVIDIA driver is installed or loaded here" in commands_of(planned)


def test_a_package_source_refuses_a_driver_no_package_owns_before_any_change(tmp_path):
    for source in ("cuda-repo", "distro"):
        (tmp_path / source).mkdir()
        planned = plan_of(tmp_path / source, profile_lines=UBUNTU, sources=(),
                          driver_lines=cloud_driver(), driver_source=source)  # fmt: skip
        assert names(planned) == ["Driver failed"], source
        text = commands_of(planned)
        assert "belongs to no package" in text and 'driver_source = "preinstalled"' in text


def test_persistence_off_without_a_unit_is_turned_on_through_nvml(tmp_path):
    probe = PROBE | {"gpus": [GPU | {"persistence": 0}]}
    for init in ("other", "systemd"):  # no systemd; systemd but no nvidia-persistenced unit
        lines = cloud_driver("unit=nvidia-persistenced missing unknown", probe=probe, init=init)
        (tmp_path / init).mkdir()
        planned = plan_of(tmp_path / init, profile_lines=UBUNTU, sources=(), driver_lines=lines,
                          driver_source="preinstalled")  # fmt: skip
        assert "Turn GPU persistence mode on" in names(planned), init
        assert "nvidia-smi -pm 1" in commands_of(planned)


def test_persistence_already_on_plans_nothing_for_it(tmp_path):
    planned = plan_of(tmp_path, profile_lines=UBUNTU, sources=(), driver_lines=cloud_driver(),
                      driver_source="preinstalled")  # fmt: skip
    assert "Turn GPU persistence mode on" not in names(planned)


def test_preinstalled_with_a_unit_keeps_it_enabled_and_running(tmp_path):
    lines = cloud_driver("unit=nvidia-persistenced disabled inactive", init="systemd")
    planned = plan_of(tmp_path, profile_lines=UBUNTU, sources=(), driver_lines=lines,
                      driver_source="preinstalled")  # fmt: skip
    assert "nvidia-persistenced" in names(planned)
    assert "systemctl enable nvidia-persistenced" in commands_of(planned)


def test_preinstalled_holds_the_driver_packages_there_are(tmp_path):
    owned = [
        "nvml_version=580.95.05", "library_owner=libnvidia-compute-580", "init=systemd",
        "module_loaded=580.95.05", "package=nvidia-driver-580-server 580.95.05-0ubuntu1",
        "unit=nvidia-persistenced enabled active",
    ]  # fmt: skip
    planned = plan_of(tmp_path, profile_lines=UBUNTU, sources=(), driver_lines=owned,
                      driver_source="preinstalled")  # fmt: skip
    steps = names(planned)
    assert "Hold the NVIDIA driver packages" in steps
    assert not [s for s in steps if s.startswith(("Install", "Upgrade", "Reboot"))]


def test_a_host_without_systemd_gets_no_unit_steps_from_a_package_source(tmp_path):
    lines = ["nvml_version=580.95.05", "library_owner=libnvidia-compute-580", "init=other",
             "module_loaded=580.95.05"]  # fmt: skip
    planned = plan_of(tmp_path, profile_lines=UBUNTU, sources=(), driver_lines=lines,
                      driver_source="distro")  # fmt: skip
    assert "Install the NVIDIA driver" in names(planned)
    assert not [s for s in names(planned) if s.startswith("nvidia-")]


def test_a_gpu_less_host_gets_no_gpu_daemon_enabled(tmp_path):
    """The lab's GPU-less hosts: nvidia-persistenced, enabled there, fails at every start
    (systemd says degraded); the deploy disables it rather than enabling it."""
    data = host(profile(gpus=()), ["init=systemd", "unit=nvidia-persistenced enabled failed"],
                driver_source="distro", driver_branch="535", host_has_gpus=False)  # fmt: skip
    data["fake_responses"][MARK] = [
        f"{MARK}\tunit\tId=nvidia-persistenced.service", f"{MARK}\tunit\tSubState=failed",
        f"{MARK}\tunit\tUnitFileState=enabled",
    ]  # fmt: skip
    unit = "Id=nvidia-persistenced.service"  # pyinfra's own systemd facts
    data["fake_responses"]["--property SubState"] = [unit, "SubState=failed"]
    data["fake_responses"]["--property UnitFileState"] = [unit, "UnitFileState=enabled"]
    planned = FakeFleet(tmp_path, {"h": data}).plan()["h"]
    text = commands_of(planned)
    assert "systemctl enable nvidia-persistenced" not in text
    assert "systemctl disable nvidia-persistenced" in text
    assert "systemctl reset-failed nvidia-persistenced" in text  # systemd no longer degraded


def test_a_gpu_daemon_installed_by_this_run_on_a_gpu_less_host_is_disabled_in_the_same_run(
    tmp_path,
):
    """The unit is not there when the facts are read: the driver packages install it, and
    their own postinst enables and starts it (it fails: no GPU). pyinfra's service operation,
    planned on the unit's absence, does nothing, so this run disables it; without that, the
    second deploy of a fresh lab host disabled it (a change on a converged host, seen on the
    lab)."""
    data = host(profile(gpus=()), ["init=systemd", "unit=nvidia-persistenced missing unknown"],
                driver_source="distro", driver_branch="535", host_has_gpus=False)  # fmt: skip
    planned = FakeFleet(tmp_path, {"h": data}).plan()["h"]
    text = commands_of(planned)
    assert "Install the NVIDIA driver" in names(planned)
    assert "systemctl enable nvidia-persistenced" not in text
    assert "systemctl disable --now nvidia-persistenced" in text
    assert text.index("systemctl disable --now nvidia-persistenced") > text.index("nvidia-driver")
    assert "systemctl reset-failed nvidia-persistenced" in text


def test_a_gpu_daemon_missing_with_nothing_to_install_gets_no_step(tmp_path):
    """The driver packages are all installed and the unit is still not there (a package set
    without it): nothing installs it in this run, so nothing is planned for it, on this run
    or the next."""
    dpkg = [f"ii  {p}  535.309.01-0+deb12u1  amd64  x" for p in
            ("nvidia-driver", "nvidia-smi", "nvidia-persistenced")]  # fmt: skip
    data = host(profile(gpus=()), ["init=systemd", "unit=nvidia-persistenced missing unknown"],
                dpkg=dpkg, driver_source="distro", driver_branch="535", host_has_gpus=False,
                driver_kernel_headers=False)  # fmt: skip
    planned = FakeFleet(tmp_path, {"h": data}).plan()["h"]
    assert "Install the NVIDIA driver" not in names(planned)  # dpkg says all are installed
    assert "nvidia-persistenced" not in commands_of(planned)
