"""Layer 1: the NVIDIA driver, pinned to a branch and held so upgrades cannot move it.

Built (issue #3): on Ubuntu 22.04/24.04 and Debian 12, from NVIDIA's CUDA repository
(key fetched and its fingerprint checked before any source entry trusts it, an apt
preferences pin on the branch or exact version, ``cuda-drivers-<branch>`` or the open
metapackage) or from the distribution (Debian's non-free ``nvidia-driver`` 535, with
``contrib non-free non-free-firmware`` added to the host's own sources; Ubuntu's
``nvidia-driver-<branch>-server[-open]``). Then: headers for the running kernel, the fabric
manager of the branch on NVSwitch systems, every driver package held (``apt-mark hold``),
nouveau blacklisted (initramfs regenerated when that changed), nvidia-persistenced enabled,
and a reboot when no module, or not the installed one, is loaded. Refused per host: a branch
the source lacks, Secure Boot with unsigned DKMS modules, proprietary modules on Blackwell.
On Rocky/RHEL 9 (NVIDIA's dnf repository only): the key is fetched, its fingerprint checked,
then imported; the ``nvidia-driver:<branch>-open|-dkms`` module stream pins the branch; the
packages are versionlocked. Changing the branch there is refused (not automated yet).

Every OS difference lives in ``PLATFORMS``; the operations below read it and branch nowhere
else on the OS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import apt, dnf, files, server

from operations.config.model import DriverConfig, FleetConfig
from operations.driver.facts import (
    APT_DRIVER_GLOBS,
    EL_DRIVER_GLOBS,
    INSTALLED_VERSION_SH,
    NOT_DRIVER_RE,
    DriverState,
    installed_apt_packages,
    loaded_driver,
    shell_globs,
    unmanaged,
)
from operations.kit import converged
from operations.kit.apt_sources import AptSourceFiles, with_components
from operations.kit.common import fail_host
from operations.kit.packages import apt_move, signed_apt_repo, signed_dnf_repo
from operations.kit.quoting import apt_field, package
from operations.platform import family_of, platform_key

NOUVEAU_CONF = converged.managed("/etc/modprobe.d/gpufleet-blacklist-nouveau.conf")
NOUVEAU_TEXT = "# Written by gpufleet: the NVIDIA driver needs nouveau out of the way.\n" + (
    "blacklist nouveau\noptions nouveau modeset=0\n"
)
LOADED_IS_INSTALLED = (
    f"loaded=$(cat /sys/module/nvidia/version 2>/dev/null); {INSTALLED_VERSION_SH}; "
    'test -n "$loaded" && test "$loaded" = "$installed" || '
    '{ echo "loaded nvidia module ${loaded:-none}, installed driver $installed" >&2; exit 1; }'
)
# What DriverState's initramfs= line may name: the host's tool, run as this command.
INITRAMFS = {"update-initramfs -u": "update-initramfs -u", "dracut -f": "dracut -f"}
# First PCI device id of Turing (open modules supported from here) and of Blackwell (required).
TURING_FIRST, BLACKWELL_FIRST = 0x1E00, 0x2900


INSTALLED_DRIVER_PACKAGES = installed_apt_packages("$2")  # their names
NVIDIA_CUDA_REPOS = "https://developer.download.nvidia.com/compute/cuda/repos"
CUDA_ARCH = {"x86_64": "x86_64", "aarch64": "sbsa"}  # NVIDIA's repository arch directories
CUDA_KEYRING = "/etc/apt/keyrings/nvidia-cuda.gpg"
PERSISTENCED = converged.managed_unit("nvidia-persistenced")
FABRIC_MANAGER = converged.managed_unit("nvidia-fabricmanager")
PIN_FILE = converged.managed("/etc/apt/preferences.d/gpufleet-nvidia-driver")
# NVIDIA's CUDA repository signing keys (cuda-repo-management SIGNATURES.md; docs/driver-sources.md)
CUDA_KEY_APT = ("3bf863cc.pub", "EB693B3035CD5710E231E123A4B469963BF863CC")
CUDA_KEY_RPM = ("D42D0685.pub", "610C7B14E068A878070DA4E99CD0A493D42D0685")
RPM_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-nvidia-cuda"


@dataclass(frozen=True)
class Source:
    """One way of getting the driver on one OS: its packages and what it offers."""

    packages: Callable[[DriverConfig, str], list[str]]  # (config, module flavour) -> names
    branches: tuple[str, ...] | None = None  # the only branches it has; None: any
    flavours: tuple[str, ...] = ("open", "proprietary")
    components: tuple[str, ...] = ()  # apt components of the host's own sources it needs
    repo: tuple[str, str, str] | None = None  # NVIDIA repository: (os dir, key file, fingerprint)
    fabric_manager: Callable[[str], str] | None = None  # branch -> package
    signed_modules: bool = False  # modules load under Secure Boot without a MOK
    family: str = "apt"  # package manager: a key of FAMILIES


def _debian_packages(config: DriverConfig, flavour: str) -> list[str]:
    return ["nvidia-driver", "nvidia-smi", "nvidia-persistenced"]


def _ubuntu_packages(config: DriverConfig, flavour: str) -> list[str]:
    suffix = "-open" if flavour == "open" else ""
    return [f"nvidia-driver-{config.branch}-server{suffix}"]


def _cuda_packages(open_meta: str) -> Callable[[DriverConfig, str], list[str]]:
    """CUDA repository metapackages: proprietary cuda-drivers-<branch>, or the open one."""

    def packages(config: DriverConfig, flavour: str) -> list[str]:
        if flavour == "open":
            return [open_meta.format(branch=config.branch)]
        return [f"cuda-drivers-{config.branch}"]

    return packages


def _fabric_manager(branch: str) -> str:
    return f"nvidia-fabricmanager-{branch}"


def _cuda_apt(os_dir: str, open_meta: str) -> Source:
    return Source(
        _cuda_packages(open_meta), repo=(os_dir, *CUDA_KEY_APT), fabric_manager=_fabric_manager
    )


def _el_packages(config: DriverConfig, flavour: str) -> list[str]:
    """The module stream picks the branch; an exact version names the package's version."""
    name = "nvidia-open" if flavour == "open" else "cuda-drivers"
    return [f"{name}-{config.version}" if config.version else name]


