"""The lab fleet: local Debian 12 "hosts" (systemd + sshd containers) for pyinfra.

`python -m lab up` brings up N containers on the local Docker engine that behave like
small servers reachable over real SSH on 127.0.0.1, so `pyinfra inventory/lab.py deploy.py`
runs without a cloud account. Next to them, the container `gpufleet-lab-repo` serves a
STAND-IN NVIDIA Container Toolkit apt repository (built by tests/standins/toolkit) over the
Docker bridge, since NVIDIA's cannot be reached. Only the standard library is used here, plus
the `docker`, `debootstrap`, `ssh`, `ssh-keygen`, `dpkg-deb` and `gpg` programs.

Public API (stable, used by inventory/lab.py and tests):

- `lab.LabError`: the one exception `python -m lab` turns into a one-line error.
- `lab.state.load_state(root)`, `lab.state.inventory_hosts(state)`, `lab.state.state_path(root)`.
- `lab.fleet.up(root, hosts)`, `lab.fleet.down(root)`, `lab.fleet.status(root)` (the hosts as
  containers: lab.hosts; their keys and readiness: lab.ready),
  `lab.fleet.serve_repo(root)`.
- `lab.repo.ensure_repo(root)`: the stand-in repository, built and served; its entry in
  `.lab/state.json` is `toolkit_repo` = {url, fingerprint, container, versions}, and
  `lab.state.repo_host_data(state)` turns it into the hosts' `toolkit_repo_url` and
  `toolkit_repo_fingerprint`.
- `lab.image.ensure_image(root, rebuild=False, mirror=None)`.
- `lab.engine.ensure_engine()`.
- `lab.mirror.read_apt_sources()`, `lab.mirror.pick_mirror()`, `lab.mirror.render_image_sources()`.
"""

from __future__ import annotations

from pathlib import Path

IMAGE = "gpufleet-lab:debian12"
LABEL = "gpufleet-lab"  # containers and volumes carry the label gpufleet-lab=1
SUITE = "bookworm"


class LabError(Exception):
    """A failure explained in one line; `python -m lab` prints it and exits non-zero."""


def repo_root() -> Path:
    """The repository root: the parent of the `lab` package."""
    return Path(__file__).resolve().parent.parent


def lab_dir(root: Path) -> Path:
    """Where the lab keeps keys, known_hosts and state (git-ignored)."""
    return Path(root) / ".lab"
