"""Inventories from Terraform: the document's convention, the instance-type table, and the
refusal of every malformed or hostile document before any host is reached.

Fixtures in tests/unit/data/terraform/ are in Terraform's documented ``terraform output
-json`` format. The directory mode runs tests/standins/terraform/terraform, a STAND-IN for the
terraform binary (none here)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from operations import inventory
from operations.config.load import ConfigError
from operations.inventory_sources import terraform
from operations.inventory_sources.instance_types import INSTANCE_TYPES, gpu_data

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "terraform"
STANDIN_BIN = ROOT / "tests" / "standins" / "terraform"  # STAND-IN terraform
INVENTORY = ROOT / "inventory" / "terraform.py"
SECRET = "hunter2-DO-NOT-PRINT"


def groups(name: str) -> dict:
    return terraform.terraform_groups({terraform.OUTPUT_FILE_ENV: str(DATA / name)})


def refused(name: str, env: dict | None = None) -> str:
    """The message of the ConfigError a fixture is refused with."""
    with pytest.raises(ConfigError) as error:
        terraform.terraform_groups(env or {terraform.OUTPUT_FILE_ENV: str(DATA / name)})
    return str(error.value)


# --- the convention ----------------------------------------------------------------------


def test_groups_and_data_come_from_the_output():
    found = groups("fleet.json")
    assert sorted(found) == ["gpu_servers", "h100", "inference_pcie", "monitoring"]
    assert [name for name, _ in found["gpu_servers"]] == ["h100-01", "a100-01", "10.0.4.41"]
    h100 = dict(found["h100"])["h100-01"]
    assert h100["ssh_hostname"] == "10.0.1.11" and h100["ssh_user"] == "ubuntu"
    assert h100["driver_branch"] == "570" and h100["_zone"] == "us-east-1a"
    assert "vllm_port" not in h100  # null: not set, the defaults apply
    assert dict(found["inference_pcie"])["a10g-01"]["ssh_port"] == 2222
    # a string entry is an address and a name, in the default group (pyinfra's convention)
    assert dict(found["gpu_servers"])["10.0.4.41"] == {"ssh_hostname": "10.0.4.41"}


def test_instance_type_sets_gpu_count_unless_data_does():
    found = {name: data for hosts in groups("fleet.json").values() for name, data in hosts}
    assert found["h100-01"]["host_gpu_count"] == 8 and found["h100-01"]["host_has_gpus"]
    assert found["h100-01"]["_gpu_model"] == "NVIDIA H100 80GB"
    assert found["a10g-01"]["host_gpu_count"] == 4  # g5.12xlarge
    assert found["a100-01"]["host_gpu_count"] == 4  # explicit data wins over a2-ultragpu-8g
    # an unknown type sets nothing (no guess); the host's own host_has_gpus stays
    assert found["monitor-01"] == {
        "ssh_hostname": "10.0.9.1", "_instance_type": "m7i.large", "host_has_gpus": False
    }  # fmt: skip


def test_sensitive_outputs_are_never_shown():
    assert SECRET not in str(groups("fleet.json"))  # another output, sensitive: not read
    message = refused("sensitive.json")
    assert SECRET not in message and terraform.HIDDEN in message
    assert "gpu-02: ssh_hostname" in message


@pytest.mark.parametrize(
    ("instance_type", "count", "model"),
    [
        ("p4d.24xlarge", 8, "NVIDIA A100 40GB"),
        ("p4de.24xlarge", 8, "NVIDIA A100 80GB"),
        ("p5.48xlarge", 8, "NVIDIA H100 80GB"),
        ("p5e.48xlarge", 8, "NVIDIA H200 141GB"),
        ("p5en.48xlarge", 8, "NVIDIA H200 141GB"),
        ("g5.xlarge", 1, "NVIDIA A10G"),
        ("g5.16xlarge", 1, "NVIDIA A10G"),
        ("g5.24xlarge", 4, "NVIDIA A10G"),
        ("g5.48xlarge", 8, "NVIDIA A10G"),
        ("g6.12xlarge", 4, "NVIDIA L4"),
        ("g6e.48xlarge", 8, "NVIDIA L40S"),
        ("a2-highgpu-2g", 2, "NVIDIA A100 40GB"),
        ("a2-megagpu-16g", 16, "NVIDIA A100 40GB"),
        ("a2-ultragpu-1g", 1, "NVIDIA A100 80GB"),
        ("a3-highgpu-8g", 8, "NVIDIA H100 80GB"),
        ("a3-megagpu-8g", 8, "NVIDIA H100 80GB"),
        ("a3-ultragpu-8g", 8, "NVIDIA H200 141GB"),
        ("Standard_ND96asr_v4", 8, "NVIDIA A100 40GB"),
        ("Standard_ND96amsr_A100_v4", 8, "NVIDIA A100 80GB"),
        ("Standard_ND96isr_H100_v5", 8, "NVIDIA H100 80GB"),
    ],
)
def test_instance_table(instance_type, count, model):
    assert (INSTANCE_TYPES[instance_type].count, INSTANCE_TYPES[instance_type].model) == (
        count,
        model,
    )
    assert gpu_data(instance_type, {})["host_gpu_count"] == count


def test_instance_table_counts_fit_the_model_and_unknown_types_add_nothing():
    assert all(1 <= shape.count <= 64 for shape in INSTANCE_TYPES.values())  # model's bounds
    assert gpu_data("m7i.large", {}) == {} and gpu_data(None, {}) == {}
    assert gpu_data("p5.48xlarge", {"host_has_gpus": False}) == {}
    assert gpu_data("p5.48xlarge", {"host_gpu_count": 2}) == {
        "host_has_gpus": True, "_gpu_model": "NVIDIA H100 80GB"
    }  # fmt: skip


# --- malformed documents -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("not_json.json", "is not JSON (line 2 column 1"),
        ("not_an_object.json", "the document must be a JSON object of outputs"),
        ("no_value.json", "must be an output object with a 'value'"),
        ("wrong_type.json", "gpufleet_hosts.value = 'str': must be a non-empty list of hosts"),
        ("duplicate_key.json", "the key 'value' appears twice in one object"),
    ],
)
def test_malformed_documents_are_refused(name, expected):
    message = refused(name)
    assert expected in message and name in message  # what is wrong, and the file


def test_missing_output_names_the_outputs_there():
    env = {terraform.OUTPUT_FILE_ENV: str(DATA / "fleet.json"), terraform.KEY_ENV: "gpu_nodes"}
    message = refused("", env)
    assert "gpu_nodes = None: no such output" in message
    assert "'cluster_name', 'db_password', 'gpufleet_hosts'" in message
    assert SECRET not in message


def test_duplicate_hosts_are_refused():
    message = refused("duplicate_hosts.json")
    assert "gpu-01: name = 'gpu-01': is listed twice in the output" in message
    assert "gpu-02: ssh_hostname = '10.0.0.1': is also the address of host gpu-01" in message
    assert message.count("listed twice") == 1


def test_group_names_must_be_identifiers_pyinfra_keeps():
    message = refused("bad_groups.json")
    for index, group in enumerate(["gpu-servers", "all", "class", "_private"]):
        assert f"gpu-01: groups[{index}] = '{group}': must be a group name" in message
    assert "gpu-02: groups = []: must be a non-empty list" in message
    assert "gpu-03: groups = 'gpu_servers': must be a non-empty list" in message


def test_hostile_values_are_refused_before_any_host():
    message = refused("hostile.json")
    expected = [
        "gpu-01: ssh_hostname = '10.0.0.1;touch /tmp/pwned': must be a host name",
        "gpufleet_hosts[1]: name = 'gpu-02\\nProxyCommand touch /tmp/pwned': must be a host",
        "gpu-03: ssh_user = '$(id)': must be a user name",
        "gpu-04: data.driver_branch = '570; rm -rf /': must be a 3-digit driver branch",
        "gpu-05: data._note = 'line\\nbreak': must not contain control or invisible",
        "gpu-06: instance_type = 'p5.48xlarge`id`': must be an instance type name",
    ]
    for line in expected:
        assert line in message
    assert "\nProxyCommand" not in message  # the newline is shown escaped, on one line


def test_unknown_fields_keys_and_connection_settings_are_refused():
    message = refused("unknown_keys.json")
    expected = [
        "gpu-01: tags = {'team': 'llm'}: unknown field; a host object has name",
        "gpu-02: data.vllm_prot = 8000: unknown setting; did you mean 'vllm_port'?",
        "gpu-03: data.ssh_config_file = '/tmp/evil_config': is a connection setting",
        "gpu-04: data.ssh_password = '***': must not come from Terraform",
        "gpu-05: ssh_user = 'ubuntu': is given twice (also as data.ssh_user)",
        "gpufleet_hosts[5]: name = None: is missing: give name or ssh_hostname",
        "gpufleet_hosts[6]: host = 'int': must be a host",
    ]
    for line in expected:
        assert line in message
    assert SECRET not in message


# --- where the document comes from ---------------------------------------------------------


def test_no_source_or_two_sources_are_refused():
    assert "GPUFLEET_TERRAFORM_OUTPUT = None: is not set" in refused("", {"OTHER": "x"})
    both = {terraform.OUTPUT_FILE_ENV: "a.json", terraform.DIR_ENV: "."}
    assert "set only one of GPUFLEET_TERRAFORM_OUTPUT and GPUFLEET_TERRAFORM_DIR" in refused(
        "", both
    )
    missing = refused("", {terraform.OUTPUT_FILE_ENV: "/nonexistent/out.json"})
    assert "'/nonexistent/out.json': cannot be read (No such file or directory)" in missing
    bad_key = {terraform.OUTPUT_FILE_ENV: str(DATA / "fleet.json"), terraform.KEY_ENV: "a;b"}
    assert "GPUFLEET_TERRAFORM_KEY = 'a;b': must be a Terraform output name" in refused("", bad_key)


@pytest.fixture
def standin_terraform(monkeypatch):
    """The STAND-IN terraform on PATH, answering with fleet.json."""
    monkeypatch.setenv("PATH", f"{STANDIN_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_TERRAFORM_DOCUMENT", str(DATA / "fleet.json"))
    monkeypatch.delenv("STANDIN_TERRAFORM_FAIL", raising=False)


def test_directory_mode_runs_terraform_output_json(standin_terraform, tmp_path):
    found = terraform.terraform_groups({terraform.DIR_ENV: str(tmp_path)})
    assert dict(found["h100"])["h100-01"]["host_gpu_count"] == 8


def test_directory_mode_failures_are_clear(standin_terraform, monkeypatch, tmp_path):
    env = {terraform.DIR_ENV: str(tmp_path)}
    monkeypatch.setenv("STANDIN_TERRAFORM_FAIL", "token hf_abcdefghijklmnopqrstuvwxyz123456")
    message = refused("", env)
    assert "`terraform output -json` exited 1: token ***" in message
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "terraform is not on PATH" in refused("", env)
    assert "no such directory" in refused("", {terraform.DIR_ENV: str(tmp_path / "nope")})


def test_directory_mode_is_bounded_by_a_timeout(standin_terraform, monkeypatch, tmp_path):
    """The whole process group is killed: the STAND-IN's sleep holding the pipe too."""
    monkeypatch.setenv("STANDIN_TERRAFORM_SLEEP", "30")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"did not finish in 0\.5 s"):
        terraform.run_terraform(str(tmp_path), timeout=0.5)
    assert time.monotonic() - started < 10


