"""`.lab/state.json`: what `python -m lab up` brought up, read by inventory/lab.py.

    {"hosts": [{"name": "lab-1", "container": "gpufleet-lab-1", "port": 2221}, ...],
     "ssh_key": "/abs/.lab/id_ed25519", "known_hosts": "/abs/.lab/known_hosts",
     "image": "gpufleet-lab:debian12",
     "toolkit_repo": {"url": "http://172.17.0.5:8080", "fingerprint": "<40 hex digits>",
                      "container": "gpufleet-lab-repo", "versions": ["1.17.8-1", "1.17.9-1"]}}

Host entries may carry "address" (the bridge IP) and the state "vllm_standin"
({"image", "archive"}: the STAND-IN vLLM image and its `docker save` tarball) and
"dcgm_standin" (the same for the STAND-IN dcgm-exporter, given to GPU hosts only: entries
with a "variant", lab/gpu.py's GPU-shaped hosts, or "has_gpus": true).
`toolkit_repo` is the lab's STAND-IN NVIDIA Container Toolkit repository (lab/repo.py); it is
absent from state files written before it existed, and then the hosts get no repository data.

Only the standard library is used, so pyinfra inventories can import this module cheaply.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lab import IMAGE, LabError, lab_dir

STATE_FILE = "state.json"
_FINGERPRINT = re.compile(r"^[0-9A-F]{40}$")


def state_path(root: str | Path) -> Path:
    return lab_dir(Path(root)) / STATE_FILE


def _repo_problem(repo: Any) -> str | None:
    """What is wrong with a `toolkit_repo` entry, or None."""
    if not isinstance(repo, dict):
        return "'toolkit_repo' is not an object"
    url = repo.get("url")
    if not (isinstance(url, str) and url.startswith("http://")):
        return f"bad toolkit_repo url {url!r}"
    if not (isinstance(repo.get("fingerprint"), str) and _FINGERPRINT.match(repo["fingerprint"])):
        return f"bad toolkit_repo fingerprint {repo.get('fingerprint')!r}"
    return None


def validate_state(data: Any, where: str = STATE_FILE) -> dict[str, Any]:
    """`data` if it has the state file's shape; LabError naming `where` otherwise."""
    problem = None
    if not isinstance(data, dict):
        problem = "not a JSON object"
    elif not isinstance(data.get("hosts"), list):
        problem = "no 'hosts' list"
    elif not all(isinstance(data.get(k), str) for k in ("ssh_key", "known_hosts")):
        problem = "no 'ssh_key'/'known_hosts' paths"
    else:
        for host in data["hosts"]:
            if not (
                isinstance(host, dict)
                and isinstance(host.get("name"), str)
                and isinstance(host.get("container"), str)
                and isinstance(host.get("port"), int)
                and not isinstance(host.get("port"), bool)
                and 0 < host["port"] < 65536
            ):
                problem = f"bad host entry {host!r}"
                break
        if not problem and "toolkit_repo" in data:
            problem = _repo_problem(data["toolkit_repo"])
    if problem:
        raise LabError(
            f"{where} is damaged ({problem}): run `python -m lab down` then `python -m lab up`"
        )
    return data


def load_state(root: str | Path) -> dict[str, Any] | None:
    """The lab state under `root` (the repository root), or None when no fleet is up.
    Raises LabError when the file exists but cannot be used."""
    path = state_path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LabError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    return validate_state(data, str(path))


