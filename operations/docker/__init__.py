"""Layer 2: Docker Engine, from Docker's signed repository or the distribution.

Conflicting packages go first (docker.io against docker-ce, podman-docker, the
distribution's containerd/runc), then the source: Docker's repository with its key's
fingerprint checked before the entry trusts it (base URL overridable for mirrors), or the
distribution's ``docker.io``. An optional version is pinned with apt preferences; a config
change of version moves the engine deliberately. daemon.json is merged, never clobbered
(``operations.kit.daemon_json``): log rotation, ``live-restore`` (on by default, so a daemon
restart leaves the serving container running), data-root, registry mirrors, cgroup driver
and any ``docker_daemon_options``. Docker is enabled and running; users are added to the
docker group only when configured (membership is root-equivalent).

Every OS difference lives in ``PLATFORMS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import Users
from pyinfra.operations import apt, dnf, server

from operations.config.model import DockerConfig, FleetConfig
from operations.kit import bounds, converged, daemon_json
from operations.kit.common import fail_host
from operations.kit.packages import (
    APT_ARCH,
    apt_pin,
    apt_pinned_install,
    signed_apt_repo,
    signed_dnf_repo,
    version_glob,
)
from operations.kit.quoting import json_text, package, shell
from operations.platform import platform_key

DOCKER_REPO = "https://download.docker.com"
KEYRING = "/etc/apt/keyrings/docker.gpg"
SERVICE = converged.managed_unit("docker")
RPM_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-docker-ce"
PIN_FILE = converged.managed("/etc/apt/preferences.d/gpufleet-docker")
# Docker's release signing keys (docs.docker.com/engine/install: debian, ubuntu, rhel)
APT_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
RPM_FINGERPRINT = "060A61C51B558A7F742B77AAC52FEB6B621E9F35"

DOCKER_CE = (
    "docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
    "docker-compose-plugin",
)  # fmt: skip
# What Docker's install guides remove first: packages that conflict with docker-ce.
APT_CE_CONFLICTS = (
    "docker.io", "docker-doc", "docker-compose", "docker-compose-v2", "podman-docker",
    "containerd", "runc",
)  # fmt: skip
APT_DISTRO_CONFLICTS = ("docker-ce", "docker-ce-cli", "containerd.io", "podman-docker")
EL_CE_CONFLICTS = (
    "docker", "docker-client", "docker-client-latest", "docker-common", "docker-latest",
    "docker-latest-logrotate", "docker-logrotate", "docker-engine", "podman-docker", "podman",
    "runc",
)  # fmt: skip


@dataclass(frozen=True)
class Engine:
    """One way of getting Docker on one OS."""

    packages: tuple[str, ...]
    conflicts: tuple[str, ...]
    pinned: tuple[str, ...]  # the packages docker_version pins
    epoch: str = ""  # version prefix of those packages in this source
    repo_dir: str | None = None  # Docker's repository: <base>/linux/<repo_dir>
    family: str = "apt"  # a key of FAMILIES


def _ce_apt(repo_dir: str) -> Engine:
    return Engine(DOCKER_CE, APT_CE_CONFLICTS, DOCKER_CE[:2], "5:", repo_dir)


_DISTRO_APT = Engine(("docker.io",), APT_DISTRO_CONFLICTS, ("docker.io",))
_CE_EL = Engine(DOCKER_CE, EL_CE_CONFLICTS, DOCKER_CE[:2], "3:", "rhel", family="dnf")
# docker_source -> Engine, per OS release; an OS missing a source cannot use it.
PLATFORMS: dict[tuple[str, str], dict[str, Engine]] = {
    ("ubuntu", "22.04"): {"docker-repo": _ce_apt("ubuntu"), "distro": _DISTRO_APT},
    ("ubuntu", "24.04"): {"docker-repo": _ce_apt("ubuntu"), "distro": _DISTRO_APT},
    ("debian", "12"): {"docker-repo": _ce_apt("debian"), "distro": _DISTRO_APT},
    ("rocky", "9"): {"docker-repo": _CE_EL},
    ("rhel", "9"): {"docker-repo": _CE_EL},
}


def daemon_keys(docker: DockerConfig) -> daemon_json.Managed:
    """The daemon.json keys this layer owns, as key path -> value."""
    keys: daemon_json.Managed = {
        ("live-restore",): docker.live_restore,
        ("log-driver",): "json-file",
        ("log-opts", "max-size"): docker.log_max_size,
        ("log-opts", "max-file"): str(docker.log_max_file),
    }
    if docker.data_root:
        keys["data-root",] = docker.data_root
    if docker.registry_mirrors:
        keys["registry-mirrors",] = [str(url) for url in docker.registry_mirrors]
    if docker.cgroup_driver:
        keys["exec-opts",] = [f"native.cgroupdriver={docker.cgroup_driver}"]
    keys.update({(key,): value for key, value in docker.daemon_options.items()})
    for (key, *_), value in keys.items():  # refused now, while planning, if not JSON
        json_text(value, f"docker_daemon_options.{key}" if key in docker.daemon_options else key)
    return keys


@deploy("Docker Engine")
def apply(config: FleetConfig, profile: dict[str, Any]) -> None:
    """Install, configure and run Docker Engine (see the module doc for what is built)."""
    engine = PLATFORMS[platform_key(profile)].get(config.docker.source)
    if engine is None:
        os_words = f"{profile['os_id']} {profile['os_version']}"
        fail_host(
            "Docker failed",
            f"docker: {os_words} has no Docker packages of its own: "
            "use docker_source = docker-repo",
        )
        return
    FAMILIES[engine.family](config, profile, engine)
    daemon_json.merged(
        name="Merge the Docker daemon.json keys",
        layer="docker",
        managed=daemon_keys(config.docker),
        restart_timeout_s=config.docker.restart_timeout_s,
        _timeout=bounds.restart_s(config),
    )
    converged.service("docker", SERVICE, running=True, enabled=True)
    _docker_group(config.docker.users)


def _docker_group(users: list[str]) -> None:
    """Add existing users to the docker group. Not ``server.user``: that would create a
    missing account (with a home), where a typo should be an error."""
    accounts = host.get_fact(Users) if users else {}
    for user in users:
        shell(user, "docker_users")  # refused now if no command can name it
        if user not in accounts:
            fail_host("Docker failed", f"docker: docker_users names {user}: no such user here")
        elif "docker" not in accounts[user]["groups"]:
            server.shell(
                name=f"Add {user} to the docker group (root-equivalent)",
                commands=[f"usermod -aG docker {shell(user, 'docker_users')}"],
            )


def _repo_base(config: FleetConfig) -> str:
    return str(config.docker.repo_url or DOCKER_REPO).rstrip("/")


def _apt_engine(config: FleetConfig, profile: dict[str, Any], engine: Engine) -> None:
    """Debian/Ubuntu: conflicts out, source, pin, one apt update if sources changed, install."""
    installed = converged.planned(DebPackages)
    conflicts = [name for name in engine.conflicts if name in installed]
    if conflicts:
        apt.packages(name="Remove packages that conflict", packages=conflicts, present=False)
    sources = []
    if engine.repo_dir:
        base = f"{_repo_base(config)}/linux/{engine.repo_dir}"
        arch = APT_ARCH[profile["arch"]]
        words = (base, profile["os_codename"], "stable")
        fingerprint = config.docker.repo_fingerprint or APT_FINGERPRINT
        sources = signed_apt_repo(
            "Docker", f"{base}/gpg", KEYRING, fingerprint, words, arch, setting="docker_repo"
        )
    version = config.docker.version
    glob = version_glob(version, engine.epoch) if version else None
    apt_pin("Docker Engine", PIN_FILE, engine.pinned, glob, key="docker_version")
    if sources:
        apt.update(
            name="Update apt lists for Docker's repository",
            _if=lambda: any(op.did_change() for op in sources),
        )
    apt_pinned_install("Docker Engine", engine.packages, engine.pinned, glob)


def _dnf_engine(config: FleetConfig, profile: dict[str, Any], engine: Engine) -> None:
    """Rocky/RHEL: conflicts out, Docker's repository (key checked), install at the version."""
    dnf.packages(name="Remove packages that conflict", packages=engine.conflicts, present=False)
    base = f"{_repo_base(config)}/linux/{engine.repo_dir}"
    signed_dnf_repo(
        "Docker",
        f"{base}/gpg",
        RPM_KEY,
        config.docker.repo_fingerprint or RPM_FINGERPRINT,
        setting="docker_repo",
        src="docker-ce-stable",
        baseurl=f"{base}/$releasever/$basearch/stable",
        description="Docker CE Stable",
    )
    version = config.docker.version
    if version and version.count(".") == 1:
        version += ".*"  # 27.5: any 27.5.x
    packages = [
        package(f"{name}-{version}", "docker_version")
        if name in engine.pinned and version
        else name
        for name in engine.packages
    ]
    dnf.packages(name="Install Docker Engine", packages=packages)


FAMILIES = {"apt": _apt_engine, "dnf": _dnf_engine}
