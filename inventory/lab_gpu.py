"""pyinfra inventory of the lab's STAND-IN GPU hosts (lab/gpu.py; never a real fleet):
`python -m lab up` and `python -m lab gpu up h100` (or hgx8) first, then
`pyinfra inventory/lab_gpu.py deploy.py`.

The hosts (lab-gpu-h100, lab-gpu-hgx8: whichever are up) are in the group `lab`, so
group_data/lab.py applies to them as to lab-1..N (the lab's Docker, toolkit and vLLM
settings), and pyinfra also puts them in `lab_gpu` (this file's name). Their host data,
which wins over group data, says what the stand-in describes: GPUs and their count, the
described driver's branch, and `driver_source = "preinstalled"` (the stand-in driver is
installed outside the package manager, under /usr/local/nvidia, as on the recorded cloud
image). SSH as for the lab hosts, with the GPU hosts' own known_hosts (.lab/gpu/).
"""

import sys as _sys
from pathlib import Path as _Path

from pyinfra.api.exceptions import PyinfraError as _PyinfraError

_ROOT = _Path(__file__).resolve().parent.parent  # pyinfra sets __file__ when it execs this
if str(_ROOT) not in _sys.path:
    _sys.path.insert(0, str(_ROOT))

from lab import LabError as _LabError  # noqa: E402
from lab.gpu import inventory_hosts as _inventory_hosts  # noqa: E402
from operations.config.load import checked_hosts as _checked_hosts  # noqa: E402

try:
    lab = _checked_hosts(_inventory_hosts(_ROOT))
except _LabError as _exc:
    raise _PyinfraError(str(_exc)) from None
# The HGX stand-in runs this inventory's Prometheus (the monitoring layer's server), scraping
# both GPU hosts' node-exporter, dcgm-exporter (STAND-IN) and vLLM (STAND-IN).
monitoring = [name for name, _data in lab if name == "lab-gpu-hgx8"]
