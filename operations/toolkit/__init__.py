"""Layer 3: NVIDIA Container Toolkit, and Docker's nvidia runtime.

NVIDIA's repository (key fingerprint checked before the entry trusts it; base URL
overridable for mirrors) provides the four packages, pinned together to one version.

The nvidia runtime is registered through the same daemon.json merge as the Docker layer,
not ``nvidia-ctk runtime configure``: one owner of the file means one validation and
rollback path, a restart only when the parsed content changed, and the user's keys kept
(``nvidia-ctk`` rewrites the whole file and would need its own restart).

"Failed to initialize NVML: Unknown Error" after ``systemctl daemon-reload``: with systemd
managing container cgroups, runc re-applies device rules from ``/dev/char`` symlinks, which
the NVIDIA device nodes lack, so running containers lose their GPUs (NVIDIA's notice,
nvidia-docker issue 1730). The fix chosen is NVIDIA's own: the udev rule that runs
``nvidia-ctk system create-dev-char-symlinks --create-all`` whenever the driver binds, and
one run of it now. It works on cgroup v1 and v2 and with either cgroup driver, where the
alternative (``native.cgroupdriver=cgroupfs``) goes against Docker's advice on cgroup v2.

CDI specs (``/etc/cdi/nvidia.yaml``) are generated on GPU hosts and regenerated when they
do not name the version of the driver the host runs (operations.driver.facts.loaded_driver,
the one reader every layer keys on), or when this run changes the toolkit's packages. The
vLLM layer recreates its GPU containers on the same two changes (operations.vllm: the spec
hash covers the driver and toolkit versions), so the spec and the containers follow a
driver or toolkit change in the same run: the toolkit's in this run (``runtime_changes``:
the package install, which the planning facts cannot see yet), the driver's in the run
whose facts first name the new driver (the run after the reboot that loaded it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api import Host, deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.context import ctx_host
from pyinfra.operations import apt, dnf, server

from operations.config.model import FleetConfig, ToolkitConfig
from operations.driver.facts import DriverState, loaded_driver
from operations.kit import bounds, converged, daemon_json
from operations.kit.packages import (
    apt_pin,
    apt_pinned_install,
    signed_apt_repo,
    signed_dnf_repo,
    version_glob,
)
from operations.kit.quoting import package
from operations.platform import platform_key
from operations.toolkit.facts import CDI_SPEC, PACKAGES, UDEV_RULE, CdiSpec

TOOLKIT_REPO = "https://nvidia.github.io/libnvidia-container"
# NVIDIA's container toolkit repository key (its gpgkey file; docs/driver-sources.md)
FINGERPRINT = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
KEYRING = "/etc/apt/keyrings/nvidia-container-toolkit.gpg"
RPM_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-nvidia-container-toolkit"
PIN_FILE = converged.managed("/etc/apt/preferences.d/gpufleet-nvidia-container-toolkit")
CDI_SINCE = (1, 12)  # nvidia-ctk cdi generate
converged.managed(UDEV_RULE)
DEV_CHAR_LINKS = "/usr/bin/nvidia-ctk system create-dev-char-symlinks --create-all"
UDEV_TEXT = (
    "# Written by gpufleet: /dev/char links for the NVIDIA device nodes, so containers keep\n"
    "# their GPUs across systemctl daemon-reload (NVML: Unknown Error).\n"
    f'ACTION=="add", DEVPATH=="/bus/pci/drivers/nvidia", RUN+="{DEV_CHAR_LINKS}"\n'
)
RUNTIME = {"path": "nvidia-container-runtime", "args": []}
# Per host, this run's operations that may change what the runtime gives a GPU container.
_CHANGES: WeakKeyDictionary[Host, list[OperationMeta]] = WeakKeyDictionary()


@dataclass(frozen=True)
class Repo:
    """NVIDIA's toolkit repository as one package family sees it."""

    path: str  # under the base URL
    family: str  # a key of FAMILIES


_APT = Repo("stable/deb/$(ARCH)", "apt")  # a flat repository (suite /); apt substitutes $(ARCH)
_DNF = Repo("stable/rpm/$basearch", "dnf")
PLATFORMS: dict[tuple[str, str], Repo] = {
    ("ubuntu", "22.04"): _APT,
    ("ubuntu", "24.04"): _APT,
    ("debian", "12"): _APT,
    ("rocky", "9"): _DNF,
    ("rhel", "9"): _DNF,
}


