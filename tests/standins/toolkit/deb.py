"""Build one .deb from a PackageSpec with `dpkg-deb` (stdlib otherwise).

Files are owned by root in the archive (--root-owner-group) and their times are clamped to a
fixed epoch, so a build does not depend on who runs it or when.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.standins.toolkit.packages import MAINTAINER, PackageSpec

EPOCH = 1735689600  # 2025-01-01T00:00:00Z: every file's mtime, and SOURCE_DATE_EPOCH


def control_text(spec: PackageSpec, arch: str, installed_kib: int) -> str:
    """DEBIAN/control for `spec`."""
    fields = [
        ("Package", spec.name),
        ("Version", spec.version),
        ("Architecture", arch),
        ("Maintainer", MAINTAINER),
        ("Installed-Size", str(installed_kib)),
        ("Depends", ", ".join(spec.depends)),
        ("Section", "utils"),
        ("Priority", "optional"),
        ("Description", spec.description),
    ]
    return "".join(f"{key}: {value}\n" for key, value in fields if value)


def _write(path: Path, content: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)


def _stage(spec: PackageSpec, arch: str, tree: Path) -> str:
    """Lay out the package tree: its files, DEBIAN/control, conffiles and md5sums. Returns
    the control text (the repository index repeats it)."""
    sums = []
    size = 0
    for item in spec.files:
        data = item.content.encode()
        _write(tree / item.path.lstrip("/"), item.content, item.mode)
        sums.append(f"{hashlib.md5(data).hexdigest()}  {item.path.lstrip('/')}\n")
        size += len(data)
    debian = tree / "DEBIAN"
    debian.mkdir(mode=0o755)
    debian.chmod(0o755)
    control = control_text(spec, arch, max(1, (size + 1023) // 1024))
    _write(debian / "control", control, 0o644)
    _write(debian / "md5sums", "".join(sums), 0o644)
    if spec.conffiles:
        _write(debian / "conffiles", "".join(f"{p}\n" for p in spec.conffiles), 0o644)
    for path in [tree, *tree.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)
    return control


def build_deb(spec: PackageSpec, arch: str, out_dir: Path) -> tuple[Path, str]:
    """Build `spec` into out_dir/<name>_<version>_<arch>.deb; returns its path and its
    control text."""
    target = Path(out_dir) / spec.deb_name(arch)
    tree = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=out_dir))
    try:
        control = _stage(spec, arch, tree)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
        proc = subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(target)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"dpkg-deb failed for {target.name}: {proc.stderr.strip()}")
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return target, control
