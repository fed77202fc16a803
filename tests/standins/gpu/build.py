"""Builds the STAND-IN ``libnvidia-ml.so.1`` (libnvidia-ml.c beside this file) with gcc.

    library = build_library(Path(".lab/standin-gpu"))  # .../libnvidia-ml.so.1

For tests and the lab only, never for a real fleet. The build is cached by the source's hash
(and the compiler's flags): a second call with the same source compiles nothing. The library
is compiled to a temporary name and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("libnvidia-ml.c")
LIBRARY = "libnvidia-ml.so.1"
STAMP = ".source-sha256"
FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-Wl,-soname," + LIBRARY)


class BuildError(RuntimeError):
    """The stand-in library could not be built (no gcc, or it failed)."""


def source_hash() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(FLAGS).encode())
    return digest.hexdigest()


def build_library(out_dir: Path) -> Path:
    """``out_dir/libnvidia-ml.so.1``, compiled unless already built from this source."""
    out_dir.mkdir(parents=True, exist_ok=True)
    library, stamp = out_dir / LIBRARY, out_dir / STAMP
    wanted = source_hash()
    if library.is_file() and stamp.is_file() and stamp.read_text().strip() == wanted:
        return library
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError(
            "gcc is not installed: it is needed to build the STAND-IN libnvidia-ml.so.1 "
            "(tests/standins/gpu); install it (Debian: apt-get install gcc)"
        )
    fd, partial = tempfile.mkstemp(prefix=".libnvidia-ml.", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        done = subprocess.run(
            [gcc, *FLAGS, "-o", partial, str(SOURCE)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise BuildError(f"gcc failed on {SOURCE} (exit {done.returncode}):\n{done.stderr}")
        os.chmod(partial, 0o755)
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    stamp.write_text(wanted + "\n")
    return library