def _el_fabric_manager(branch: str) -> str:
    # renamed in 580 (NVIDIA's rhel9 driver container; docs/driver-sources.md, section 5)
    return "nvidia-fabricmanager" if int(branch) >= 580 else "nvidia-fabric-manager"


_CUDA_EL9 = Source(
    _el_packages, repo=("rhel9", *CUDA_KEY_RPM), family="dnf", fabric_manager=_el_fabric_manager
)
_UBUNTU_DISTRO = Source(_ubuntu_packages, fabric_manager=_fabric_manager)
# driver_source -> Source, per OS release; an OS missing a source cannot use it.
PLATFORMS: dict[tuple[str, str], dict[str, Source]] = {
    ("ubuntu", "22.04"): {
        "distro": _UBUNTU_DISTRO,
        "cuda-repo": _cuda_apt("ubuntu2204", "nvidia-open-{branch}"),
    },
    ("ubuntu", "24.04"): {
        "distro": _UBUNTU_DISTRO,
        "cuda-repo": _cuda_apt("ubuntu2404", "nvidia-open-{branch}"),
    },
    ("debian", "12"): {
        "distro": Source(
            _debian_packages,
            branches=("535",),
            # bookworm's open module package lags its driver (535.261 vs 535.309)
            flavours=("proprietary",),
            components=("contrib", "non-free", "non-free-firmware"),
        ),
        # the branch is held by the pin file: Debian's CUDA repository names it nvidia-open
        "cuda-repo": _cuda_apt("debian12", "nvidia-open"),
    },
    ("rocky", "9"): {"cuda-repo": _CUDA_EL9},
    ("rhel", "9"): {"cuda-repo": _CUDA_EL9},
}


def source_of(config: FleetConfig, profile: dict[str, Any]) -> Source | None:
    """The configured driver source on this host's OS; None when the OS has no such source."""
    return PLATFORMS[platform_key(profile)].get(config.driver.source)