def test_terraform_runs_as_an_argv_without_a_shell(standin_terraform, tmp_path):
    calls = []

    def run(argv, cwd, timeout):
        calls.append((argv, cwd, timeout))
        return subprocess.CompletedProcess(argv, 0, (DATA / "fleet.json").read_bytes(), b"")

    terraform.run_terraform(str(tmp_path), run=run)
    ((argv, cwd, timeout),) = calls
    assert argv[1:] == ["output", "-no-color", "-json"] and Path(argv[0]).name == "terraform"
    assert cwd == tmp_path and timeout == terraform.TIMEOUT_S


def test_the_stand_in_refuses_other_commands(standin_terraform, tmp_path):
    """So a change of the command run cannot pass against the STAND-IN unnoticed."""
    done = terraform.run_bounded(["terraform", "output", "-json"], tmp_path, 10)
    assert done.returncode == 64 and b"only 'output -no-color -json'" in done.stderr


# --- the inventory file, through pyinfra's own loader ----------------------------------------


def test_inventory_file_through_pyinfra(monkeypatch):
    monkeypatch.setenv(terraform.OUTPUT_FILE_ENV, str(DATA / "fleet.json"))
    monkeypatch.delenv(terraform.DIR_ENV, raising=False)
    selection = inventory.select(str(INVENTORY), overrides={"gateway_plain_http": True})
    assert list(selection.hosts) == ["h100-01", "a100-01", "10.0.4.41", "a10g-01", "monitor-01"]
    assert selection.hosts["h100-01"]["host_gpu_count"] == 8
    assert selection.hosts["a10g-01"]["ssh_port"] == 2222
    configs = selection.configs()  # the model accepts every host's effective data
    assert configs["a100-01"].host.gpu_count == 4 and not configs["monitor-01"].host.has_gpus


