"""Plan tests of the driver layer: given a host's facts, exactly what is planned."""

from __future__ import annotations

import logging
import shlex

import pytest

from tests.plan.harness import FakeFleet

H100 = "pci=0000:1b:00.0 0x030200 0x2330"
V100 = "pci=0000:1b:00.0 0x030200 0x1db4"
B200 = "pci=0000:1b:00.0 0x030200 0x2901"
DEBIAN_SOURCES = [
    "@@gpufleet-file@@ /etc/apt/sources.list.d/debian.sources",
    "Types: deb",
    "URIs: http://mirror.example/debian",
    "Suites: bookworm bookworm-updates",
    "Components: main",
]


def profile(os_id="debian", version="12", codename="bookworm", gpus=(H100,), sb="disabled"):
    return [
        f"os_id={os_id}", f"os_version={version}", f"os_codename={codename}", "arch=x86_64",
        "kernel=6.1.0-28-amd64", *gpus, f"secure_boot={sb}", f"disk_free_kib={200 * 1024**2}",
    ]  # fmt: skip


def host(profile_lines, driver_lines=(), sources=DEBIAN_SOURCES, dpkg=(), rpm=(), **settings):
    """A fake host: preflight profile, DriverState, apt sources, dpkg -l and rpm -qa answers."""
    return {
        "fake_responses": {
            "os-release": profile_lines,
            "libnvidia-ml.so.1": list(driver_lines),
            "@@gpufleet-file@@": list(sources),
            "dpkg -l": list(dpkg),
            "rpm --queryformat": list(rpm),
        },
        "deploy_layers": "driver",
        **settings,
    }


def plan_of(tmp_path, **host_kwargs) -> list[tuple[str, list[str]]]:
    return FakeFleet(tmp_path, {"h": host(**host_kwargs)}).plan()["h"]


def names(planned) -> list[str]:
    return [name.removeprefix("NVIDIA driver | ") for name, _ in planned]


def test_fresh_debian_host_gets_components_packages_hold_blacklist_and_reboot(tmp_path):
    planned = plan_of(tmp_path, profile_lines=profile(), driver_source="distro",
                      driver_branch="535")  # fmt: skip
    assert names(planned) == [
        "Enable contrib non-free non-free-firmware in /etc/apt/sources.list.d/debian.sources",
        "Update apt lists for the driver's sources [if changed]",
        "Install the NVIDIA driver",
        "Hold the NVIDIA driver packages [if changed]",
        "Blacklist nouveau",
        "nvidia-persistenced",
        "Reboot to load the installed driver",
        "Check the loaded driver is the installed one",
    ]
    commands = dict(planned)
    (install,) = commands["NVIDIA driver | Install the NVIDIA driver"]
    assert install.endswith(
        "install --no-install-recommends linux-headers-6.1.0-28-amd64 nvidia-driver "
        "nvidia-smi nvidia-persistenced"
    )
    (hold,) = commands["NVIDIA driver | Hold the NVIDIA driver packages [if changed]"]
    assert hold.startswith("apt-mark hold $(dpkg-query")


CONVERGED_DEBIAN = [
    "nvml_version=535.309.01", "module_loaded=535.309.01",
    "nouveau_blacklist=/etc/modprobe.d/gpufleet-blacklist-nouveau.conf",
    "package=nvidia-driver 535.309.01-0+deb12u1", "held=nvidia-driver",
    "package=nvidia-smi 535.309.01-0+deb12u1", "held=nvidia-smi",
    "unit=nvidia-persistenced enabled active",
]  # fmt: skip


def test_converged_debian_host_plans_no_command(tmp_path):
    sources = [*DEBIAN_SOURCES[:-1], "Components: main contrib non-free non-free-firmware"]
    dpkg = [f"ii  {p}  535.309.01-0+deb12u1  amd64  x" for p in
            ("nvidia-driver", "nvidia-smi", "nvidia-persistenced")]  # fmt: skip
    planned = plan_of(tmp_path, profile_lines=profile(), driver_lines=CONVERGED_DEBIAN,
                      sources=sources, dpkg=dpkg, driver_source="distro", driver_branch="535",
                      driver_kernel_headers=False)  # fmt: skip
    commands = {name.removeprefix("NVIDIA driver | "): c for name, c in planned}
    assert "Install the NVIDIA driver" not in commands  # dpkg says all are installed
    assert "Hold the NVIDIA driver packages [if changed]" in commands  # all held already
    assert not [name for name in commands if name.startswith(("Enable", "Update"))]
    # the module loaded is the driver installed: reboot only if the install changes it
    assert "Reboot to load the installed driver [if changed]" in commands
    assert "Reboot to load the installed driver" not in commands