def module_flavour(
    config: DriverConfig, gpus: list[dict], available: tuple[str, ...]
) -> tuple[str, str | None]:
    """(flavour, problem): the kernel modules to install for these GPUs from this source.

    auto = open when every GPU is Turing or newer and the source has open modules (NVIDIA's
    default since R560), else proprietary. Blackwell needs open modules: proprietary is
    refused when one is present.
    """
    ids = [int(gpu["device"], 16) for gpu in gpus]
    needs_open = any(i >= BLACKWELL_FIRST for i in ids)
    flavour = config.kernel_modules
    if flavour == "auto":
        turing_on = ids and min(ids) >= TURING_FIRST
        flavour = "open" if needs_open or (turing_on and "open" in available) else "proprietary"
    if flavour == "proprietary" and needs_open:
        return flavour, "proprietary kernel modules cannot drive Blackwell GPUs: use open"
    if flavour not in available:
        return flavour, f"{flavour} kernel modules are not available from this source"
    return flavour, None


def problems(config: FleetConfig, profile: dict[str, Any], source: Source | None) -> list[str]:
    """Why the driver cannot be installed on this host as configured; empty when it can."""
    driver, os_words = config.driver, f"{profile['os_id']} {profile['os_version']}"
    if source is None:  # every OS has cuda-repo: only distro can be missing
        return [
            f"{os_words} has no NVIDIA driver packages of its own: use driver_source = cuda-repo"
        ]
    found = []
    if source.branches and driver.branch not in source.branches:
        found.append(
            f"driver_branch {driver.branch} is not in {os_words}'s archive "
            f"(it has {', '.join(source.branches)}); use driver_source = cuda-repo"
        )
    if driver.version and source.branches:
        found.append(f"driver_version cannot be pinned with {os_words}'s own packages")
    _, problem = module_flavour(driver, profile["nvidia_gpus"], source.flavours)
    found += [problem] if problem else []
    if fabric_manager_wanted(config, profile) and source.fabric_manager is None:
        found.append(f"no fabric manager package for {os_words} from driver_source {driver.source}")
    if profile["secure_boot"] == "enabled" and not source.signed_modules:
        found.append(
            "Secure Boot is enabled and these kernel modules are built by DKMS, unsigned: "
            "enroll a Machine Owner Key for DKMS (mokutil --import) or disable Secure Boot"
        )
    return found


def fabric_manager_wanted(config: FleetConfig, profile: dict[str, Any]) -> bool:
    """enabled, or auto on a host with NVSwitches on the PCI bus."""
    wanted = config.driver.fabric_manager
    return wanted == "enabled" or (wanted == "auto" and bool(profile["nvswitches"]))


def _unless(needed_now: bool, op) -> dict:
    """Run now when the facts already say so, else only if ``op`` changes something."""
    return {} if needed_now else {"_if": op.did_change}


def _any_changed(ops: list) -> dict:
    """Run only if one of ``ops`` changed something."""
    return {"_if": lambda: any(op.did_change() for op in ops)}


@deploy("NVIDIA driver")
def apply(config: FleetConfig, profile: dict[str, Any]) -> None:
    """Install, hold and activate the configured driver (see the module doc for what is built),
    or, with ``driver_source = "preinstalled"``, adopt the driver the host came with."""
    if config.driver.source == "preinstalled":
        _adopt(config, profile, host.get_fact(DriverState))
        return
    source = source_of(config, profile)
    found = problems(config, profile, source)
    state = host.get_fact(DriverState) if not found else {}
    found += _unmanaged_problem(state)
    if source and source.family == "dnf" and upgrade_from(config.driver, state):
        found.append("changing the branch on EL (dnf module reset) is not automated yet")
    if found:
        fail_host("Driver failed", "driver: " + "; ".join(found))
        return
    flavour, _ = module_flavour(config.driver, profile["nvidia_gpus"], source.flavours)
    install = FAMILIES[source.family](config, profile, source, flavour, state)
    _blacklist_nouveau(config, state)
    _services(config, profile, state, install)
    _reboot_if_needed(config, state, install)


def _unmanaged_problem(state: dict[str, Any]) -> list[str]:
    """A driver no package manager owns must not get packages installed over it."""
    if not unmanaged(state):
        return []
    return [
        f"the NVIDIA driver {loaded_driver(state)} here ({state.get('library')}) belongs to no "
        "package (a runfile or cloud image driver); installing packages over it would break "
        'it: set driver_source = "preinstalled" to adopt it'
    ]


