"""Example production inventory: copy it, then list your own GPU hosts.

Each module-level list is a pyinfra group; group_data/<group>.py overrides group_data/all.py
for its hosts and per-host data below overrides both. SSH host keys are verified against your
known_hosts (pyinfra's default); never turn that off for a production fleet. Each group is
passed through ``checked_hosts``, so broken SSH data stops the run before any host is reached.
"""

import sys as _sys
from pathlib import Path as _Path

_ROOT = _Path(__file__).resolve().parent.parent  # pyinfra sets __file__ when it execs this
if str(_ROOT) not in _sys.path:
    _sys.path.insert(0, str(_ROOT))

from operations.config.load import checked_hosts  # noqa: E402

# 8-GPU HGX/DGX nodes: NVSwitch, so the fabric manager is installed (driver_fabric_manager=auto).
gpu_servers = checked_hosts(
    [
        ("gpu-node-01.example.internal", {"host_gpu_count": 8}),
        ("gpu-node-02.example.internal", {"host_gpu_count": 8}),
    ]
)

# PCIe inference nodes with a different driver branch pinned for the group's own reasons.
inference_pcie = checked_hosts(
    [
        ("infer-01.example.internal", {"host_gpu_count": 2, "driver_branch": "570"}),
    ]
)