@pytest.mark.parametrize(
    ("version", "gpu", "modules", "package"),
    [
        ("22.04", H100, "auto", "nvidia-driver-580-server-open"),
        ("24.04", H100, "proprietary", "nvidia-driver-580-server"),
        ("24.04", V100, "auto", "nvidia-driver-580-server"),
        ("22.04", B200, "open", "nvidia-driver-580-server-open"),
    ],
)
def test_ubuntu_distro_package_follows_branch_and_module_flavour(
    tmp_path, version, gpu, modules, package
):
    ubuntu = profile("ubuntu", version, "jammy", (gpu,))
    planned = plan_of(tmp_path, profile_lines=ubuntu, sources=(), driver_source="distro",
                      driver_kernel_modules=modules)  # fmt: skip
    assert "Enable" not in " ".join(names(planned))  # Ubuntu needs no extra components
    install = dict(planned)["NVIDIA driver | Install the NVIDIA driver"]
    assert any(c.endswith(f"linux-headers-6.1.0-28-amd64 {package}") for c in install), install


def driver_failure(planned) -> str:
    """The message of the single failing operation planned for the host."""
    ((name, (command,)),) = planned
    assert name == "NVIDIA driver | Driver failed" and command.endswith("exit 1")
    return shlex.split(command)[2]  # printf '%s\n' MESSAGE >&2


def test_debian_archive_has_no_580_branch(tmp_path):
    planned = plan_of(tmp_path, profile_lines=profile(), driver_source="distro")
    assert driver_failure(planned) == (
        "driver: driver_branch 580 is not in debian 12's archive (it has 535); "
        "use driver_source = cuda-repo"
    )


def test_secure_boot_with_unsigned_dkms_modules_is_refused_with_the_fix(tmp_path):
    planned = plan_of(tmp_path, profile_lines=profile(sb="enabled"), driver_source="distro",
                      driver_branch="535")  # fmt: skip
    failure = driver_failure(planned)
    assert "Secure Boot is enabled" in failure and "mokutil --import" in failure


def test_blackwell_with_proprietary_modules_is_refused(tmp_path):
    ubuntu = profile("ubuntu", "24.04", "noble", (B200,))
    planned = plan_of(tmp_path, profile_lines=ubuntu, sources=(), driver_source="distro",
                      driver_kernel_modules="proprietary")  # fmt: skip
    assert "proprietary kernel modules cannot drive Blackwell GPUs: use open" in driver_failure(
        planned
    )


def test_no_reboot_when_not_allowed_only_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pyinfra")
    planned = plan_of(tmp_path, profile_lines=profile(), driver_source="distro",
                      driver_branch="535", driver_allow_reboot=False)  # fmt: skip
    assert "Reboot to load the installed driver" not in names(planned)
    assert "driver: reboot needed, not allowed by config" in caplog.text


def test_gpu_less_host_never_reboots(tmp_path):
    planned = plan_of(tmp_path, profile_lines=profile(gpus=()), driver_source="distro",
                      driver_branch="535", host_has_gpus=False)  # fmt: skip
    assert "Reboot to load the installed driver" not in names(planned)
    assert "Install the NVIDIA driver" in names(planned)


def test_rocky_has_no_driver_of_its_own(tmp_path):
    planned = plan_of(tmp_path, profile_lines=profile("rocky", "9.4"), driver_source="distro")
    assert driver_failure(planned) == (
        "driver: rocky 9.4 has no NVIDIA driver packages of its own: use driver_source = cuda-repo"
    )


CUDA = "https://developer.download.nvidia.com/compute/cuda/repos"


