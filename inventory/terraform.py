"""Inventory from Terraform: ``pyinfra inventory/terraform.py deploy.py``.

The hosts come from ``terraform output -json``: set GPUFLEET_TERRAFORM_OUTPUT to a file that
holds it, or GPUFLEET_TERRAFORM_DIR to a Terraform directory to run it in (terraform on PATH).
The output ``gpufleet_hosts`` (GPUFLEET_TERRAFORM_KEY names another) lists the hosts and
their groups; docs/terraform-inventory.md has the convention. Every host goes through
``checked_hosts``, so a bad document stops the run before any host is reached. group_data
works as for any inventory: group_data/<group>.py for each group the output names.
"""

import sys as _sys
from pathlib import Path as _Path

_ROOT = _Path(__file__).resolve().parent.parent  # pyinfra sets __file__ when it execs this
if str(_ROOT) not in _sys.path:
    _sys.path.insert(0, str(_ROOT))

from operations.inventory_sources.terraform import terraform_groups as _groups  # noqa: E402

# pyinfra takes each module-level list as a group: one per group the output names (the names
# are checked identifiers, never ``all`` or ``_…``, so they cannot replace the names above)
globals().update(_groups())
