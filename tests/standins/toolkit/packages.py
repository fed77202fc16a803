"""What the four STAND-IN toolkit packages hold: control fields and files, per version.

Names, versions and package relations follow NVIDIA's real packages, so a deploy pins and
installs them exactly as it would NVIDIA's; the contents are small POSIX sh scripts (see
scripts/) that say they are stand-ins. Everything here is data: the repository's recipe hash
is taken over it, so changing a script or a field rebuilds the repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

VERSIONS = ("1.17.8-1", "1.17.9-1")
PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
MAINTAINER = "gpufleet lab <lab@gpufleet.invalid>"
DESCRIPTION_LEAD = "STAND-IN for the gpufleet lab, not NVIDIA's package"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
CONFIG_TOML = "/etc/nvidia-container-runtime/config.toml"

SUMMARIES = {
    "nvidia-container-toolkit": "NVIDIA Container Toolkit (runtime hook)",
    "nvidia-container-toolkit-base": "NVIDIA Container Toolkit base (nvidia-ctk, runtime)",
    "libnvidia-container-tools": "NVIDIA container runtime library (command-line tools)",
    "libnvidia-container1": "NVIDIA container runtime library",
}

DOC_TEXT = """\
STAND-IN for the gpufleet lab, not NVIDIA's libnvidia-container1.

This package was built by the gpufleet test harness (tests/standins/toolkit) and served by
the lab's local repository. It holds no library; it exists so that the deploy can install
and pin the same four packages it installs from NVIDIA's repository on a real fleet.
"""


@dataclass(frozen=True)
class FileSpec:
    """One file in a package: absolute path, mode, content."""

    path: str
    mode: int
    content: str


@dataclass(frozen=True)
class PackageSpec:
    """One binary package of one version."""

    name: str
    version: str
    depends: tuple[str, ...]
    files: tuple[FileSpec, ...]
    conffiles: tuple[str, ...] = field(default=())

    @property
    def description(self) -> str:
        """Debian's two-part description: a synopsis, then an indented body."""
        return (
            f"{DESCRIPTION_LEAD}: {SUMMARIES[self.name]}\n"
            " Built by the gpufleet test harness for its lab; never install it on a real host."
        )

    def deb_name(self, arch: str) -> str:
        """File name of the .deb, as Debian names them."""
        return f"{self.name}_{self.version}_{arch}.deb"


def upstream(version: str) -> str:
    """1.17.8 for 1.17.8-1: what the tools print as their version."""
    return version.rsplit("-", 1)[0]


def script(name: str, version: str) -> str:
    """A script from scripts/ with the version filled in."""
    return (
        (SCRIPTS / name)
        .read_text(encoding="utf-8")
        .replace("@UPSTREAM_VERSION@", upstream(version))
    )


def _bin(name: str, version: str) -> FileSpec:
    return FileSpec(f"/usr/bin/{name}", 0o755, script(name, version))


def package_specs(version: str) -> tuple[PackageSpec, ...]:
    """The four packages at `version`, with the relations NVIDIA's packages have."""
    return (
        PackageSpec(
            "nvidia-container-toolkit",
            version,
            (
                f"nvidia-container-toolkit-base (= {version})",
                f"libnvidia-container-tools (>= {version})",
            ),
            (_bin("nvidia-container-runtime-hook", version),),
        ),
        PackageSpec(
            "nvidia-container-toolkit-base",
            version,
            (),
            (
                _bin("nvidia-ctk", version),
                _bin("nvidia-container-runtime", version),
                FileSpec(CONFIG_TOML, 0o644, script("config.toml", version)),
            ),
            conffiles=(CONFIG_TOML,),
        ),
        PackageSpec(
            "libnvidia-container-tools",
            version,
            (f"libnvidia-container1 (>= {version})",),
            (_bin("nvidia-container-cli", version),),
        ),
        PackageSpec(
            "libnvidia-container1",
            version,
            (),
            (FileSpec("/usr/share/doc/libnvidia-container1/README.stand-in", 0o644, DOC_TEXT),),
        ),
    )


def all_specs(versions: tuple[str, ...] = VERSIONS) -> tuple[PackageSpec, ...]:
    """Every package of every version, oldest version first."""
    return tuple(spec for version in versions for spec in package_specs(version))
