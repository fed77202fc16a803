"""Unit tests of lab.state and inventory/lab.py."""

import json
import shutil
from pathlib import Path

import pytest
from pyinfra.api.exceptions import PyinfraError

from lab import LabError
from lab.state import (
    inventory_hosts,
    load_state,
    make_state,
    remove_state,
    repo_host_data,
    save_state,
    state_path,
    validate_state,
)

REPO = Path(__file__).resolve().parents[2]


def _state(tmp_path):
    return make_state(
        [("lab-1", "gpufleet-lab-1", 2221), ("lab-2", "gpufleet-lab-2", 2223)],
        tmp_path / ".lab/id_ed25519",
        tmp_path / ".lab/known_hosts",
    )


def test_save_load_remove_roundtrip(tmp_path):
    assert load_state(tmp_path) is None
    state = _state(tmp_path)
    path = save_state(tmp_path, state)
    assert path == state_path(tmp_path) == tmp_path / ".lab/state.json"
    assert load_state(tmp_path) == state
    assert json.loads(path.read_text())["image"] == "gpufleet-lab:debian12"
    assert Path(state["ssh_key"]).is_absolute()
    assert remove_state(tmp_path) is True
    assert remove_state(tmp_path) is False
    assert load_state(tmp_path) is None


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"hosts": {}},
        {"hosts": [], "ssh_key": "/k"},
        {"hosts": [{"name": "lab-1", "container": "c", "port": "2221"}], "ssh_key": "/k",
         "known_hosts": "/h"},
        {"hosts": [{"name": "lab-1", "container": "c", "port": 0}], "ssh_key": "/k",
         "known_hosts": "/h"},
        {"hosts": [{"name": "lab-1", "container": "c", "port": True}], "ssh_key": "/k",
         "known_hosts": "/h"},
    ],
)  # fmt: skip
def test_validate_state_rejects_bad_shapes(data):
    with pytest.raises(LabError, match="python -m lab down"):
        validate_state(data)


def test_load_state_damaged_file(tmp_path):
    (tmp_path / ".lab").mkdir()
    state_path(tmp_path).write_text("{not json")
    with pytest.raises(LabError, match="damaged"):
        load_state(tmp_path)


def test_inventory_hosts(tmp_path):
    state = _state(tmp_path)
    hosts = inventory_hosts(state)
    assert [name for name, _ in hosts] == ["lab-1", "lab-2"]
    assert hosts[1][1] == {
        "ssh_hostname": "127.0.0.1",
        "ssh_port": 2223,
        "ssh_user": "root",
        "ssh_key": state["ssh_key"],
        "ssh_known_hosts_file": state["known_hosts"],
        "ssh_strict_host_key_checking": "yes",
    }


STANDIN = {
    "url": "http://172.17.0.5:8080",
    "fingerprint": "0123456789ABCDEF0123456789ABCDEF01234567",
    "container": "gpufleet-lab-repo",
    "versions": ["1.17.8-1", "1.17.9-1"],
}


def test_state_with_the_standin_repo_roundtrip(tmp_path):
    state = make_state(
        [("lab-1", "gpufleet-lab-1", 2221)], tmp_path / "k", tmp_path / "kh", toolkit_repo=STANDIN
    )
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert loaded == state and loaded["toolkit_repo"] == STANDIN
    assert "toolkit_repo" not in _state(tmp_path)  # older state files have none


@pytest.mark.parametrize(
    "repo",
    [
        "http://172.17.0.5:8080",
        {"fingerprint": STANDIN["fingerprint"]},
        {**STANDIN, "url": "ftp://x"},
        {**STANDIN, "fingerprint": "0123 4567"},
        {**STANDIN, "fingerprint": STANDIN["fingerprint"].lower()},
    ],
)
def test_validate_state_rejects_bad_repo_entries(tmp_path, repo):
    state = {**_state(tmp_path), "toolkit_repo": repo}
    with pytest.raises(LabError, match="toolkit_repo"):
        validate_state(state)


def test_inventory_hosts_point_at_the_standin_repo(tmp_path):
    state = {**_state(tmp_path), "toolkit_repo": STANDIN}
    assert repo_host_data(state) == {
        "toolkit_repo_url": "http://172.17.0.5:8080",
        "toolkit_repo_fingerprint": "0123456789ABCDEF0123456789ABCDEF01234567",
    }
    assert repo_host_data(_state(tmp_path)) == {}
    for _name, data in inventory_hosts(state):
        assert data["toolkit_repo_url"] == STANDIN["url"]
        assert data["toolkit_repo_fingerprint"] == STANDIN["fingerprint"]
        assert data["ssh_strict_host_key_checking"] == "yes"


def _exec_inventory(root: Path) -> dict:
    """Run inventory/lab.py the way pyinfra does (exec with __file__ set) from `root`."""
    target = root / "inventory" / "lab.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "inventory" / "lab.py", target)
    namespace = {"__file__": str(target)}
    exec(compile(target.read_text(), str(target), "exec"), namespace)
    return namespace


def _keys(tmp_path):
    """The key files the state names (the inventory refuses SSH data naming missing files)."""
    for name in ("id_ed25519", "known_hosts"):
        (tmp_path / ".lab" / name).touch()
    (tmp_path / ".lab" / "id_ed25519").chmod(0o600)  # OpenSSH, and the inventory, refuse more


def test_inventory_file_defines_lab_hosts_group(tmp_path):
    save_state(tmp_path, _state(tmp_path))
    _keys(tmp_path)
    namespace = _exec_inventory(tmp_path)
    groups = {k: v for k, v in namespace.items() if not k.startswith("_") and isinstance(v, list)}
    assert list(groups) == ["lab_hosts", "monitoring"]
    assert groups["lab_hosts"] == inventory_hosts(_state(tmp_path))
    assert groups["monitoring"] == [groups["lab_hosts"][0][0]]  # the first host: Prometheus


def test_inventory_file_gives_hosts_the_standin_repo(tmp_path):
    save_state(tmp_path, {**_state(tmp_path), "toolkit_repo": STANDIN})
    _keys(tmp_path)
    hosts = _exec_inventory(tmp_path)["lab_hosts"]
    assert [data["toolkit_repo_url"] for _name, data in hosts] == [STANDIN["url"]] * 2


def test_inventory_file_refuses_a_missing_key_file(tmp_path):
    save_state(tmp_path, _state(tmp_path))
    with pytest.raises(PyinfraError, match="lab-1: ssh_key = .*: must be a private key file"):
        _exec_inventory(tmp_path)


def test_inventory_file_without_state_raises_pyinfra_error(tmp_path):
    with pytest.raises(PyinfraError, match="run `python -m lab up` first"):
        _exec_inventory(tmp_path)
    (tmp_path / ".lab").mkdir(exist_ok=True)
    state_path(tmp_path).write_text("[]")
    with pytest.raises(PyinfraError, match="damaged"):
        _exec_inventory(tmp_path)
