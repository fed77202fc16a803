"""Unit tests of the lab fleet's pure parts (lab.fleet, lab.hosts, lab.ready): names, ports,
docker arguments, inspect parsing."""

import pytest

from lab import LabError, hosts, ready
from lab.fleet import format_table
from lab.hosts import (
    container_name,
    create_args,
    host_name,
    parse_container,
    parse_index,
    pick_port,
    volume_name,
)


def test_names():
    assert (host_name(2), container_name(2), volume_name(2)) == (
        "lab-2",
        "gpufleet-lab-2",
        "gpufleet-lab-2-docker",
    )
    assert parse_index("gpufleet-lab-12") == 12
    assert parse_index("/gpufleet-lab-3") == 3
    for other in ("gpufleet-lab-0", "gpufleet-lab-1-docker", "gpufleet-lab-x", "lab-1"):
        assert parse_index(other) is None


def test_pick_port_lowest_free_from_base():
    assert pick_port(set(), lambda p: True) == 2221
    assert pick_port({2221, 2222}, lambda p: True) == 2223
    assert pick_port({2221}, lambda p: p != 2222) == 2223


def test_pick_port_keeps_preferred_when_possible():
    assert pick_port({2221}, lambda p: True, preferred=2230) == 2230
    assert pick_port({2221}, lambda p: p != 2230, preferred=2230) == 2222
    assert pick_port({2230}, lambda p: True, preferred=2230) == 2221


def test_pick_port_exhausted():
    with pytest.raises(LabError, match="no free TCP port"):
        pick_port(set(), lambda p: False, span=5)


def test_create_args_cgroup_v1_and_v2():
    v1 = create_args(2, 2222, 1)
    joined = " ".join(v1)
    assert "--privileged" not in v1
    assert "--cgroupns=host" not in v1
    assert "-p 127.0.0.1:2222:22" in joined
    assert "-v gpufleet-lab-2-docker:/var/lib/docker" in joined
    assert "-v /sys/fs/cgroup:/sys/fs/cgroup:rw" in joined
    assert "--name gpufleet-lab-2 --hostname lab-2" in joined
    assert "--label gpufleet-lab=1" in joined
    assert "--restart no" in joined
    assert "--cap-add ALL --cap-drop SYS_RESOURCE" in joined
    assert "--tmpfs /run --tmpfs /run/lock" in joined
    assert v1[0] == "create" and v1[-1] == "gpufleet-lab:debian12"
    v2 = create_args(2, 2222, 2)
    assert "--cgroupns=host" in v2
    assert v2[-1] == "gpufleet-lab:debian12"


def _inspect(name="/gpufleet-lab-1", status="running", port="2221"):
    return {
        "Name": name,
        "Image": "sha256:abc",
        "State": {"Status": status},
        "HostConfig": {"PortBindings": {"22/tcp": [{"HostIp": "127.0.0.1", "HostPort": port}]}},
    }


def test_parse_container():
    c = parse_container(_inspect())
    assert (c.index, c.name, c.status, c.port, c.image) == (
        1,
        "gpufleet-lab-1",
        "running",
        2221,
        "sha256:abc",
    )
    assert parse_container(_inspect(port="")).port is None
    assert (
        parse_container({"Name": "/gpufleet-lab-4", "HostConfig": {"PortBindings": None}}).port
        is None
    )
    assert parse_container(_inspect(name="/something-else")) is None


def test_format_table():
    text = format_table(["A", "LONGER"], [["x", "1"], ["yyyy", "2"]])
    assert text.splitlines() == ["A     LONGER", "x     1", "yyyy  2"]


def test_container_remembers_which_keys_it_was_given():
    """A container made by another checkout's .lab/ is recognised by its keys label."""
    args = create_args(1, 2221, 1, keys="abc123")
    assert "gpufleet-lab.keys=abc123" in args
    info = {
        "Name": "/gpufleet-lab-1",
        "State": {"Status": "running"},
        "Config": {"Labels": {"gpufleet-lab": "1", "gpufleet-lab.keys": "abc123"}},
        "HostConfig": {"PortBindings": {"22/tcp": [{"HostIp": "127.0.0.1", "HostPort": "2221"}]}},
    }
    assert parse_container(info).keys == "abc123"
    del info["Config"]
    assert parse_container(info).keys == ""


def test_hosts_that_exited_at_start_get_the_inotify_hint(tmp_path, monkeypatch):
    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    monkeypatch.setattr(ready, "INOTIFY_INSTANCES", limit)
    containers = {
        22: hosts.Container(22, "gpufleet-lab-22", "running", 2242, "sha256:x"),
        23: hosts.Container(23, "gpufleet-lab-23", "exited", 2243, "sha256:x"),
    }
    monkeypatch.setattr(ready, "list_containers", lambda: containers)
    hint = ready.exited_hint({23: 2243})
    assert "1 container(s) exited at start" in hint and "max_user_instances = 128" in hint
    assert ready.exited_hint({22: 2242}) == ""  # running, only slow: no such hint


class _Host:
    """A lab host for wait_ready: ssh refuses its host key until the pinned keys are put
    back (when ``repairable``), then systemd is running."""

    def __init__(self, repairable: bool = True):
        self.repairable, self.repaired, self.calls = repairable, False, []

    def probe(self, paths, port, command="systemctl is-system-running"):
        if self.repaired:
            return True, "running", ""
        return False, "", "Host key verification failed."

    def docker(self, *args, **kwargs):
        self.calls.append(args[:2])
        self.repaired = self.repairable and args[0] == "exec"
        return type("Done", (), {"returncode": 0})()


def _keys(tmp_path):
    for name in ("id_ed25519", "hostkeys/lab-2"):
        path = tmp_path / ".lab" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("private\n")
        path.with_name(path.name + ".pub").write_text(f"ssh-ed25519 AAAA {name}\n")


def test_a_host_whose_host_key_changed_gets_the_pinned_keys_back(tmp_path, monkeypatch):
    _keys(tmp_path)
    host, said = _Host(), []
    monkeypatch.setattr(ready, "probe", host.probe)
    monkeypatch.setattr(ready, "docker", host.docker)
    monkeypatch.setattr(ready, "lab_dir", lambda root: root / ".lab")
    assert ready.wait_ready(tmp_path, {2: 2222}, timeout=10, log=said.append) == {2: "running"}
    assert host.calls == [("cp", "-"), ("exec", "gpufleet-lab-2")]  # once, into its container
    assert said == [
        "  lab-2: Host key verification failed (not the lab's pinned keys): "
        "put them back, sshd restarted"
    ]


def test_a_host_whose_keys_cannot_be_put_back_gets_the_exact_repair(tmp_path, monkeypatch):
    _keys(tmp_path)
    host = _Host(repairable=False)
    monkeypatch.setattr(ready, "probe", host.probe)
    monkeypatch.setattr(ready, "docker", host.docker)
    monkeypatch.setattr(ready, "lab_dir", lambda root: root / ".lab")
    monkeypatch.setattr(ready, "list_containers", dict)
    with pytest.raises(LabError) as refused:
        ready.wait_ready(tmp_path, {2: 2222}, timeout=1, log=lambda line: None)
    message = str(refused.value)
    assert "lab-2 (Host key verification failed.)" in message
    assert "`docker rm -f gpufleet-lab-2` then `python -m lab up`" in message
    assert "the pin is in .lab/known_hosts ([127.0.0.1]:2222)" in message
    assert len(host.calls) == 2  # put back once, not on every probe
