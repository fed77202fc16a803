"""The Prometheus file_sd targets of the fleet's vLLM servers (no network, no pyinfra run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from operations.cli import targets as prometheus
from operations.cli.targets import file_sd, load_hosts, main, write_atomic
from tests.plan.harness import gateway_off_beside

INVENTORY = """\
gpu = [
    ("h1", {"ssh_hostname": "10.0.0.1"}),
    ("h2", {"vllm_instances": [
        {"name": "a", "gpus": [0], "port": 8001},
        {"name": "b", "gpus": [1], "port": 8002, "served_model_name": "small"},
    ]}),
    ("h3", {"host_address": "gpu3.internal", "ssh_hostname": "10.0.0.3"}),
    ("h4", {"vllm_bind_address": "10.1.0.4", "host_address": "gpu4.internal"}),
    ("h5", {"vllm_bind_address": "fd00::5", "vllm_port": 9000}),
    ("h6", {"vllm_bind_address": "::", "ssh_hostname": "fd00::6"}),
]
cpu = [("c1", {"deploy_layers": ["preflight", "docker"], "ssh_hostname": "10.0.0.9"})]
"""


@pytest.fixture
def inventory(tmp_path: Path) -> str:
    path = tmp_path / "fleet.py"
    path.write_text(INVENTORY)
    gateway_off_beside(path)
    return str(path)


def targets(entries: list[dict]) -> dict[tuple[str, str], str]:
    """(host, instance) -> its one target."""
    found = {}
    for entry in entries:
        assert len(entry["targets"]) == 1
        labels = entry["labels"]
        found[labels["gpufleet_host"], labels["gpufleet_instance"]] = entry["targets"][0]
    return found


def test_addresses_follow_bind_address_then_host_address_then_ssh_hostname_then_name(inventory):
    found = targets(file_sd(load_hosts(inventory, [])))
    assert found == {
        ("h1", "main"): "10.0.0.1:8000",  # ssh_hostname
        ("h2", "a"): "h2:8001",  # nothing declared: the inventory name
        ("h2", "b"): "h2:8002",
        ("h3", "main"): "gpu3.internal:8000",  # host_address beats ssh_hostname
        ("h4", "main"): "10.1.0.4:8000",  # a specific bind address beats host_address
        ("h5", "main"): "[fd00::5]:9000",  # IPv6 bind address, bracketed
        ("h6", "main"): "[fd00::6]:8000",  # '::' is unspecified: IPv6 ssh_hostname, bracketed
    }


def test_hosts_without_the_vllm_layer_are_left_out(inventory):
    hosts = load_hosts(inventory, [])
    assert "c1" in hosts
    assert all(entry["labels"]["gpufleet_host"] != "c1" for entry in file_sd(hosts))


def test_one_entry_per_instance_labelled_with_host_instance_and_served_model(inventory):
    entries = file_sd(load_hosts(inventory, ["h2"]))
    assert entries == [
        {
            "targets": ["h2:8001"],
            "labels": {
                "gpufleet_host": "h2",
                "gpufleet_instance": "a",
                "model": "Qwen/Qwen2.5-1.5B-Instruct",
            },
        },
        {
            "targets": ["h2:8002"],
            "labels": {"gpufleet_host": "h2", "gpufleet_instance": "b", "model": "small"},
        },
    ]


def test_ipv6_host_address_is_bracketed_once(inventory):
    hosts = load_hosts(inventory, ["h1"])
    data, config = hosts["h1"]
    v6 = config.model_copy(update={"host": config.host.model_copy(update={"address": "fd00::1"})})
    assert prometheus.address("h1", data, v6) == "[fd00::1]"
    bracketed = config.model_copy(
        update={"host": config.host.model_copy(update={"address": "[fd00::1]"})}
    )
    assert prometheus.address("h1", data, bracketed) == "[fd00::1]"


def test_output_is_sorted_whatever_the_host_order(inventory):
    hosts = load_hosts(inventory, [])
    backwards = dict(reversed(list(hosts.items())))
    assert file_sd(backwards) == file_sd(hosts)
    keys = [
        (e["labels"]["gpufleet_host"], e["labels"]["gpufleet_instance"]) for e in file_sd(hosts)
    ]
    assert keys == sorted(keys)


def test_main_writes_parseable_json_and_says_how_many_where(inventory, tmp_path, capsys):
    output = tmp_path / "deep" / "dir" / "targets.json"
    assert main([inventory, "--limit", "gpu", "-o", str(output)]) == 0
    written = json.loads(output.read_text())
    assert written == file_sd(load_hosts(inventory, ["gpu"]))
    assert len(written) == 7
    assert f"wrote 7 vLLM target(s) of 6 host(s) to {output}" in capsys.readouterr().out
    assert os.listdir(output.parent) == ["targets.json"]  # no temporary file left behind
    assert output.stat().st_mode & 0o777 == 0o644  # readable by a prometheus user


def test_main_limit_selects_hosts_and_groups(inventory, tmp_path):
    output = tmp_path / "targets.json"
    assert main([inventory, "--limit", "h1,c1", "-o", str(output)]) == 0
    assert [e["labels"]["gpufleet_host"] for e in json.loads(output.read_text())] == ["h1"]


def test_main_default_output_is_under_reports_of_the_working_directory(
    inventory, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main([inventory]) == 0
    written = json.loads((tmp_path / "reports/prometheus/vllm-targets.json").read_text())
    assert {e["labels"]["gpufleet_host"] for e in written} == {f"h{n}" for n in range(1, 7)}


def test_bad_config_is_refused_with_the_message_and_nothing_written(tmp_path, capsys):
    path = tmp_path / "fleet.py"
    path.write_text('gpu = [("h1", {"vllm_port": -1}), ("h2", {"vllm_gpu": [0]})]')
    gateway_off_beside(path)
    output = tmp_path / "targets.json"
    assert main([str(path), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert "h1: vllm_port = -1: Input should be greater than or equal to 1" in err
    assert "h2: vllm_gpu = [0]: unknown setting; did you mean 'vllm_gpus'?" in err
    assert "Traceback" not in err
    assert not output.exists()


def test_write_atomic_replaces_whole_files_and_keeps_the_old_one_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "targets.json"
    write_atomic(path, "[1]\n")
    write_atomic(path, "[2]\n")
    assert path.read_text() == "[2]\n"

    def broken_replace(source, target):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(path, "[3]\n")
    assert path.read_text() == "[2]\n"
    assert os.listdir(tmp_path) == ["targets.json"]


def test_exclude_leaves_the_other_hosts(inventory):
    entries = file_sd(load_hosts(inventory, ["gpu"], ["h2,h3", "h5"]))
    assert {entry["labels"]["gpufleet_host"] for entry in entries} == {"h1", "h4", "h6"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "nosuch"], "--limit nosuch matches no host or group"),
        (["--exclude", "gpu,cpu"], "--exclude gpu, cpu excludes all 7 host(s)"),
        (["--limit", "cpu", "--exclude", "c1"], "excludes the 1 host(s) --limit cpu selects"),
    ],
)
def test_no_host_selected_leaves_the_targets_file(inventory, tmp_path, capsys, args, message):
    output = tmp_path / "targets.json"
    output.write_text("[previous]\n")
    assert main([inventory, *args, "-o", str(output)]) == 2
    assert message in capsys.readouterr().err
    assert output.read_text() == "[previous]\n"  # Prometheus keeps scraping the fleet


def test_an_output_that_is_a_directory_is_refused_before_reading(tmp_path, capsys):
    assert main([str(tmp_path / "no-inventory.py"), "-o", str(tmp_path)]) == 2
    assert f"cannot write {tmp_path}: is a directory" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_refused_values_name_their_file(tmp_path, capsys):
    (tmp_path / "group_data").mkdir(exist_ok=True)
    (tmp_path / "group_data" / "gpu.py").write_text("vllm_port = 'eighty'\n")
    (tmp_path / "fleet.py").write_text("gpu = [('h1', {'vllm_dtype': 'fp7'})]\n")
    gateway_off_beside(tmp_path / "fleet.py")
    assert main([str(tmp_path / "fleet.py"), "-o", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert "h1: vllm_port = 'eighty'" in err and f"(from {tmp_path}/group_data/gpu.py)" in err
    assert "h1: vllm_dtype = 'fp7'" in err and f"(from {tmp_path}/fleet.py)" in err
    assert not (tmp_path / "t.json").exists()
