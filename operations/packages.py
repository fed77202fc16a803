"""Signed package repositories and version-pinned package sets, shared by the layers.

Every third-party repository is trusted the same way: its key is fetched, its fingerprint
compared with the expected one (the vendor's published fingerprint, or the configured one
for a mirror) and removed again on a mismatch, before any source entry points at it. No
``curl | sh``, no ``apt-key``.

A pinned version is held by an apt preferences file (priority 1001) over the package set, so
``apt-get upgrade`` and unattended upgrades cannot move it, and a config change of version
moves the installed set deliberately (downgrades allowed: the pin decides).
"""

from __future__ import annotations

import fnmatch

from pyinfra import host
from pyinfra.api import FactBase, deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.rpm import RpmPackages
from pyinfra.operations import apt, dnf, server

from operations import converged
from operations.apt_sources import AptSourceFiles
from operations.preflight import EL_IDS

APT_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # uname -m -> dpkg architecture


def fingerprint_check(keyring: str, expected: str) -> str:
    """Shell that removes the keyring and fails unless its primary key has ``expected``."""
    expected = expected.replace(" ", "").upper()
    return (
        f"fpr=$(gpg --show-keys --with-colons {keyring} 2>/dev/null "
        "| awk -F: '$1 == \"fpr\" { print $10; exit }'); "
        f'[ "$fpr" = "{expected}" ] || {{ rm -f {keyring}; '
        f'echo "repository key fingerprint is ${{fpr:-unreadable}}, expected {expected}: '
        'key removed" >&2; exit 1; }'
    )


class KeyringFingerprints(FactBase):
    """{keyring path: primary key fingerprint} of every /etc/apt/keyrings/*.gpg, one command."""

    def command(self) -> str:
        return (
            'for f in /etc/apt/keyrings/*.gpg; do [ -f "$f" ] && echo "$f $(gpg --show-keys '
            '--with-colons "$f" 2>/dev/null | awk -F: \'$1 == "fpr" { print $10; exit }\')"; '
            "done; true"
        )

    @staticmethod
    def default() -> dict[str, str]:
        return {}

    def process(self, output: list[str]) -> dict[str, str]:
        return dict((line.split(" ", 1) + [""])[:2] for line in output if line.strip())


def signed_apt_repo(
    what: str, key_url: str, keyring: str, fingerprint: str, entry: str, arch: str | None = None
) -> list:
    """apt: the key (fingerprint checked before use) and ``deb [signed-by=keyring] entry``.

    A key already on the host is checked again when its fingerprint is not the expected one
    (a changed ``*_repo_fingerprint``, a key swapped by hand): the check removes it and
    fails the host, and the next run fetches and checks it afresh.

    Returns the operations; a source whose entry changed needs an ``apt update``.
    """
    present = converged.planned(KeyringFingerprints).get(keyring)
    expected = fingerprint.replace(" ", "").upper()
    if present == expected:
        key = converged.unchanged()  # the key is there and is the expected one
    else:
        key = apt.key(name=f"Add the {what} repository key", src=key_url, dest=keyring)
        server.shell(
            name=f"Check the {what} repository key's fingerprint",
            commands=[fingerprint_check(keyring, fingerprint)],
            **({"_if": key.did_change} if present is None else {}),
        )
    filename = keyring.rsplit("/", 1)[-1].removesuffix(".gpg")
    line = f"deb [{f'arch={arch} ' if arch else ''}signed-by={keyring}] {entry}"
    listed = (converged.planned(AptSourceFiles) or {}).get(
        f"/etc/apt/sources.list.d/{filename}.list"
    )
    if listed is not None and line in listed.splitlines():
        return [key, converged.unchanged()]
    repo = apt.repo(name=f"Add the {what} repository", filename=filename, src=line)
    return [key, repo]


def signed_dnf_repo(what: str, key_url: str, key_path: str, fingerprint: str, **repo) -> None:
    """dnf: the key fetched, its fingerprint checked, imported (once), then the repository."""
    expected = fingerprint.replace(" ", "").upper()
    imported = host.get_fact(RpmPackages).get("gpg-pubkey", [])
    if not any(version.startswith(expected[-8:].lower()) for version in imported):
        server.shell(
            name=f"Import the {what} repository key, fingerprint checked",
            commands=[
                f"curl -fsSL -o {key_path} {key_url}",
                fingerprint_check(key_path, expected),
                f"rpm --import {key_path}",
            ],
        )
    dnf.repo(name=f"Add the {what} repository", gpgcheck=True, gpgkey=f"file://{key_path}", **repo)


