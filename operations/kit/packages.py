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

from operations.kit import converged, scripts
from operations.kit.apt_sources import AptSourceFiles
from operations.kit.quoting import (
    apt_conf_name,
    apt_conf_string,
    apt_field,
    apt_source_word,
    ini_value,
    package,
    shell,
    shell_join,
    shell_say,
)
from operations.platform import family_of

APT_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # uname -m -> dpkg architecture


def fingerprint_check(keyring: str, expected: str, key: str = "repo_fingerprint") -> str:
    """Shell that removes the keyring and fails unless its primary key has ``expected``
    (``key``: the setting it came from)."""
    expected = expected.replace(" ", "").upper()
    path = shell(keyring)
    said = shell_say(
        shell("repository key fingerprint is "),
        '"${fpr:-unreadable}"',
        shell(f", expected {expected}: key removed", key),
    )
    return (
        f"fpr=$(gpg --show-keys --with-colons {path} 2>/dev/null "
        "| awk -F: '$1 == \"fpr\" { print $10; exit }'); "
        f'[ "$fpr" = {shell(expected, key)} ] || {{ rm -f {path}; {said}; exit 1; }}'
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


def source_line(keyring: str, words: tuple[str, ...], arch: str | None, setting: str) -> str:
    """``deb [arch=… signed-by=keyring] URI SUITE [COMPONENT…]``, each word checked to stay one
    word of the line (``setting``: where the URI came from, ``<setting>_url``)."""
    uri, *rest = words
    checked = [apt_source_word(uri, f"{setting}_url")]
    checked += [apt_source_word(word, "apt suite") for word in rest]
    options = f"{f'arch={arch} ' if arch else ''}signed-by={keyring}"
    return f"deb [{options}] {' '.join(checked)}"


def signed_apt_repo(
    what: str,
    key_url: str,
    keyring: str,
    fingerprint: str,
    words: tuple[str, ...],
    arch: str | None = None,
    setting: str = "repo",
) -> list:
    """apt: the key (fingerprint checked before use) and ``deb [signed-by=keyring] URI SUITE
    [COMPONENT…]`` (``words``). ``setting``: the settings' prefix (``docker_repo``), for errors.

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
            commands=[fingerprint_check(keyring, fingerprint, f"{setting}_fingerprint")],
            **({"_if": key.did_change} if present is None else {}),
        )
    filename = keyring.rsplit("/", 1)[-1].removesuffix(".gpg")
    line = source_line(keyring, words, arch, setting)
    listed = (converged.planned(AptSourceFiles) or {}).get(
        f"/etc/apt/sources.list.d/{filename}.list"
    )
    if listed is not None and line in listed.splitlines():
        return [key, converged.unchanged()]
    repo = apt.repo(name=f"Add the {what} repository", filename=filename, src=line)
    return [key, repo]


def signed_dnf_repo(
    what: str, key_url: str, key_path: str, fingerprint: str, setting: str = "repo", **repo
) -> None:
    """dnf: the key fetched, its fingerprint checked, imported (once), then the repository.
    ``setting``: the settings' prefix (``docker_repo``), for errors."""
    expected = fingerprint.replace(" ", "").upper()
    imported = host.get_fact(RpmPackages).get("gpg-pubkey", [])
    if not any(version.startswith(expected[-8:].lower()) for version in imported):
        server.shell(
            name=f"Import the {what} repository key, fingerprint checked",
            commands=[
                f"curl -fsSL -o {shell(key_path)} {shell(key_url, f'{setting}_url')}",
                fingerprint_check(key_path, expected, f"{setting}_fingerprint"),
                f"rpm --import {shell(key_path)}",
            ],
        )
    fields = {
        name: ini_value(value, f"{setting}_url" if name == "baseurl" else name)
        for name, value in repo.items()
    }
    dnf.repo(
        name=f"Add the {what} repository", gpgcheck=True, gpgkey=f"file://{key_path}", **fields
    )


def version_glob(version: str, epoch: str = "") -> str:
    """apt version glob of a configured version: ``1.17.8-1`` is exact; ``27.5`` or ``27.5.1``
    is any build of that upstream version (``5:27.5.1-1~debian.12~bookworm``, ``27.5.3-…``)
    and never ``27.50``."""
    if "-" in version:
        return f"{epoch}{version}"
    return f"{epoch}{version}[-+~.]*"


def pin_text(why: str, packages: tuple[str, ...], glob: str, key: str = "version") -> str:
    """apt preferences that keep ``packages`` at versions matching ``glob`` (from ``key``)."""
    names = " ".join(apt_field(name, "package name") for name in packages)
    return (
        f"# Written by gpufleet: {why}\n"
        f"Package: {names}\nPin: version {apt_field(glob, key)}\nPin-Priority: 1001\n"
    )


def apt_pin(what: str, path: str, packages: tuple[str, ...], glob: str | None, key="version"):
    """The pin file when a version (setting ``key``) is configured; none (removed) when not."""
    if glob is None:
        return converged.absent(f"No {what} version pin", path)
    text = pin_text(f"keep {what} at its configured version.", packages, glob, key)
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
    packages = tuple(package(name, "package name") for name in packages)
    moved = drifted(pinned, glob)
    if not moved:
        return converged.apt_install(f"Install {what}", packages)
    return server.shell(
        name=f"Move {what} to {glob} (installed: {', '.join(moved)})",
        commands=[apt_move(packages)],
    )


def apt_move(packages: tuple[str, ...] | list[str]) -> str:
    """Shell that installs ``packages`` with downgrades allowed (the pin decides the version)."""
    install = "apt-get -y --allow-downgrades --no-install-recommends install"
    return f"DEBIAN_FRONTEND=noninteractive {install} {shell_join(packages, 'package name')}"


APT_LOCK_CONF = converged.managed("/etc/apt/apt.conf.d/90gpufleet-lock-timeout")


def finish_dpkg_command(timeout_s: int) -> str:
    """The command that finishes an interrupted dpkg run (scripts/finish_dpkg.sh): it waits
    up to ``timeout_s`` while another process holds dpkg's lock, as apt would, and fails at
    once, quoting dpkg, on anything else (a dependency problem never clears)."""
    return scripts.render("finish_dpkg", TIMEOUT=int(timeout_s))


APT_PROXY_CONF = converged.managed("/etc/apt/apt.conf.d/90gpufleet-proxy")


def proxy_text(proxy: str, bypass: tuple[str, ...]) -> str:
    """apt configuration: fetch through ``proxy``, straight from the ``bypass`` hosts (each
    value refused where apt.conf cannot hold it)."""
    quoted = apt_conf_string(proxy, "deploy_apt_proxy")  # the message masks a password
    return f"Acquire::http::Proxy {quoted};\n" + "".join(
        f'Acquire::http::Proxy::{apt_conf_name(name, "deploy_apt_proxy_bypass")} "DIRECT";\n'
        for name in bypass
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
    if family_of(profile) == "dnf":
        return
    timeout = apt_conf_string(int(timeout_s), "deploy_lock_timeout_s")
    converged.put("apt waits for a held lock", f"DPkg::Lock::Timeout {timeout};\n", APT_LOCK_CONF)
    if proxy:
        converged.put(
            "apt fetches through the shared proxy", proxy_text(proxy, bypass), APT_PROXY_CONF
        )
    else:
        converged.absent("No apt proxy", APT_PROXY_CONF)
    if profile.get("dpkg_interrupted"):
        server.shell(
            name="Finish the interrupted dpkg run",
            commands=[finish_dpkg_command(timeout_s)],
        )