def adoption_problems(config: FleetConfig, state: dict[str, Any]) -> list[str]:
    """Why the host's own driver cannot be adopted as configured; empty when it can."""
    driver, running = config.driver, loaded_driver(state)
    if not running:
        return [
            'driver_source is "preinstalled" but no NVIDIA driver is installed or loaded here '
            "(no libnvidia-ml.so.1 in the loader's cache, no nvidia module)"
        ]
    if running.split(".")[0] != driver.branch:
        return [f"the preinstalled driver is {running}, not driver_branch {driver.branch}"]
    if driver.version and running != driver.version:
        return [f"the preinstalled driver is {running}, not driver_version {driver.version}"]
    return []


def _adopt(config: FleetConfig, profile: dict[str, Any], state: dict[str, Any]) -> None:
    """A preinstalled driver (cloud image, runfile): install nothing; check it is loaded at
    the configured branch; hold whatever driver packages there are; keep nouveau out and
    persistence on where the host allows."""
    found = adoption_problems(config, state)
    if found:
        fail_host("Driver failed", "driver: " + "; ".join(found))
        return
    unheld = set(state["packages"]) - set(state["held"])
    if config.driver.hold_packages and unheld:  # what packages there are (often none)
        HOLDS[family_of(profile)](config, state)
    _blacklist_nouveau(config, state)
    _services(config, profile, state)


def _apt_driver(config, profile, source: Source, flavour: str, state: dict[str, Any]):
    """Debian/Ubuntu: sources, one apt update if they changed, install or upgrade, hold."""
    sources_changed = _apt_sources(config, profile, source)
    if sources_changed:
        apt.update(
            name="Update apt lists for the driver's sources", **_any_changed(sources_changed)
        )
    install = _install_apt(config, profile, source, flavour, upgrade_from(config.driver, state))
    _hold_apt(config, state, install)
    return install


def _dnf_driver(config, profile, source: Source, flavour: str, state: dict[str, Any]):
    """Rocky/RHEL: key (fingerprint checked, then imported), repository, module stream on the
    branch, headers and driver, versionlock."""
    os_dir, key_file, fingerprint = source.repo
    url = _repo_url(config, profile, os_dir)
    signed_dnf_repo(
        "NVIDIA CUDA",
        f"{url}/{key_file}",
        RPM_KEY,
        config.driver.cuda_repo_fingerprint or fingerprint,
        setting="driver_cuda_repo",
        src="nvidia-cuda",
        baseurl=f"{url}/",
        description="NVIDIA CUDA",
    )
    stream = f"{config.driver.branch}-{'open' if flavour == 'open' else 'dkms'}"
    stream = package(stream, "driver_branch")  # pyinfra's dnf.module does not quote it
    dnf.module(name="Pin the driver branch (module stream)", module="nvidia-driver", stream=stream)
    packages = source.packages(config.driver, flavour)
    if config.driver.kernel_headers:
        packages = [
            f"kernel-devel-{profile['kernel']}",
            f"kernel-headers-{profile['kernel']}",
            *packages,
        ]
    if fabric_manager_wanted(config, profile):
        packages.append(source.fabric_manager(config.driver.branch))
    packages = [package(name, "driver package name") for name in packages]
    install = dnf.packages(name="Install the NVIDIA driver", packages=packages)
    if config.driver.hold_packages:
        _versionlock(state, install)
    return install


def _versionlock(state: dict[str, Any], install) -> None:
    """dnf versionlock every installed driver package (the plugin installed first)."""
    dnf.packages(
        name="Install the dnf versionlock plugin", packages=["python3-dnf-plugin-versionlock"]
    )
    globs = shell_globs(EL_DRIVER_GLOBS)
    unheld = set(state.get("packages", {})) - set(state.get("held", []))
    server.shell(
        name="Lock the NVIDIA driver packages",
        commands=[
            f"dnf -q versionlock add $(rpm -qa --qf '%{{NAME}}\\n' {globs} "
            f"| grep -vE '{NOT_DRIVER_RE}')"
        ],
        **_unless(bool(unheld), install),
    )


FAMILIES = {"apt": _apt_driver, "dnf": _dnf_driver}


