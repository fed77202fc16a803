"""The flat apt repository's index: Packages, Packages.gz and Release, written in Python
(what apt-ftparchive would write), then signed into InRelease and Release.gpg.

Layout, as NVIDIA's libnvidia-container repository has it, so the deploy uses the same paths
for the real repository and this stand-in:

    <root>/gpgkey                      ASCII-armored public key
    <root>/stable/deb/<arch>/*.deb     the packages
    <root>/stable/deb/<arch>/{Packages,Packages.gz,Release,InRelease,Release.gpg}

A host uses it as `deb [signed-by=KEYRING] <url>/stable/deb/$(ARCH) /`.
"""

from __future__ import annotations

import gzip
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

DEB_DIR = "stable/deb"  # under the root; then the architecture
KEY_FILE = "gpgkey"
ORIGIN = "gpufleet-lab-standin"
LABEL = "gpufleet lab stand-in NVIDIA container toolkit"
HASHES = (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"))
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class BuiltDeb:
    """A .deb in the repository directory and its control paragraph."""

    path: Path
    control: str


def packages_entry(deb: BuiltDeb) -> str:
    """The deb's Packages paragraph: its control fields, Description last, with Filename,
    Size and checksums added before it."""
    data = deb.path.read_bytes()
    head, _, description = deb.control.partition("Description:")
    extra = [
        f"Filename: ./{deb.path.name}",
        f"Size: {len(data)}",
        f"MD5sum: {hashlib.md5(data).hexdigest()}",
        f"SHA1: {hashlib.sha1(data).hexdigest()}",
        f"SHA256: {hashlib.sha256(data).hexdigest()}",
    ]
    return head + "".join(f"{line}\n" for line in extra) + "Description:" + description


def packages_text(debs: list[BuiltDeb]) -> str:
    """The Packages file: one paragraph per deb, separated by blank lines."""
    return "\n".join(packages_entry(deb) for deb in debs)


def rfc2822(epoch: float) -> str:
    """A Release Date in UTC, independent of the locale."""
    t = time.gmtime(epoch)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} UTC"
    )


def release_text(arch: str, files: dict[str, bytes], epoch: float) -> str:
    """The Release file listing `files` (name -> content) with size and checksums."""
    lines = [
        f"Origin: {ORIGIN}",
        f"Label: {LABEL}",
        f"Architectures: {arch}",
        f"Date: {rfc2822(epoch)}",
        "Description: STAND-IN for the gpufleet lab, not NVIDIA's repository",
    ]
    for field, algo in HASHES:
        lines.append(f"{field}:")
        for name in sorted(files):
            digest = hashlib.new(algo, files[name]).hexdigest()
            lines.append(f" {digest} {len(files[name]):>8} {name}")
    return "\n".join(lines) + "\n"


def write_index(deb_dir: Path, arch: str, debs: list[BuiltDeb], epoch: float) -> Path:
    """Write Packages, Packages.gz and Release into deb_dir; returns Release's path."""
    packages = packages_text(debs).encode()
    compressed = gzip.compress(packages, compresslevel=9, mtime=0)
    (deb_dir / "Packages").write_bytes(packages)
    (deb_dir / "Packages.gz").write_bytes(compressed)
    release = deb_dir / "Release"
    files = {"Packages": packages, "Packages.gz": compressed}
    release.write_text(release_text(arch, files, epoch), encoding="utf-8")
    return release