@pytest.mark.parametrize(
    ("os_id", "version", "codename", "os_dir", "gpu", "package"),
    [
        ("ubuntu", "22.04", "jammy", "ubuntu2204", H100, "nvidia-open-580"),
        ("ubuntu", "24.04", "noble", "ubuntu2404", V100, "cuda-drivers-580"),
        ("debian", "12", "bookworm", "debian12", H100, "nvidia-open"),
    ],
)
def test_cuda_repo_key_checked_then_repo_pin_and_package(
    tmp_path, os_id, version, codename, os_dir, gpu, package
):
    lines = profile(os_id, version, codename, (gpu,))
    planned = plan_of(tmp_path, profile_lines=lines, sources=())
    assert names(planned)[:6] == [
        "Add the NVIDIA CUDA repository key",
        "Check the NVIDIA CUDA repository key's fingerprint [if changed]",
        "Add the NVIDIA CUDA repository",
        "Pin the driver branch",
        "Update apt lists for the driver's sources [if changed]",
        "Install the NVIDIA driver",
    ]
    commands = {name.removeprefix("NVIDIA driver | "): c for name, c in planned}
    key = " ".join(commands["Add the NVIDIA CUDA repository key"])
    assert f"{CUDA}/{os_dir}/x86_64/3bf863cc.pub" in key
    (check,) = commands["Check the NVIDIA CUDA repository key's fingerprint [if changed]"]
    assert '[ "$fpr" = EB693B3035CD5710E231E123A4B469963BF863CC ]' in check
    assert "rm -f /etc/apt/keyrings/nvidia-cuda.gpg" in check
    source = f"deb [signed-by=/etc/apt/keyrings/nvidia-cuda.gpg] {CUDA}/{os_dir}/x86_64/ /"
    assert any(source in c for c in commands["Add the NVIDIA CUDA repository"])
    (_, upload, _) = commands["Pin the driver branch"]
    assert "Pin: version 580.*\nPin-Priority: 1001" in upload
    (install,) = commands["Install the NVIDIA driver"]
    assert install.endswith(
        f"install --no-install-recommends linux-headers-6.1.0-28-amd64 {package}"
    )


def test_cuda_repo_mirror_url_exact_version_and_own_fingerprint(tmp_path):
    fingerprint = "0123 4567 89AB CDEF 0123 4567 89AB CDEF 0123 4567"
    planned = plan_of(
        tmp_path, profile_lines=profile("ubuntu", "24.04", "noble"), sources=(),
        driver_cuda_repo_url="https://mirror.internal/cuda/", driver_version="580.95.05",
        driver_cuda_repo_fingerprint=fingerprint,
    )  # fmt: skip
    commands = {name.removeprefix("NVIDIA driver | "): c for name, c in planned}
    assert "https://mirror.internal/cuda/ubuntu2404/x86_64/3bf863cc.pub" in " ".join(
        commands["Add the NVIDIA CUDA repository key"]
    )
    (check,) = commands["Check the NVIDIA CUDA repository key's fingerprint [if changed]"]
    assert "= 0123456789ABCDEF0123456789ABCDEF01234567 ]" in check
    (_, upload, _) = commands["Pin the driver branch"]
    assert "Pin: version 580.95.05-*" in upload


def test_nvswitch_host_gets_the_fabric_manager_of_the_branch(tmp_path):
    nvswitch = "pci=0000:05:00.0 0x068000 0x22a3"
    lines = profile("ubuntu", "22.04", "jammy", (H100, nvswitch))
    planned = plan_of(tmp_path, profile_lines=lines, sources=())
    commands = {name.removeprefix("NVIDIA driver | "): c for name, c in planned}
    (install,) = commands["Install the NVIDIA driver"]
    assert install.endswith("nvidia-open-580 nvidia-fabricmanager-580")
    assert "systemctl enable nvidia-fabricmanager.service" in commands["nvidia-fabricmanager"]


def test_fabric_manager_forced_on_debian_archive_is_refused(tmp_path):
    planned = plan_of(tmp_path, profile_lines=profile(), driver_source="distro",
                      driver_branch="535", driver_fabric_manager="enabled")  # fmt: skip
    assert "no fabric manager package for debian 12 from driver_source distro" in driver_failure(
        planned
    )