def _apt_sources(config: FleetConfig, profile: dict[str, Any], source: Source) -> list:
    """Operations that make the source's packages installable; returns them."""
    ops = []
    for path, text in converged.planned(AptSourceFiles).items() if source.components else ():
        new = with_components(text, path, profile["os_codename"], source.components)
        if new != text:
            ops.append(
                files.put(
                    name=f"Enable {' '.join(source.components)} in {path}",
                    src=StringIO(new),
                    dest=path,
                    mode="644",
                )
            )
    if source.repo:
        ops += _cuda_repo(config, profile, *source.repo)
    return ops


def _cuda_repo(config, profile, os_dir: str, key_file: str, fingerprint: str) -> list:
    """NVIDIA's repository: key (fingerprint checked before use), source entry, branch pin."""
    url = _repo_url(config, profile, os_dir)
    expected = config.driver.cuda_repo_fingerprint or fingerprint
    ops = signed_apt_repo(
        "NVIDIA CUDA",
        f"{url}/{key_file}",
        CUDA_KEYRING,
        expected,
        (f"{url}/", "/"),
        setting="driver_cuda_repo",
    )
    pin = converged.put("Pin the driver branch", pin_text(config.driver), PIN_FILE, mode="644")
    return [*ops, pin]


def _repo_url(config: FleetConfig, profile: dict[str, Any], os_dir: str) -> str:
    """NVIDIA's (or the mirror's) repository directory for this OS and CPU."""
    base = str(config.driver.cuda_repo_url or NVIDIA_CUDA_REPOS).rstrip("/")
    return f"{base}/{os_dir}/{CUDA_ARCH[profile['arch']]}"


def pin_text(driver: DriverConfig) -> str:
    """apt preferences that keep the driver packages on the configured branch (or version)."""
    key = "driver_version" if driver.version else "driver_branch"
    version = apt_field(f"{driver.version}-*" if driver.version else f"{driver.branch}.*", key)
    globs = " ".join(APT_DRIVER_GLOBS)
    return (
        "# Written by gpufleet: keep the NVIDIA driver on its configured branch.\n"
        f"Package: {globs}\nPin: version {version}\nPin-Priority: 1001\n"
    )


def upgrade_from(driver: DriverConfig, state: dict[str, Any]) -> str | None:
    """The installed driver version when the config asks for another branch or version."""
    installed = state.get("nvml_version")
    if not installed:
        return None
    wanted = (
        installed == driver.version if driver.version else installed.startswith(f"{driver.branch}.")
    )
    return None if wanted else installed


def _install_apt(config, profile, source: Source, flavour: str, upgrading: str | None):
    """Headers, the driver packages and, where wanted, the fabric manager; returns the op.

    A deliberate upgrade (the config names another branch or version than the one installed)
    releases the holds first and installs with downgrades allowed, so the pin decides.
    """
    packages = source.packages(config.driver, flavour)
    if config.driver.kernel_headers:
        packages = [f"linux-headers-{profile['kernel']}", *packages]
    if fabric_manager_wanted(config, profile):
        packages.append(source.fabric_manager(config.driver.branch))
    packages = [package(name, "driver package name") for name in packages]
    if not upgrading:
        return converged.apt_install("Install the NVIDIA driver", packages)
    server.shell(
        name=f"Release the driver packages held at {upgrading}",
        commands=[f"apt-mark unhold $({INSTALLED_DRIVER_PACKAGES})"],
    )
    return server.shell(
        name=f"Upgrade the NVIDIA driver from {upgrading}", commands=[apt_move(packages)]
    )


def _hold_apt(config, state: dict[str, Any], install) -> None:
    """apt-mark hold every installed driver package, so upgrades cannot move the driver."""
    if not config.driver.hold_packages:
        return
    unheld = set(state["packages"]) - set(state["held"])
    server.shell(
        name="Hold the NVIDIA driver packages",
        commands=[f"apt-mark hold $({INSTALLED_DRIVER_PACKAGES})"],
        **_unless(bool(unheld), install),
    )


# package-manager family -> hold the driver packages there are, now (they are unheld)
HOLDS = {
    "apt": lambda config, state: _hold_apt(config, state, None),
    "dnf": lambda config, state: _versionlock(state, None),
}


