"""The one table of operating systems this tool supports, and what each layer needs to know
about a host's platform: its key (os-release ID and VERSION_ID, EL by major version) and its
package-manager family (apt or dnf).

Every layer keys its own platform table (package sources, repositories) by ``Platform.key``;
a unit test checks that each of those tables covers exactly ``SUPPORTED``, so an OS added here
and forgotten in a layer fails the suite instead of becoming a KeyError on a host. Layers
dispatch on ``family`` through a dict of the two families, never an if-chain on OS ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Family = Literal["apt", "dnf"]
FAMILIES: tuple[Family, ...] = ("apt", "dnf")


@dataclass(frozen=True)
class Platform:
    """One supported OS release: ``version`` is VERSION_ID (the major version on EL)."""

    os_id: str
    version: str
    family: Family

    @property
    def key(self) -> tuple[str, str]:
        return self.os_id, self.version


SUPPORTED: dict[tuple[str, str], Platform] = {
    platform.key: platform
    for platform in (
        Platform("ubuntu", "22.04", "apt"),
        Platform("ubuntu", "24.04", "apt"),
        Platform("debian", "12", "apt"),
        Platform("rocky", "9", "dnf"),
        Platform("rhel", "9", "dnf"),
    )
}
SUPPORTED_ARCH = ("x86_64", "aarch64")
# os-release IDs whose VERSION_ID is compared by major version (9.4 is 9), and the family of
# each ID (also for releases not supported, so that a message can still name it)
_MAJOR_ONLY = {p.os_id for p in SUPPORTED.values() if p.family == "dnf"}
_FAMILY_OF_ID: dict[str, Family] = {p.os_id: p.family for p in SUPPORTED.values()}


def platform_key(profile: dict[str, Any]) -> tuple[str, str]:
    """(os id, version) as the layers' platform tables are keyed: EL by major version."""
    version = str(profile["os_version"])
    if profile["os_id"] in _MAJOR_ONLY:
        version = version.split(".")[0]
    return profile["os_id"], version


def os_supported(os_id: str, version: str) -> bool:
    """Whether os-release ID/VERSION_ID is a supported platform (EL by major version)."""
    return platform_key({"os_id": os_id, "os_version": version}) in SUPPORTED


def family_of(profile: dict[str, Any]) -> Family:
    """The host's package-manager family; apt for an ID this table does not know."""
    return _FAMILY_OF_ID.get(str(profile.get("os_id")), "apt")


def supported_os_words() -> str:
    """'ubuntu 22.04, ubuntu 24.04, …' for messages."""
    return ", ".join(f"{os_id} {version}" for os_id, version in SUPPORTED)