def test_inventory_file_error_is_one_clear_message_without_traceback(tmp_path):
    """pyinfra itself and the project's own command (gpufleet targets) refuse the document
    before connecting: exit non-zero, the problem named, no traceback."""
    env = {**os.environ, terraform.OUTPUT_FILE_ENV: str(DATA / "hostile.json")}
    env.pop(terraform.DIR_ENV, None)
    targets = [sys.executable, "-m", "operations.cli.targets", "inventory/terraform.py",
               "-o", str(tmp_path / "targets.json")]  # fmt: skip
    pyinfra = [str(Path(sys.executable).parent / "pyinfra"), "inventory/terraform.py",
               "exec", "--", "true"]  # fmt: skip
    for argv in (targets, pyinfra):
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode != 0, argv
        assert "gpu-01: ssh_hostname = '10.0.0.1;touch /tmp/pwned'" in out, argv
        assert "Traceback" not in out, argv
    assert not (tmp_path / "targets.json").exists()


# --- the remaining checks, each shown refusing ------------------------------------------------


def write(tmp_path: Path, content: bytes) -> dict:
    path = tmp_path / "output.json"
    path.write_bytes(content)
    return {terraform.OUTPUT_FILE_ENV: str(path)}


def test_a_document_that_is_not_utf8_too_large_or_too_deep_is_refused(tmp_path, monkeypatch):
    assert "is not UTF-8 text" in refused("", write(tmp_path, b'{"a": "\xff"}'))
    deep = refused("", write(tmp_path, b"[" * 100_000 + b"]" * 100_000))
    assert "output.json': is nested too deeply" in deep
    monkeypatch.setattr(terraform, "MAX_BYTES", 10)
    assert "is larger than 10 bytes" in refused("", write(tmp_path, b'{"gpufleet_hosts": {}}'))


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            b'{"gpufleet_hosts": {"sensitive": "no", "value": ["10.0.0.1"]}}',
            "gpufleet_hosts.sensitive = 'no': must be true or false",
        ),
        (
            b'{"gpufleet_hosts": {"sensitive": false, "value": []}}',
            "gpufleet_hosts.value = 'list': must be a non-empty list of hosts",
        ),
        (
            b'{"gpufleet_hosts": {"sensitive": true, "value": "10.0.0.1"}}',
            f"gpufleet_hosts.value = '{terraform.HIDDEN}': must be a non-empty list",
        ),
        (
            b'{"gpufleet_hosts": {"value": [{"name": "gpu-01", "data": ["driver_branch"]}]}}',
            "gpu-01: data = ['driver_branch']: must be an object of data keys and values",
        ),
        (
            b'{"gpufleet_hosts": {"value": [{"name": "gpu-01", '
            b'"data": {"_x": [{"k": "\\u200b"}]}}]}}',
            "gpu-01: data._x = [{'k': '\\u200b'}]: must not contain control or invisible",
        ),
        (
            b'{"gpufleet_hosts": {"value": [{"name": "gpu-01", "data": {"9lives": 1}}]}}',
            "gpu-01: data.9lives = 1: must be a data key",
        ),
        (
            b'{"gpufleet_hosts": {"value": [{"name": "gpu_01"}]}}',
            "gpufleet_hosts[0]: name = 'gpu_01': must be a host name or IP address",
        ),
        (
            b'{"gpufleet_hosts": {"value": [{"name": "gpu-01", "ssh_port": 70000}]}}',
            "gpu-01: ssh_port = 70000: must be a port number from 1 to 65535",
        ),
        (
            b'{"gpufleet_hosts": {"value": [{"name": "gpu-01", "instance_type": 5}]}}',
            "gpu-01: instance_type = 5: must be an instance type name",
        ),
        (
            b'{"gpufleet_hosts": {"value": [{"name": "gpu-01", "data": {"host_gpu_count": 0}}]}}',
            "gpu-01: data.host_gpu_count = 0: Input should be greater than or equal to 1",
        ),
    ],
)
def test_shapes_and_values_are_refused(tmp_path, document, expected):
    assert expected in refused("", write(tmp_path, document))