def _blacklist_nouveau(config, state: dict[str, Any]) -> None:
    """Keep nouveau off the GPUs; regenerate the initramfs when the blacklist is new."""
    if not config.driver.blacklist_nouveau:
        return
    put = converged.put("Blacklist nouveau", NOUVEAU_TEXT, NOUVEAU_CONF)
    regenerate = INITRAMFS.get(state.get("initramfs", ""))  # a known tool, never the text read
    if regenerate:
        server.shell(name="Regenerate the initramfs", commands=[regenerate], _if=put.did_change)


def _services(config: FleetConfig, profile: dict[str, Any], state: dict[str, Any],
              install=None) -> None:  # fmt: skip
    """nvidia-persistenced and, where wanted, the fabric manager: enabled and running where
    there are GPUs for them to serve, disabled where there are none (they fail at every start
    there). Without systemd (containers, some VMs) there are no units: persistence is set
    through NVML's legacy mode instead (``nvidia-smi -pm 1``) where a GPU has it off."""
    if state.get("init", "systemd") != "systemd":
        _persistence_without_units(config, state)
        return
    units = [PERSISTENCED] if config.driver.persistence else []
    units += [FABRIC_MANAGER] if fabric_manager_wanted(config, profile) else []
    for unit in units:
        if config.driver.source == "preinstalled" and _missing(state, unit):
            if unit == PERSISTENCED:
                _persistence_without_units(config, state)
            else:
                logger.warning(f"{host.print_prefix}driver: {unit} is not installed here")
            continue
        gpus = config.host.has_gpus
        converged.service(unit, unit, running=gpus, enabled=gpus)
        if not gpus:
            _quiet_on_gpu_less_host(unit, state, install)


def _quiet_on_gpu_less_host(unit: str, state: dict[str, Any], install) -> None:
    """A GPU daemon on a host without GPUs: disabled, and its failed state cleared (its failed
    starts keep systemd "degraded" until cleared, disabled or not). One that this run's
    driver install brings was enabled and started by its package after the facts were read,
    so the service operation above saw no unit and did nothing: it is disabled here, or the
    next deploy would be the one to disable it (a second run that changes something). A unit
    missing with nothing to install gets no step, so a host that never has it plans none."""
    if _missing(state, unit):
        if install is None or not install.will_change:
            return
        # only where the packages did install it; a unit that never failed may be unloaded
        # once stopped, and then has no failed state to clear
        command = (f"if systemctl cat {unit} >/dev/null 2>&1; then systemctl disable --now {unit}"
                   f" && {{ systemctl reset-failed {unit} 2>/dev/null || true; }}; fi")  # fmt: skip
        server.shell(name=f"Disable {unit}, installed by this run", commands=[command])
    elif _failed(state, unit):
        server.shell(
            name=f"Clear {unit}'s failed state", commands=[f"systemctl reset-failed {unit}"]
        )


def _missing(state: dict[str, Any], unit: str) -> bool:
    return state["units"].get(unit, {}).get("enabled", "missing") in ("missing", "not-found")


def _failed(state: dict[str, Any], unit: str) -> bool:
    return state["units"].get(unit, {}).get("active") == "failed"


def _persistence_without_units(config: FleetConfig, state: dict[str, Any]) -> None:
    """Persistence mode on through nvidia-smi, only where NVML reads it off on some GPU."""
    off = [gpu for gpu in state["gpus"] if gpu.get("persistence") == 0]
    if config.driver.persistence and config.host.has_gpus and off:
        server.shell(name="Turn GPU persistence mode on", commands=["nvidia-smi -pm 1"])


def _reboot_if_needed(config: FleetConfig, state: dict[str, Any], install) -> None:
    """Reboot when no module, or not the installed one, is loaded (and the config allows)."""
    if not config.host.has_gpus:
        return
    loaded = state.get("module_loaded")
    mismatch = not loaded or loaded != state.get("nvml_version")
    if not config.driver.allow_reboot or (host.name == "@local" and not config.driver.reboot_local):
        if mismatch:
            logger.warning(f"{host.print_prefix}driver: reboot needed, not allowed by config")
        return
    when = _unless(mismatch, install)
    server.reboot(
        name="Reboot to load the installed driver",
        reboot_timeout=config.driver.reboot_timeout_s,
        **when,
    )
    server.shell(
        name="Check the loaded driver is the installed one", commands=[LOADED_IS_INSTALLED], **when
    )
