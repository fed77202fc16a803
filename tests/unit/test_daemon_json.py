"""The daemon.json merge: other keys kept, nested objects merged, dropped keys removed."""

from __future__ import annotations

from operations.docker.facts import parse_stack
from operations.kit.daemon_json import holds, merge, parse, render


def test_merge_keeps_other_keys_and_merges_nested_objects():
    base = {"debug": True, "log-opts": {"labels": "team"}, "runtimes": {"crun": {"path": "c"}}}
    managed = {("log-opts", "max-size"): "100m", ("runtimes", "nvidia"): {"path": "n"}}
    assert merge(base, managed, []) == {
        "debug": True,
        "log-opts": {"labels": "team", "max-size": "100m"},
        "runtimes": {"crun": {"path": "c"}, "nvidia": {"path": "n"}},
    }
    assert base == {"debug": True, "log-opts": {"labels": "team"},
                    "runtimes": {"crun": {"path": "c"}}}  # fmt: skip


def test_keys_no_longer_managed_go_and_objects_they_emptied_too():
    base = {"registry-mirrors": ["https://m/"], "log-opts": {"max-size": "1m"}, "debug": True}
    result = merge(base, {}, [("registry-mirrors",), ("log-opts", "max-size"), ("absent", "x")])
    assert result == {"debug": True}


def test_managed_value_replaces_a_scalar_parent_and_lists_whole():
    assert merge(
        {"log-opts": "bad", "exec-opts": ["a"]},
        {("log-opts", "max-file"): "3", ("exec-opts",): ["native.cgroupdriver=systemd"]},
        [],
    ) == {  # fmt: skip
        "log-opts": {"max-file": "3"},
        "exec-opts": ["native.cgroupdriver=systemd"],
    }


def test_parse_tells_missing_from_corrupt_and_render_is_stable():
    assert parse(None) == {} and parse("  \n") == {}
    assert parse('{"a": 1,') is None and parse("[1]") is None
    assert render({"b": 1, "a": {"d": 2, "c": 3}}) == render({"a": {"c": 3, "d": 2}, "b": 1})


def test_holds_names_the_keys_that_differ():
    config = {"live-restore": True, "log-opts": {"max-size": "1m"}}
    managed = {("live-restore",): True, ("log-opts", "max-size"): "100m", ("data-root",): "/d"}
    assert holds(config, managed) == ["log-opts.max-size", "data-root"]


def test_container_stack_lines_parse():
    state = parse_stack([
        "active=active", "enabled=enabled", "server_version=20.10.24+dfsg1",
        'info={"Runtimes": {"nvidia": {}}, "LiveRestoreEnabled": true}', "docker_group=",
        "package=docker.io 20.10.24+dfsg1-1+deb12u1", "ctk_version=NVIDIA Container Toolkit "
        "CLI version 1.17.8", "udev_rule=yes",
    ])  # fmt: skip
    assert state["info"]["LiveRestoreEnabled"] is True and state["docker_group"] == []
    assert state["packages"] == {"docker.io": "20.10.24+dfsg1-1+deb12u1"}
    assert state["udev_rule"] and not state["cdi_spec"]
    assert parse_stack(["info="])["info"] == {}