def test_terraform_that_cannot_start_is_refused(standin_terraform, tmp_path):
    def run(argv, cwd, timeout):
        raise PermissionError(13, "Permission denied")

    with pytest.raises(ConfigError, match=r"terraform could not run \(Permission denied\)"):
        terraform.run_terraform(str(tmp_path), run=run)


def test_an_empty_stand_in_answer_is_not_json(standin_terraform, monkeypatch, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    monkeypatch.setenv("STANDIN_TERRAFORM_DOCUMENT", str(empty))
    message = refused("", {terraform.DIR_ENV: str(tmp_path)})
    assert f"GPUFLEET_TERRAFORM_DIR = '`terraform output -json` in {tmp_path}': is not JSON" in (
        message
    )


def test_a_tag_based_inventory_uses_the_same_checks():
    """The shape docs/terraform-inventory.md gives tag-based (cloud SDK) inventories."""
    hosts = [
        {"name": "gpu-01", "ssh_hostname": "10.0.0.1", "instance_type": "a3-ultragpu-8g"},
        {"name": "gpu-02", "ssh_hostname": "10.0.0.2", "groups": ["gpu servers"]},
    ]
    document = terraform.Document({"gpufleet_hosts": {"value": hosts[:1]}}, "EC2 tags")
    assert terraform.groups_of(document)["gpu_servers"][0][1]["host_gpu_count"] == 8
    document = terraform.Document({"gpufleet_hosts": {"value": hosts}}, "EC2 tags")
    with pytest.raises(ConfigError, match=r"gpu-02: groups\[0\] = 'gpu servers'.*EC2 tags"):
        terraform.groups_of(document)


def test_the_docs_list_every_instance_type():
    text = (ROOT / "docs" / "terraform-inventory.md").read_text()
    missing = [name for name in INSTANCE_TYPES if f"`{name}`" not in text]
    assert missing == []