def make_state(
    hosts: list[tuple],
    ssh_key: Path,
    known_hosts: Path,
    image: str = IMAGE,
    toolkit_repo: dict[str, Any] | None = None,
    vllm_standin: dict[str, str] | None = None,
    apt_proxy: str | None = None,
    dcgm_standin: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The state for `hosts` given as (name, container, port[, bridge address]), the stand-in
    toolkit repository (url, fingerprint, ...) as lab.repo.ensure_repo returns it, and the
    stand-in vLLM image ({"image", "archive"}) as lab.fleet.ensure_standin_vllm does, and
    the stand-in dcgm-exporter image as lab.fleet.ensure_standin_dcgm does."""
    state = {
        "hosts": [
            {"name": h[0], "container": h[1], "port": h[2]}
            | ({"address": h[3]} if len(h) > 3 and h[3] else {})
            for h in hosts
        ],
        "ssh_key": str(Path(ssh_key).resolve()),
        "known_hosts": str(Path(known_hosts).resolve()),
        "image": image,
    }
    if toolkit_repo is not None:
        state["toolkit_repo"] = dict(toolkit_repo)
    if vllm_standin is not None:
        state["vllm_standin"] = dict(vllm_standin)
    if dcgm_standin is not None:
        state["dcgm_standin"] = dict(dcgm_standin)
    if apt_proxy:
        state["apt_proxy"] = apt_proxy
    return state


def save_state(root: str | Path, state: dict[str, Any]) -> Path:
    """Write the state atomically; returns its path."""
    path = state_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{STATE_FILE}.tmp")
    tmp.write_text(json.dumps(validate_state(state), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def remove_state(root: str | Path) -> bool:
    """Delete the state file; True if there was one."""
    try:
        state_path(root).unlink()
    except FileNotFoundError:
        return False
    return True


def repo_host_data(state: dict[str, Any]) -> dict[str, str]:
    """Host data pointing the deploy's toolkit layer at the lab's stand-in repository (its
    mirror setting, used for real), or {} when the state has none."""
    repo = state.get("toolkit_repo")
    if not repo:
        return {}
    return {
        "toolkit_repo_url": repo["url"],
        "toolkit_repo_fingerprint": repo["fingerprint"].replace(" ", "").upper(),
    }


def vllm_host_data(state: dict[str, Any], host: dict[str, Any]) -> dict[str, str]:
    """Host data for the vLLM layer: the STAND-IN image, loaded from its archive (the lab has
    no registry), and the bridge address where the controller (tests, Prometheus) reaches
    the host's API; {} for state files written before they existed."""
    data = {"host_address": host["address"]} if host.get("address") else {}
    standin = state.get("vllm_standin")
    if isinstance(standin, dict) and standin.get("image") and standin.get("archive"):
        data |= {"vllm_image": standin["image"], "vllm_image_archive": standin["archive"]}
    return data


def is_gpu_host(host: dict[str, Any]) -> bool:
    """A GPU-shaped lab host (lab/gpu.py's, which have a variant), or one marked has_gpus."""
    return bool(host.get("variant")) or host.get("has_gpus") is True


def dcgm_host_data(state: dict[str, Any], host: dict[str, Any]) -> dict[str, str]:
    """Host data for the monitoring layer's dcgm-exporter on a GPU host: the STAND-IN image,
    loaded from its archive (the lab has no registry); {} for GPU-less hosts (they run no
    dcgm-exporter) and for state files written before it existed."""
    standin = state.get("dcgm_standin")
    if not is_gpu_host(host) or not isinstance(standin, dict):
        return {}
    if not (standin.get("image") and standin.get("archive")):
        return {}
    return {
        "monitoring_dcgm_image": standin["image"],
        "monitoring_dcgm_image_archive": standin["archive"],
    }


def apt_proxy_host_data(state: dict[str, Any]) -> dict[str, Any]:
    """The lab's shared apt cache as every host's apt proxy; the lab's own stand-in repository
    is reached directly: it is on the same bridge, and apt-cacher-ng fetching from its
    Python http.server failed in the lab ("503 Connection closed, check DlMaxRetries")."""
    if not state.get("apt_proxy"):
        return {}
    repo = (state.get("toolkit_repo") or {}).get("url", "")
    bypass = [urlsplit(repo).hostname] if repo else []
    return {"deploy_apt_proxy": state["apt_proxy"], "deploy_apt_proxy_bypass": bypass}


def inventory_hosts(state: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """pyinfra inventory entries `(name, data)` for the hosts of `state`: SSH as root to
    127.0.0.1:<port> with the lab key, host keys checked strictly against known_hosts, and
    the stand-in toolkit repository when the state has one."""
    return [
        (
            host["name"],
            {
                "ssh_hostname": "127.0.0.1",
                "ssh_port": host["port"],
                "ssh_user": "root",
                "ssh_key": state["ssh_key"],
                "ssh_known_hosts_file": state["known_hosts"],
                "ssh_strict_host_key_checking": "yes",
                **repo_host_data(state),
                **vllm_host_data(state, host),
                **dcgm_host_data(state, host),
                **apt_proxy_host_data(state),
            },
        )
        for host in state["hosts"]
    ]
