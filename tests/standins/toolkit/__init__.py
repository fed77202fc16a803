"""A STAND-IN NVIDIA Container Toolkit apt repository, built by the test harness.

NVIDIA's repositories cannot be reached from the lab or CI, so the lab serves this one at a
URL and the deploy installs from it through its mirror setting (`toolkit_repo_url`), exactly
as it would from NVIDIA's repository or a mirror of it. It holds two versions of the four
toolkit packages (so a version pin means something), whose contents are small shell scripts
that say "stand-in" and never reach a real fleet.

    info = build_repo(Path(".lab/standin-toolkit-repo"), Path(".lab/standin-toolkit-gnupg"))
    info.fingerprint  # 40 upper-case hex digits of the signing key
    info.versions     # ("1.17.8-1", "1.17.9-1")

The build is cached: `<root>/.standin-recipe.json` records the recipe hash and key it was made
with, and a call with the same recipe and key changes nothing. Needs `dpkg-deb` and `gpg`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.standins.toolkit import signing
from tests.standins.toolkit.archive import DEB_DIR, KEY_FILE, BuiltDeb, write_index
from tests.standins.toolkit.deb import build_deb
from tests.standins.toolkit.packages import PACKAGES, VERSIONS, all_specs

__all__ = ["DEB_DIR", "KEY_FILE", "PACKAGES", "VERSIONS", "RepoInfo", "build_repo", "host_arch"]

BUILDER_VERSION = 1  # bump when the build code changes in a way the recipe does not show
STAMP = ".standin-recipe.json"
_STAGING = ".staging"
_PUBLISHED = (KEY_FILE, DEB_DIR.split("/")[0])  # what a build puts at the root


@dataclass(frozen=True)
class RepoInfo:
    """A built stand-in repository."""

    root: Path  # holds gpgkey and stable/deb/<arch>/
    fingerprint: str  # signing key, 40 upper-case hex digits
    versions: tuple[str, ...]  # of every package, oldest first
    arch: str  # Debian architecture of the packages
    packages: tuple[str, ...] = PACKAGES

    @property
    def deb_dir(self) -> Path:
        """The flat repository directory: .debs, Packages, Release, InRelease."""
        return self.root / DEB_DIR / self.arch


def host_arch() -> str:
    """This machine's Debian architecture (`dpkg --print-architecture`)."""
    proc = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def recipe_hash(arch: str) -> str:
    """A hash of everything that defines the repository's content except the key."""
    recipe = {
        "builder": BUILDER_VERSION,
        "arch": arch,
        "uid": signing.KEY_UID,
        "specs": [dataclasses.asdict(spec) for spec in all_specs()],
    }
    blob = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _stamp(recipe: str, fingerprint: str, arch: str) -> dict:
    return {"recipe": recipe, "fingerprint": fingerprint, "arch": arch, "versions": VERSIONS}


def _is_current(root: Path, stamp: dict) -> bool:
    """True when root holds a complete build with this recipe and key."""
    try:
        recorded = json.loads((root / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if recorded != json.loads(json.dumps(stamp)):
        return False
    deb_dir = root / DEB_DIR / stamp["arch"]
    needed = [root / KEY_FILE, deb_dir / "InRelease", deb_dir / "Packages"]
    return all(path.is_file() for path in needed)


def _build_into(staging: Path, arch: str, home: Path, fingerprint: str) -> None:
    """Build the whole repository under `staging`."""
    deb_dir = staging / DEB_DIR / arch
    deb_dir.mkdir(parents=True)
    debs = [BuiltDeb(*build_deb(spec, arch, deb_dir)) for spec in all_specs()]
    release = write_index(deb_dir, arch, debs, time.time())
    signing.sign_release(home, fingerprint, release)
    (staging / KEY_FILE).write_text(signing.export_public(home, fingerprint), encoding="utf-8")
    for path in staging.rglob("*"):  # readable by any server, whatever the umask
        path.chmod(0o755 if path.is_dir() else 0o644)


def _publish(staging: Path, root: Path) -> None:
    """Move the build's top-level entries into root, replacing the old ones. root itself is
    kept: the lab's repository container bind-mounts it, and a replaced directory would
    leave the mount on the old one."""
    for name in _PUBLISHED:
        old = root / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
        (staging / name).rename(old)


def build_repo(out_dir: Path, gnupg_home: Path, arch: str | None = None) -> RepoInfo:
    """Build the stand-in repository into out_dir (its root), signed with the stand-in key in
    gnupg_home (made on first use). Does nothing when out_dir already holds this recipe,
    signed with this key."""
    root = Path(out_dir).resolve()
    arch = arch or host_arch()
    fingerprint = signing.ensure_key(Path(gnupg_home))
    stamp = _stamp(recipe_hash(arch), fingerprint, arch)
    info = RepoInfo(root, fingerprint, VERSIONS, arch)
    if _is_current(root, stamp):
        return info
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    (root / STAMP).unlink(missing_ok=True)
    staging = root / _STAGING
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _build_into(staging, arch, Path(gnupg_home), fingerprint)
        _publish(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (root / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return info
