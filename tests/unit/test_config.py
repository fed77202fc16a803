"""The config model: defaults, good values, bad values and how errors read."""

from __future__ import annotations

import json
import runpy

import pytest

from operations.cli import render
from operations.config.load import ConfigError, load_config, load_fleet
from operations.config.model import SECTIONS, SETTINGS, FleetConfig
from tests.plan.harness import gateway_off


def problems(**data) -> list[str]:
    return [str(problem) for problem in load_config("node-1", gateway_off(data))[1]]


def test_group_data_all_holds_exactly_the_model_defaults():
    values = {k: v for k, v in runpy.run_path(str(render.GROUP_DATA_ALL)).items() if k[0] != "_"}
    assert set(values) == set(SETTINGS)
    config, found = load_config("all", values)
    # the defaults put the gateway in front of servers listening beyond loopback, and then
    # the operator chooses: TLS files, plain HTTP, or the gateway off
    assert [(p.key, p.value) for p in found] == [("gateway_tls_cert_file", None)]
    assert "gateway_plain_http = True" in found[0].allowed
    config, found = load_config("all", {**values, "gateway_plain_http": True})
    assert found == []
    assert config == FleetConfig(gateway={"plain_http": True})


def test_rendered_files_are_in_sync_with_the_model():
    """group_data/all.py, JSON Schema, README reference: fix with
    `python -m operations.cli.render`."""
    assert render.main(["--check"]) == 0


def test_every_setting_has_a_short_doc():
    for section, model in SECTIONS.items():
        for field, info in model.model_fields.items():
            assert info.description, f"{section}_{field} has no description"
            assert len(info.description) <= 98, f"{section}_{field}: doc too long for one line"


def test_schema_covers_every_setting_and_validates_types():
    schema = json.loads(render.render_schema())
    assert set(schema["properties"]) == set(SETTINGS)
    assert schema["properties"]["vllm_gpu_memory_utilization"]["exclusiveMinimum"] == 0
    assert schema["properties"]["driver_source"]["enum"] == ["cuda-repo", "distro", "preinstalled"]