def daemon_keys(toolkit: ToolkitConfig) -> daemon_json.Managed:
    """The daemon.json keys this layer owns: the nvidia runtime, and the default runtime."""
    keys: daemon_json.Managed = {("runtimes", "nvidia"): RUNTIME}
    if toolkit.default_runtime:
        keys["default-runtime",] = toolkit.default_runtime
    return keys


def cdi_supported(version: str | None) -> bool:
    """Whether this toolkit version has ``nvidia-ctk cdi generate`` (unpinned: the newest)."""
    return version is None or tuple(int(p) for p in version.split("-")[0].split(".")[:2]) >= (
        CDI_SINCE
    )


@deploy("NVIDIA Container Toolkit")
def apply(config: FleetConfig, profile: dict[str, Any]) -> None:
    """Install the toolkit, register the runtime, prevent the NVML-after-reload failure and
    generate CDI specs (see the module doc for what is built and why)."""
    repo = PLATFORMS[platform_key(profile)]
    install = FAMILIES[repo.family](config, repo)
    if install.will_change:  # planned on the facts of before the run: a change to come
        _CHANGES.setdefault(ctx_host.get(), []).append(install)
    daemon_json.merged(
        name="Register the nvidia runtime in daemon.json",
        layer="toolkit",
        managed=daemon_keys(config.toolkit),
        restart_timeout_s=config.docker.restart_timeout_s,
        _timeout=bounds.restart_s(config),
    )
    rule = converged.put("Install the /dev/char udev rule", UDEV_TEXT, UDEV_RULE)
    if not config.host.has_gpus:
        return  # no device nodes to link, no GPUs to describe
    server.shell(name="Create the /dev/char links", commands=[DEV_CHAR_LINKS], _if=rule.did_change)
    if config.toolkit.cdi and cdi_supported(config.toolkit.version):
        driver = loaded_driver(converged.planned(DriverState)) or ""
        now = host.get_fact(CdiSpec, driver=driver) != "current"
        changes = runtime_changes()
        if now or changes:
            server.shell(
                name="Generate the CDI spec",
                commands=[f"nvidia-ctk cdi generate --output={CDI_SPEC}"],
                **({} if now else {"_if": lambda: any(op.did_change() for op in changes)}),
            )


def runtime_changes() -> list[OperationMeta]:
    """The operations planned so far in this run, on the current host, that will change what
    the container runtime gives a GPU container (the toolkit's package install or move): the
    facts read while planning show the host before them, so what keys on the toolkit's
    version (the CDI spec, the vLLM containers' spec) is decided again once they ran."""
    return list(_CHANGES.get(ctx_host.get(), ()))


def _base(config: FleetConfig) -> str:
    return str(config.toolkit.repo_url or TOOLKIT_REPO).rstrip("/")


def _apt_toolkit(config: FleetConfig, repo: Repo):
    """Debian/Ubuntu: the signed repository, the version pin, apt update if it changed."""
    base = _base(config)
    fingerprint = config.toolkit.repo_fingerprint or FINGERPRINT
    sources = signed_apt_repo(
        "NVIDIA Container Toolkit",
        f"{base}/gpgkey",
        KEYRING,
        fingerprint,
        (f"{base}/{repo.path}", "/"),
        setting="toolkit_repo",
    )
    version = config.toolkit.version
    glob = version_glob(version) if version else None
    apt_pin("NVIDIA Container Toolkit", PIN_FILE, PACKAGES, glob, key="toolkit_version")
    apt.update(
        name="Update apt lists for the toolkit's repository",
        _if=lambda: any(op.did_change() for op in sources),
    )
    return apt_pinned_install("NVIDIA Container Toolkit", PACKAGES, PACKAGES, glob)


def _dnf_toolkit(config: FleetConfig, repo: Repo):
    """Rocky/RHEL: the key (checked, imported), the repository, the four packages."""
    base = _base(config)
    signed_dnf_repo(
        "NVIDIA Container Toolkit",
        f"{base}/gpgkey",
        RPM_KEY,
        config.toolkit.repo_fingerprint or FINGERPRINT,
        setting="toolkit_repo",
        src="nvidia-container-toolkit",
        baseurl=f"{base}/{repo.path}",
        description="NVIDIA Container Toolkit",
    )
    version = config.toolkit.version
    packages = [
        package(f"{name}-{version}", "toolkit_version") if version else name for name in PACKAGES
    ]
    return dnf.packages(name="Install NVIDIA Container Toolkit", packages=packages)


FAMILIES = {"apt": _apt_toolkit, "dnf": _dnf_toolkit}