def test_branch_change_unholds_upgrades_holds_again_and_reboots(tmp_path):
    installed_570 = ["nvml_version=570.133.20", "module_loaded=570.133.20",
                     "package=nvidia-open-570 570.133.20-1", "held=nvidia-open-570"]  # fmt: skip
    lines = profile("ubuntu", "22.04", "jammy")
    planned = plan_of(tmp_path, profile_lines=lines, driver_lines=installed_570, sources=())
    commands = {name.removeprefix("NVIDIA driver | "): c for name, c in planned}
    order = names(planned)
    release = "Release the driver packages held at 570.133.20"
    upgrade = "Upgrade the NVIDIA driver from 570.133.20"
    assert (
        order.index(release)
        < order.index(upgrade)
        < order.index("Hold the NVIDIA driver packages [if changed]")
        < order.index("Reboot to load the installed driver [if changed]")
    )
    assert commands[release][0].startswith("apt-mark unhold $(dpkg-query")
    (command,) = commands[upgrade]
    assert command.endswith(
        "apt-get -y --allow-downgrades --no-install-recommends install "
        "linux-headers-6.1.0-28-amd64 nvidia-open-580"
    )
    (_, pin, _) = commands["Pin the driver branch"]
    assert "Pin: version 580.*" in pin


def test_same_branch_installed_is_not_an_upgrade(tmp_path):
    installed = ["nvml_version=580.95.05", "module_loaded=580.95.05"]
    lines = profile("ubuntu", "22.04", "jammy")
    planned = plan_of(tmp_path, profile_lines=lines, driver_lines=installed, sources=())
    assert not [n for n in names(planned) if n.startswith(("Release", "Upgrade"))]


RPM_CUDA = f"{CUDA}/rhel9/x86_64"


@pytest.mark.parametrize(
    ("gpu", "stream", "package"),
    [(H100, "580-open", "nvidia-open"), (V100, "580-dkms", "cuda-drivers")],
)
def test_rocky_cuda_repo_key_repo_stream_packages_lock(tmp_path, gpu, stream, package):
    planned = plan_of(tmp_path, profile_lines=profile("rocky", "9.4", "", (gpu,)), sources=())
    assert names(planned)[:6] == [
        "Import the NVIDIA CUDA repository key, fingerprint checked",
        "Add the NVIDIA CUDA repository",
        "Pin the driver branch (module stream)",
        "Install the NVIDIA driver",
        "Install the dnf versionlock plugin",
        "Lock the NVIDIA driver packages [if changed]",
    ]
    commands = {name.removeprefix("NVIDIA driver | "): c for name, c in planned}
    fetch, check, trust = commands["Import the NVIDIA CUDA repository key, fingerprint checked"]
    assert (
        fetch == f"curl -fsSL -o /etc/pki/rpm-gpg/RPM-GPG-KEY-nvidia-cuda {RPM_CUDA}/D42D0685.pub"
    )
    assert "= 610C7B14E068A878070DA4E99CD0A493D42D0685 ]" in check
    assert trust == "rpm --import /etc/pki/rpm-gpg/RPM-GPG-KEY-nvidia-cuda"
    repo = " ".join(commands["Add the NVIDIA CUDA repository"])
    assert f"baseurl={RPM_CUDA}/" in repo and "gpgcheck=1" in repo
    assert commands["Pin the driver branch (module stream)"] == [
        f"dnf module enable -y nvidia-driver:{stream}"
    ]
    (install,) = commands["Install the NVIDIA driver"]
    assert install.endswith(
        f"install -y kernel-devel-6.1.0-28-amd64 kernel-headers-6.1.0-28-amd64 {package}"
    )


def test_rocky_with_key_already_imported_does_not_fetch_it_again(tmp_path):
    planned = plan_of(tmp_path, profile_lines=profile("rocky", "9.4", ""), sources=(),
                      rpm=["gpg-pubkey d42d0685-5e6fa3b1"])  # fmt: skip
    assert "Import the NVIDIA CUDA repository key, fingerprint checked" not in names(planned)


def test_rocky_branch_change_is_refused_not_half_done(tmp_path):
    planned = plan_of(tmp_path, profile_lines=profile("rocky", "9.4", ""), sources=(),
                      driver_lines=["nvml_version=570.133.20"])  # fmt: skip
    assert "changing the branch on EL (dnf module reset) is not automated yet" in driver_failure(
        planned
    )
