"""pyinfra inventory of the local lab fleet: `python -m lab up` first, then
`pyinfra inventory/lab.py deploy.py`.

One group, `lab_hosts`; pyinfra also puts every host here in the group `lab` (this file's
name), so group_data/lab.py applies to them. Hosts are reached as root on 127.0.0.1 at their
published port with the lab's key, and their host keys are checked strictly against
.lab/known_hosts. When the lab serves its STAND-IN toolkit repository (lab/repo.py), every
host also gets `toolkit_repo_url` and `toolkit_repo_fingerprint` pointing at it, so the
toolkit layer installs from it as from a mirror. Names starting with `_` are not groups.
"""

import sys as _sys
from pathlib import Path as _Path

from pyinfra.api.exceptions import PyinfraError as _PyinfraError

_ROOT = _Path(__file__).resolve().parent.parent  # pyinfra sets __file__ when it execs this
if str(_ROOT) not in _sys.path:
    _sys.path.insert(0, str(_ROOT))

from lab import LabError as _LabError  # noqa: E402
from lab.state import inventory_hosts as _inventory_hosts  # noqa: E402
from lab.state import load_state as _load_state  # noqa: E402
from operations.config.load import checked_hosts as _checked_hosts  # noqa: E402

try:
    _state = _load_state(_ROOT)
except _LabError as _exc:
    raise _PyinfraError(str(_exc)) from None
if _state is None:
    raise _PyinfraError("no lab fleet is up: run `python -m lab up` first")

lab_hosts = _checked_hosts(_inventory_hosts(_state))
# The lab's Prometheus (the monitoring layer's server) runs on the first host.
monitoring = [lab_hosts[0][0]] if lab_hosts else []