def version_glob(version: str, epoch: str = "") -> str:
    """apt version glob of a configured version: ``1.17.8-1`` is exact; ``27.5`` or ``27.5.1``
    is any build of that upstream version (``5:27.5.1-1~debian.12~bookworm``, ``27.5.3-…``)
    and never ``27.50``."""
    if "-" in version:
        return f"{epoch}{version}"
    return f"{epoch}{version}[-+~.]*"


def pin_text(why: str, packages: tuple[str, ...], glob: str) -> str:
    """apt preferences that keep ``packages`` at versions matching ``glob``."""
    return (
        f"# Written by gpufleet: {why}\n"
        f"Package: {' '.join(packages)}\nPin: version {glob}\nPin-Priority: 1001\n"
    )


def apt_pin(what: str, path: str, packages: tuple[str, ...], glob: str | None):
    """The pin file when a version is configured; none (removed) when it is not."""
    if glob is None:
        return converged.absent(f"No {what} version pin", path)
    text = pin_text(f"keep {what} at its configured version.", packages, glob)
    return converged.put(f"Pin the {what} version", text, path, mode="644")


def drifted(packages: tuple[str, ...], glob: str | None) -> list[str]:
    """Installed packages of the set whose version does not match the pinned ``glob``."""
    if glob is None:
        return []
    installed = converged.planned(DebPackages)
    return [
        f"{name} {' '.join(installed[name])}"
        for name in packages
        if name in installed and not any(fnmatch.fnmatch(v, glob) for v in installed[name])
    ]


def apt_pinned_install(what: str, packages: tuple[str, ...], pinned: tuple[str, ...], glob):
    """Install ``packages``; when installed ``pinned`` ones are at another version than the
    pin, move them (the pin decides, downgrades allowed). Returns the operation."""
    moved = drifted(pinned, glob)
    if not moved:
        return converged.apt_install(f"Install {what}", packages)
    install = "apt-get -y --allow-downgrades --no-install-recommends install"
    return server.shell(
        name=f"Move {what} to {glob} (installed: {', '.join(moved)})",
        commands=[f"DEBIAN_FRONTEND=noninteractive {install} {' '.join(packages)}"],
    )


APT_LOCK_CONF = converged.managed("/etc/apt/apt.conf.d/90gpufleet-lock-timeout")
# dpkg itself does not wait for its lock: retry while apt waits would (every 2 s)
_FINISH_DPKG = (
    "deadline=$(( $(date +%s) + {timeout} )); "
    "until DEBIAN_FRONTEND=noninteractive dpkg --configure -a; do "
    '[ "$(date +%s)" -lt "$deadline" ] || exit 1; sleep 2; done'
)


APT_PROXY_CONF = converged.managed("/etc/apt/apt.conf.d/90gpufleet-proxy")


def proxy_text(proxy: str, bypass: tuple[str, ...]) -> str:
    """apt configuration: fetch through ``proxy``, straight from the ``bypass`` hosts."""
    return f'Acquire::http::Proxy "{proxy}";\n' + "".join(
        f'Acquire::http::Proxy::{name} "DIRECT";\n' for name in bypass
    )


@deploy("Package manager")
def package_manager_ready(
    timeout_s: int, profile: dict, proxy: str | None = None, bypass: tuple[str, ...] = ()
) -> None:
    """Before any layer installs a package on an apt host: make every apt run wait up to
    ``timeout_s`` for a lock another process holds (unattended-upgrades at boot, a person's
    apt) instead of failing at once, and finish a dpkg run that was interrupted (a killed
    install leaves packages half-configured, and apt refuses to work until that is done).
    dnf waits for its own lock, so EL hosts need neither. With ``proxy`` (deploy_apt_proxy)
    apt fetches through it, so a fleet downloads each package once; without, the file goes."""
    if profile.get("os_id") in EL_IDS:
        return
    converged.put(
        "apt waits for a held lock", f'DPkg::Lock::Timeout "{timeout_s}";\n', APT_LOCK_CONF
    )
    if proxy:
        converged.put(
            "apt fetches through the shared proxy", proxy_text(proxy, bypass), APT_PROXY_CONF
        )
    else:
        converged.absent("No apt proxy", APT_PROXY_CONF)
    if profile.get("dpkg_interrupted"):
        server.shell(
            name="Finish the interrupted dpkg run",
            commands=[_FINISH_DPKG.format(timeout=timeout_s)],
        )