@pytest.mark.parametrize(
    "data",
    [
        {"driver_branch": "570", "driver_version": "570.133.20"},
        {"driver_source": "distro", "driver_kernel_modules": "open"},
        {"vllm_gpus": "0,1,2,3", "vllm_tensor_parallel_size": 4},
        {"vllm_gpus": [4, 5], "vllm_tensor_parallel_size": 2},
        {"vllm_image": "vllm/vllm-openai@sha256:" + "a" * 64},
        {"vllm_image": "registry.internal:5000/vllm/vllm-openai:v0.11.0"},
        {"vllm_image": "vllm/vllm-openai:latest", "vllm_allow_latest": True},
        {"vllm_port": "8001", "host_has_gpus": "false"},
        {"driver_branch": 570, "docker_version": "27.5"},  # --data driver_branch=570 gives an int
        {"deploy_layers": "driver,docker"},
        {"docker_registry_mirrors": ["https://mirror.internal"], "docker_users": ["ops"]},
        {"docker_daemon_options": {"dns": ["10.0.0.2"]}, "docker_data_root": "/data/docker"},
        {"toolkit_version": "1.17.8-1", "docker_version": "27.5.1"},
        {"ssh_port": 2222, "ssh_user": "ubuntu", "_sudo": True, "_own_note": "kept"},
        {"vllm_max_unavailable": 2},
        {"vllm_max_unavailable": "100%"},
        {"vllm_max_unavailable": "1%"},
    ],
)
def test_good_values_are_accepted(data):
    config, found = load_config("node-1", gateway_off(data))
    assert found == [] and config is not None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"driver_branch": "58"}, "driver_branch = '58': must be a 3-digit driver branch"),
        ({"docker_version": 27.10}, "docker_version = 27.1: write the version as a string"),
        (
            {"driver_branch": "570", "driver_version": "580.95.05"},
            "driver_version = '580.95.05': must be a version of branch 570",
        ),
        (
            {"driver_source": "nvidia"},
            "driver_source = 'nvidia': Input should be 'cuda-repo', 'distro' or 'preinstalled'",
        ),
        ({"driver_reboot_timeout_s": -5}, "driver_reboot_timeout_s = -5: Input should be greater"),
        ({"vllm_gpu_memory_utilization": 0}, "vllm_gpu_memory_utilization = 0: Input should be g"),
        ({"vllm_gpu_memory_utilization": 1.2}, "= 1.2: Input should be less than or equal to 1"),
        ({"vllm_port": 70000}, "vllm_port = 70000: Input should be less than or equal to 65535"),
        ({"vllm_port": "http"}, "vllm_port = 'http': Input should be a valid integer"),
        ({"vllm_image": "vllm/vllm-openai:latest"}, "the floating tag 'latest' is refused"),
        ({"vllm_image": "vllm/vllm-openai"}, "must be an image pinned by tag or digest"),
        ({"vllm_gpus": "0,x"}, "vllm_gpus = '0,x': must be 'all' or GPU indices"),
        (
            {"vllm_gpus": [0, 1], "vllm_tensor_parallel_size": 4},
            "vllm_tensor_parallel_size = 4: must be at most the 2 GPU(s) of vllm-main",
        ),
        ({"docker_registry_mirrors": "ftp://m"}, "docker_registry_mirrors[0] = 'ftp://m': URL"),
        (
            {"driver_cuda_repo_url": "not a url"},
            "driver_cuda_repo_url = 'not a url': must be an http",
        ),
        ({"docker_users": "ops,Root"}, "docker_users[1] = 'ops,Root': must be a Unix user name"),
        ({"deploy_layers": "driver,gpu"}, "deploy_layers[1] = 'driver,gpu': Input should be"),
        ({"vllm_hf_cache_dir": "cache"}, "vllm_hf_cache_dir = 'cache': must be an absolute path"),
        ({"toolkit_version": "1.17"}, "toolkit_version = '1.17': must be a toolkit version"),
        ({"toolkit_default_runtime": "nvida"}, "toolkit_default_runtime = 'nvida': Input should"),
        ({"docker_repo_url": "download.example/docker"}, "docker_repo_url = 'download.exa"),
        ({"toolkit_repo_url": "ftp://m/nvidia"}, "toolkit_repo_url = 'ftp://m/nvidia': URL"),
        ({"toolkit_repo_fingerprint": "C95B321B"}, "must be a 40-hex-digit OpenPGP fingerprint"),
        ({"docker_version": 27.1}, "docker_version = 27.1: write the version as a string"),
        ({"docker_log_max_size": "100"}, "docker_log_max_size = '100': must be a size"),
        ({"docker_restart_timeout_s": -5}, "docker_restart_timeout_s = -5: Input should be"),
        ({"docker_daemon_options": {"x": {1, 2}}}, "must be JSON-serialisable"),
        ({"drivr_branch": "570"}, "drivr_branch = '570': unknown setting; did you mean 'driver_"),
        ({"vllm_prot": 8000}, "vllm_prot = 8000: unknown setting; did you mean 'vllm_port'?"),
        ({"ssh_hostnme": "x"}, "unknown setting; did you mean 'ssh_hostname'?"),
        ({"whatever": 1}, "whatever = 1: unknown setting; see the config reference in README.md"),
        ({"vllm_max_unavailable": 0}, "vllm_max_unavailable = 0: must be a count of hosts such"),
        ({"vllm_max_unavailable": "0%"}, "vllm_max_unavailable = '0%': must be a count of hos"),
        ({"vllm_max_unavailable": "101%"}, "= '101%': must be a count of hosts such as 2, or a"),
        ({"vllm_max_unavailable": "25 %"}, "vllm_max_unavailable = '25 %': must be a count"),
        ({"vllm_max_unavailable": True}, "vllm_max_unavailable = True: must be a count such"),
    ],
)
def test_bad_values_are_refused_with_host_key_value_and_what_is_allowed(data, message):
    found = problems(**data)
    assert len(found) == 1, found
    assert found[0].startswith("node-1: ")
    assert message in found[0]


def test_secret_looking_values_are_never_echoed():
    (found,) = problems(vllm_hf_token="hf_abcdefSECRET")
    assert "hf_abcdefSECRET" not in found
    assert "vllm_hf_token = '***'" in found


def test_fleet_errors_list_every_bad_host_at_once():
    with pytest.raises(ConfigError) as error:
        load_fleet([("a", {"vllm_port": 0}), ("b", gateway_off({})), ("c", {"driver_branch": "x"})])
    text = str(error.value)
    assert "nothing was changed" in text
    assert "a: vllm_port = 0" in text and "c: driver_branch = 'x'" in text
    assert "b:" not in text


def test_config_is_immutable_once_validated():
    config = FleetConfig()
    with pytest.raises(ValueError):
        config.vllm.port = 1
