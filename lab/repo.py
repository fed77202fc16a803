"""The lab's STAND-IN NVIDIA Container Toolkit repository, served to the lab hosts.

NVIDIA's repositories cannot be reached from the lab, so `python -m lab up` builds a stand-in
apt repository with tests/standins/toolkit (into .lab/standin-toolkit-repo/, signed with a key
in .lab/standin-toolkit-gnupg/) and serves it from the container `gpufleet-lab-repo`:
`python3 -m http.server` in the lab image, the repository mounted read-only. No port is
published on the controller; lab hosts reach it over the Docker bridge at the container's
address, which goes into .lab/state.json and from there into each host's `toolkit_repo_url`
(the deploy's mirror setting, used for real) and `toolkit_repo_fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lab import IMAGE, LABEL, LabError, lab_dir
from lab.engine import Log, docker, ip_of
from lab.image import image_id

REPO_CONTAINER = "gpufleet-lab-repo"
ROLE_LABEL = f"{LABEL}.role"
ROLE = "standin-toolkit-repo"
SPEC_LABEL = f"{LABEL}.spec"  # hash of the create arguments: other settings, new container
REPO_PORT = 8080
SERVE_DIR = "/srv/repo"
REPO_DIR = "standin-toolkit-repo"  # under .lab/
GNUPG_DIR = "standin-toolkit-gnupg"  # under .lab/
READY_TIMEOUT = 20.0
_REUSABLE = ("running", "exited", "paused")  # states `up` starts again instead of recreating

_FETCH = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2).read()"


@dataclass(frozen=True)
class RepoContainer:
    """What `docker inspect` says about the repository container."""

    status: str  # docker's State.Status
    image: str  # image id
    source: str  # host path mounted at SERVE_DIR ("" if none)
    ip: str  # address on its Docker network ("" when not running)
    spec: str  # SPEC_LABEL


def repo_paths(root: Path) -> tuple[Path, Path]:
    """(repository root, GnuPG home) under the lab directory."""
    base = lab_dir(Path(root)).resolve()
    return base / REPO_DIR, base / GNUPG_DIR


def repo_url(ip: str, port: int = REPO_PORT) -> str:
    """The base URL hosts use: <url>/gpgkey and <url>/stable/deb/$(ARCH)."""
    return f"http://{ip}:{port}"


def repo_create_args(source: Path, image: str = IMAGE, port: int = REPO_PORT) -> list[str]:
    """`docker create` arguments for the repository container: a read-only static HTTP
    server on the Docker bridge only (nothing published on the controller)."""
    args = [
        "--name", REPO_CONTAINER,
        "--hostname", "lab-repo",
        "--label", f"{LABEL}=1",
        "--label", f"{ROLE_LABEL}={ROLE}",
        "--restart", "no",  # like the hosts: `python -m lab up` starts it again
        "--stop-signal", "SIGINT",  # http.server exits cleanly on KeyboardInterrupt
        "--read-only",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "-v", f"{Path(source).resolve()}:{SERVE_DIR}:ro",
        "--entrypoint", "python3",
        image,
        "-m", "http.server", str(port), "--bind", "0.0.0.0", "--directory", SERVE_DIR,
    ]  # fmt: skip
    spec = hashlib.sha256("\0".join(args).encode()).hexdigest()[:16]
    return ["create", "--label", f"{SPEC_LABEL}={spec}", *args]


def spec_of(args: list[str]) -> str:
    """The SPEC_LABEL value in create arguments."""
    prefix = f"{SPEC_LABEL}="
    return next((a[len(prefix) :] for a in args if a.startswith(prefix)), "")


def parse_repo_container(info: dict) -> RepoContainer:
    """A RepoContainer from one `docker inspect` object."""
    mounts = info.get("Mounts") or []
    served = [m for m in mounts if m.get("Destination") == SERVE_DIR]
    source = str(served[0].get("Source", "")) if served else ""
    labels = (info.get("Config") or {}).get("Labels") or {}
    return RepoContainer(
        status=str((info.get("State") or {}).get("Status", "unknown")),
        image=str(info.get("Image", "")),
        source=source,
        ip=ip_of(info),
        spec=str(labels.get(SPEC_LABEL, "")),
    )


def recreate_reason(
    found: RepoContainer | None, args: list[str], image_id: str | None, source: Path
) -> str | None:
    """Why the container must be made again, or None when it can be kept (and started)."""
    if found is None:
        return "missing"
    if found.status not in _REUSABLE:
        return f"it is {found.status}"
    if found.spec != spec_of(args):
        return "its settings changed"
    if image_id and found.image != image_id:
        return "the lab image changed"
    if found.source != str(Path(source).resolve()):
        return "the mounted repository moved"
    return None


def inspect_repo() -> RepoContainer | None:
    """The repository container as it is now, or None when there is none."""
    proc = docker("inspect", "--type", "container", REPO_CONTAINER, check=False)
    if proc.returncode != 0:
        return None
    infos = json.loads(proc.stdout or "[]")
    return parse_repo_container(infos[0]) if infos else None


def remove_repo() -> bool:
    """Remove the repository container; True if there was one. The built repository and
    its key stay in .lab/ (like the image, they are only rebuilt when their recipe changes)."""
    existed = docker("inspect", "--type", "container", REPO_CONTAINER, check=False)
    # `docker rm -f` succeeds on a missing container too: ask first
    docker("rm", "-f", REPO_CONTAINER, check=False)
    return existed.returncode == 0


def _running_container(source: Path, log: Log) -> RepoContainer:
    """Make the container run with the current image and mount, keeping it when it can."""
    args = repo_create_args(source)
    found = inspect_repo()
    why = recreate_reason(found, args, image_id(), source)
    if why:
        log(f"creating {REPO_CONTAINER} ({why})")
        remove_repo()
        docker(*args)
        docker("start", REPO_CONTAINER)
    elif found.status == "paused":
        docker("unpause", REPO_CONTAINER)
    elif found.status != "running":
        log(f"starting {REPO_CONTAINER}")
        docker("start", REPO_CONTAINER)
    current = inspect_repo()
    if current is None or current.status != "running" or not current.ip:
        raise LabError(f"{REPO_CONTAINER} is not running: see `docker logs {REPO_CONTAINER}`")
    return current


def wait_serving(url: str, path: str, timeout: float = READY_TIMEOUT) -> None:
    """Wait until the server answers `url/path` on its bridge address (what hosts use),
    asked from inside its own container so the controller's routing does not matter."""
    deadline = time.monotonic() + timeout
    while True:
        probe = docker(
            "exec", REPO_CONTAINER, "python3", "-c", _FETCH, f"{url}/{path}", check=False
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise LabError(
                f"{REPO_CONTAINER} does not serve {url}/{path} after {timeout:.0f}s: "
                f"see `docker logs {REPO_CONTAINER}`"
            )
        time.sleep(0.3)


def ensure_repo(root: Path, log: Log = print) -> dict:
    """Build the stand-in repository (cached) and serve it. Idempotent. Returns what goes
    into the lab state under "toolkit_repo": url, fingerprint, container, versions."""
    try:
        from tests.standins.toolkit import DEB_DIR, build_repo
    except ImportError as exc:  # the lab runs from a checkout, which has tests/
        raise LabError(f"cannot load the stand-in repository builder: {exc}") from None
    missing = [tool for tool in ("dpkg-deb", "gpg") if shutil.which(tool) is None]
    if missing:
        raise LabError(f"the stand-in toolkit repository needs {' and '.join(missing)}")
    source, gnupg = repo_paths(root)
    try:
        info = build_repo(source, gnupg)
    except (OSError, RuntimeError) as exc:
        raise LabError(f"building the stand-in toolkit repository failed: {exc}") from None
    current = _running_container(info.root, log)
    url = repo_url(current.ip)
    wait_serving(url, f"{DEB_DIR}/{info.arch}/InRelease")
    return {
        "url": url,
        "fingerprint": info.fingerprint,
        "container": REPO_CONTAINER,
        "versions": list(info.versions),
    }


def status_line(recorded: dict | None, engine: bool) -> str:
    """One line on the repository for `python -m lab status`."""
    want = (recorded or {}).get("url")
    if not engine:
        return f"stand-in toolkit repo: {want or '-'} (no Docker engine answers)"
    current = inspect_repo()
    if current is None:
        return f"stand-in toolkit repo: {REPO_CONTAINER} missing: run `python -m lab up`"
    url = repo_url(current.ip) if current.ip else "-"
    line = f"stand-in toolkit repo: {REPO_CONTAINER} {current.status}, {url}"
    if want and url != want:
        line += f" (state.json says {want}: run `python -m lab up`)"
    return line
