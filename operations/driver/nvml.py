"""The NVML probe as one host command: the controller's pynvml module and the probe script
(nvml_probe.py) travel inside the command, compressed (one round trip, nothing installed),
and the host's own ``python3`` runs them from a private temporary directory that is removed
on every path. A host without python3 says so instead (``{"probe": "none", ...}``): the
caller falls back to what ``nvidia-smi`` can give.

pynvml (nvidia-ml-py) is about 300 KB, more than one command-line argument may hold
(Linux's MAX_ARG_STRLEN, 128 KiB): gzip and base64 bring it and the probe to about 60 KB.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
from functools import cache
from pathlib import Path
from typing import Any

import pynvml

PROBE = Path(__file__).with_name("nvml_probe.py")


@cache
def payload() -> str:
    """base64 of a gzipped tar holding pynvml.py and probe.py; the same bytes on every run
    (gzip's header time is 0, not now), so the probe's command does not change per run."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w") as tar,
    ):
        for name, path in (("pynvml.py", Path(pynvml.__file__)), ("probe.py", PROBE)):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buffer.getvalue()).decode()


def probe_command() -> str:
    """Shell that runs the probe and prints its JSON document (always exit 0)."""
    return (
        "if ! command -v python3 >/dev/null 2>&1; then "
        'echo \'{"probe": "none", "why": "python3 is not installed"}\'; exit 0; fi; '
        "d=$(mktemp -d) || exit 1; trap 'rm -rf \"$d\"' EXIT; "
        f'echo {payload()} | base64 -d | tar -xzf - -C "$d" && '
        "PYTHONDONTWRITEBYTECODE=1 python3 -I -c 'import sys; sys.path.insert(0, sys.argv[1]); "
        'import runpy; runpy.run_path(sys.argv[1] + "/probe.py", run_name="__main__")\' "$d" '
        '|| echo \'{"probe": "nvml", "error": "the probe failed"}\'; exit 0'
    )


def parse(output: list[str]) -> dict[str, Any]:
    """The probe's document, or ``{"probe": "nvml", "error": ...}`` for unreadable output."""
    for line in reversed(output):
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except ValueError:
                break
            if isinstance(found, dict) and "probe" in found:
                return found
    return {"probe": "nvml", "error": "the probe printed no document"}
