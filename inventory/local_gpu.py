"""pyinfra inventory of the machine pyinfra runs on (``@local``), as a GPU host whose driver
came with it (a cloud GPU image): what `./dev gpu-check` deploys (``--dry``) and verifies.

    pyinfra inventory/local_gpu.py deploy.py --dry
    pytest tests/verify --inventory inventory/local_gpu.py

One group, ``local_gpu``, holding ``@local`` (reached in place, no SSH) with host data that
overrides group_data/all.py: the host has GPUs and its driver is ``preinstalled`` (installed
outside the package manager, adopted as it is). Anything else the machine needs, its GPU
count or driver branch say, comes from ``GPUFLEET_GPU_CHECK_DATA``, a JSON object of settings
(``'{"host_gpu_count": 1, "driver_branch": "570"}'``) merged over that data, so the verify run
and the deploy read the same values.
"""

import json as _json
import os as _os
import sys as _sys
from pathlib import Path as _Path

from pyinfra.api.exceptions import PyinfraError as _PyinfraError

_ROOT = _Path(__file__).resolve().parent.parent  # pyinfra sets __file__ when it execs this
if str(_ROOT) not in _sys.path:
    _sys.path.insert(0, str(_ROOT))

from operations.config.load import checked_hosts as _checked_hosts  # noqa: E402

_ENV = "GPUFLEET_GPU_CHECK_DATA"

_DATA = {
    "host_has_gpus": True,
    "driver_source": "preinstalled",
    "gateway_mode": "off",  # the check serves nothing: no nginx put in front of a server
}


def _extra() -> dict:
    """The settings ``GPUFLEET_GPU_CHECK_DATA`` adds (a JSON object), or PyinfraError."""
    text = _os.environ.get(_ENV, "").strip()
    if not text:
        return {}
    try:
        found = _json.loads(text)
    except ValueError as error:
        raise _PyinfraError(f"{_ENV}: not JSON: {error}") from None
    if not isinstance(found, dict):
        raise _PyinfraError(f"{_ENV}: must be a JSON object of settings, got {text!r}")
    return found


local_gpu = _checked_hosts([("@local", {**_DATA, **_extra()})])
