"""Hostile and edge input for the config model (issue 13): what is refused, by class, and
what must still be accepted (no over-refusal); how values are masked in messages."""

from __future__ import annotations

import json
import os

import pytest
from pydantic import ValidationError
from pyinfra_cli.util import parse_cli_arg

from operations.cli import render
from operations.config.load import ConfigError, Problem, checked_hosts, load_config, load_fleet
from operations.config.model import SETTINGS, FleetConfig, VllmConfig
from operations.config.secrets import looks_secret, mask
from tests.corpus.bad_input import API_KEY, CASES, HF_TOKEN, RANDOM_KEY
from tests.plan.harness import gateway_off


def problems(**data) -> list[str]:
    return [str(problem) for problem in load_config("node-1", gateway_off(data))[1]]


def _schema_types(key: str) -> set[str]:
    entry = json.loads(render.render_schema())["properties"][key]
    return {option.get("type") for option in entry.get("anyOf", [entry])}


NUMERIC = sorted(k for k in SETTINGS if _schema_types(k) & {"integer", "number"})
# a valid value for every string setting whose default is unset
STRING_SAMPLES = {
    "deploy_apt_proxy": "http://proxy.internal:3142",
    "host_address": "10.0.0.7",
    "driver_version": "580.95.05",
    "driver_cuda_repo_url": "https://mirror.internal/cuda",
    "driver_cuda_repo_fingerprint": "A" * 40,
    "docker_version": "27.5",
    "docker_repo_url": "https://mirror.internal/docker",
    "docker_repo_fingerprint": "B" * 40,
    "docker_data_root": "/data/docker",
    "toolkit_version": "1.17.8",
    "toolkit_repo_url": "https://mirror.internal/nvidia",
    "toolkit_repo_fingerprint": "C" * 40,
    "vllm_served_model_name": "chat",
    "vllm_image_archive": "/srv/vllm.tar",
    "vllm_hf_token_file": "/etc/gpufleet/hf-token",
    "vllm_api_key_file": "/etc/gpufleet/api-key",
    "docker_cgroup_driver": "systemd",
    "toolkit_default_runtime": "nvidia",
    "vllm_bind_address": "0.0.0.0",
    "vllm_quantization": "awq",
    "monitoring_node_exporter_address": "0.0.0.0",
    "monitoring_dcgm_address": "127.0.0.1",
    "monitoring_dcgm_image_archive": "/srv/dcgm.tar",
    "monitoring_prometheus_address": "0.0.0.0",
    "monitoring_alert_for": "30s",
    "gateway_tls_cert_file": "/etc/gpufleet/tls.crt",
    "gateway_tls_key_file": "/etc/gpufleet/tls.key",
}
TEXT_KEYS = sorted(k for k in SETTINGS if "string" in _schema_types(k))
LIST_SAMPLES = {
    "deploy_layers": "driver",
    "deploy_apt_proxy_bypass": "mirror.internal",
    "docker_users": "ops",
    "docker_registry_mirrors": "https://mirror.internal",
    "vllm_extra_args": "--enforce-eager",
    "toolkit_accept_cves": "CVE-2024-0132",
    "gateway_metrics_allow": "10.0.0.0/8",
}


def _valid_text(key: str) -> str:
    section, field = SETTINGS[key]
    default = getattr(getattr(FleetConfig(), section), field)
    return STRING_SAMPLES.get(key, default if isinstance(default, str) else None)


def test_every_string_setting_has_a_valid_sample():
    assert TEXT_KEYS and all(isinstance(_valid_text(key), str) for key in TEXT_KEYS)
    for key in TEXT_KEYS:  # (files the controller reads are only looked at for vllm)
        assert problems(**{key: _valid_text(key), "deploy_layers": "docker"}) == [], key


@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\t", "\x1b", "\u200b", "\u202e", "\u2028"])
@pytest.mark.parametrize("key", TEXT_KEYS)
def test_no_string_setting_takes_a_control_or_invisible_character(key, char):
    """Class: a character that can end a line of a generated file or hide what a value is."""
    value = _valid_text(key)
    for bad in (value + char, value[:1] + char + value[1:]):
        found = problems(**{key: bad})
        assert len(found) == 1 and found[0].startswith(f"node-1: {key} = "), found
        assert "\n" not in found[0]  # the message stays one line (repr escapes it)


def _items_type(key: str) -> str | None:
    return json.loads(render.render_schema())["properties"][key].get("items", {}).get("type")


def test_every_list_of_strings_has_a_sample():
    lists = {
        k for k in SETTINGS
        if _schema_types(k) == {"array"} and k != "vllm_instances" and _items_type(k) == "string"
    }  # fmt: skip
    assert lists == set(LIST_SAMPLES)


@pytest.mark.parametrize("key", sorted(LIST_SAMPLES))
def test_no_list_item_takes_a_control_character(key):
    plain = {"gateway_plain_http": True} if key.startswith("gateway_") else {}
    assert problems(**{key: [LIST_SAMPLES[key]]}, **plain) == []
    (found,) = problems(**{key: [LIST_SAMPLES[key], LIST_SAMPLES[key][:2] + "\n"]}, **plain)
    assert found.startswith(f"node-1: {key}") and "control or invisible" in found, found


def test_bytes_are_checked_as_the_text_pydantic_reads_them_as():
    (found,) = problems(vllm_hf_cache_dir=b"/var/lib/hf\ntouch")
    assert "control or invisible characters" in found


@pytest.mark.parametrize("key", NUMERIC)
def test_no_numeric_setting_takes_a_bool_nan_or_infinity(key):
    """Class: True is not 1; NaN is not a quantity (and is not 'above the maximum')."""
    for bad in (True, False, float("nan"), float("inf"), float("-inf")):
        (found,) = problems(**{key: bad})
        assert found.startswith(f"node-1: {key} = {bad!r}: "), found
        said = found.split(": ", 2)[2]
        assert "true/false" in said if isinstance(bad, bool) else "finite" in said, found


def test_numeric_settings_have_an_upper_bound():
    schema = json.loads(render.render_schema())["properties"]
    for key in NUMERIC:
        options = schema[key].get("anyOf", [schema[key]])
        assert any("maximum" in option for option in options), key


def test_corpus_keys_never_show_pydantic_internals():
    for case in CASES:
        for problem in load_config("h", gateway_off(case.data))[1]:
            assert not any(
                word in problem.key
                for word in ("list[", "function-", "literal[", "constrained", "union[")
            ), problem


# --- no over-refusal -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        {"vllm_bind_address": "::1"},
        {"vllm_bind_address": "127.0.0.1"},
        {"host_address": "2001:db8::7"},
        {"host_address": "gpu-01.example.internal"},
        {"host_address": "gpu-01.example.internal."},
        {"vllm_hf_cache_dir": "/data/hf-cache_v2.1/models"},
        {"docker_data_root": "/mnt/nvme0n1/docker+data@2"},
        {"preflight_disk_path": "/"},
        {"vllm_model": "meta-llama/Llama-3.1-8B-Instruct"},
        {"vllm_model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"},
        {"vllm_model": "mistralai/Mixtral-8x7B-Instruct-v0.1"},
        {"vllm_model": "gpt2"},
        {"vllm_model": "/models/llama-3.1-8b"},
        {"vllm_served_model_name": "llama3.1_8b-chat"},
        {"vllm_port": parse_cli_arg("8001")},  # --data vllm_port=8001
        {"vllm_port": "8001"},  # the same, were the raw CLI text passed on
        {"vllm_gpus": parse_cli_arg("0,1"), "vllm_tensor_parallel_size": 2},
        {"vllm_gpus": parse_cli_arg("[0, 1, 2, 3]"), "vllm_tensor_parallel_size": 4},
        {"vllm_gpu_memory_utilization": parse_cli_arg("0.85")},
        {"vllm_gpu_memory_utilization": 1},
        {"vllm_max_model_len": 131072},
        {"docker_version": parse_cli_arg('"27.5"')},  # the quoting the refusal suggests
        {"docker_version": "27.5.1", "driver_branch": parse_cli_arg("570")},
        {"deploy_layers": parse_cli_arg("driver,docker")},
        {"deploy_apt_proxy": "http://ops:pa55word@proxy.internal:3142"},
        {"deploy_apt_proxy_bypass": ["download.docker.com", "10.0.0.5", "repo-1.internal"]},
        {"docker_registry_mirrors": ["https://mirror.internal:5000/"]},
        {
            "docker_daemon_options": {
                "dns": ["10.0.0.2"],
                "debug": True,
                "mtu": 1500,
                "features": {"buildkit": True},
                "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 64000, "Soft": 64000}},
                "default-address-pools": [{"base": "172.30.0.0/16", "size": 24}],
                "storage-driver": "overlay2",
                "some-future-key": {"x": [1, 2.5, None]},
            }
        },
        {
            "vllm_extra_args": [
                "--enable-prefix-caching",
                "--max-num-seqs",
                "64",
                "--max-num-batched-tokens=8192",
                "--tool-call-parser",
                "hermes",
                "--model-impl",
                "vllm",
                "--seed",
                "-1",
            ]
        },
        {"vllm_instances": [{"name": "a", "gpus": [0]}, {"name": "b", "gpus": [1], "port": 8001}]},
        {"vllm_api_key_env": "MY_KEY", "vllm_hf_token_env": "HF_TOKEN_PROD"},
        {"ssh_hostname": "fd00::12", "ssh_user": "svc.deploy", "ssh_port": 2222},
        {"ssh_hostname": "gpu-01.example.internal", "ssh_user": "ubuntu"},
    ],
)
def test_valid_edge_values_are_accepted(data):
    config, found = load_config("node-1", gateway_off(data))
    assert found == [] and config is not None


def test_owner_only_key_and_secret_files_are_accepted(tmp_path):
    key, api = tmp_path / "id_ed25519", tmp_path / "api-key"
    key.write_text("key\n")
    api.write_text("sk-owner-only\n")
    for path in (key, api):
        path.chmod(0o600)
    assert problems(ssh_key=str(key), vllm_api_key_file=str(api)) == []
    api.chmod(0o400)
    assert problems(vllm_api_key_file=str(api)) == []
    api.chmod(0o640)
    (found,) = problems(vllm_api_key_file=str(api))
    assert f"chmod 600 {api}" in found


def test_a_version_read_as_a_number_says_how_to_write_it():
    """pyinfra reads --data docker_version=27.5 as a float; the quoting the message gives is
    one pyinfra's own parser reads back as the string."""
    (found,) = problems(docker_version=parse_cli_arg("27.5"))
    assert """--data 'docker_version="27.5"'""" in found
    assert parse_cli_arg('"27.5"') == "27.5"


def test_the_model_refuses_without_the_settings_layer():
    """Defence in depth: constructing the model directly refuses too."""
    for bad in (
        {"hf_cache_dir": "/a\nb"},
        {"port": True},
        {"gpus": []},
        {"extra_args": ["--api-key", "x"]},
        {"model": "Qwen/Qw\u0435n"},
        {"bind_address": True},
    ):
        with pytest.raises(ValidationError):
            VllmConfig(**bad)


# --- masking -----------------------------------------------------------------------------
SECRETS = [
    HF_TOKEN,
    API_KEY,
    RANDOM_KEY,
    "sk-ant-api03-" + "Xy9Lm2Qr7Tv0Wz3Bc6Df8Gh1Jk5",
    "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "YQp8_HALFV822bUavw4Rpue4-WVobWzdz2OtRVANAfo",  # secrets.token_urlsafe(32)
    "Bzsm5S+NI4HkcXrCyu9u9Ck+QfCcubleNT4VYZLGNdw=",  # base64 of 32 random bytes
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----",
]
NOT_SECRETS = [
    "/etc/gpufleet/api-key",
    "HF_TOKEN",
    "VLLM_API_KEY",
    "meta-llama/Llama-3.1-8B-Instruct",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    "nvidia/Llama-3_3-Nemotron-Super-49B-v1_5",
    "RedHatAI/Llama-4-Scout-17B-16E-Instruct-FP8-dynamic",
    "vllm/vllm-openai@sha256:" + "0123456789abcdef" * 4,
    "registry.internal:5000/vllm/vllm-openai:v0.11.0",
    "https://mirror.internal/cuda/ubuntu2404/x86_64",
    "http://ops@proxy.internal:3142",
    "--gpu-memory-utilization",
    "9DC8 5822 9FC7 DD38 854A E2D8 8D81 803C 0EBF CD88",
    "internationalization",
]


@pytest.mark.parametrize("text", SECRETS)
def test_secret_looking_values_are_recognised(text):
    assert looks_secret(text)
    assert text not in repr(mask(text)) and text not in repr(mask([text]))


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_ordinary_values_are_not_taken_for_secrets(text):
    assert not looks_secret(text)
    assert mask(text) == text


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("vllm_hf_tokn", HF_TOKEN),
        ("vllm_api_kye", API_KEY),
        ("vllm_apikey_value", RANDOM_KEY),
        ("gpu_notes", f"the token is {HF_TOKEN}"),
        ("vllm_api_key", "changeme"),  # named like a credential and not a setting
        ("ssh_pasword", "hunter2"),
        ("deploy_apt_proxy_password", "hunter2"),
    ],
)
def test_unknown_keys_never_show_a_secret(key, value):
    (found,) = problems(**{key: value})
    secret = value.split()[-1]
    assert secret not in found and "***" in found and f"node-1: {key} = " in found


def test_a_proxy_password_is_masked_and_the_rest_shown():
    (found,) = problems(deploy_apt_proxy="ftp://ops:Sup3rS3cret@proxy.internal:21")
    assert "Sup3rS3cret" not in found
    assert "'ftp://ops:***@proxy.internal:21'" in found


def test_secret_flags_in_extra_args_are_masked_with_their_value():
    (found,) = problems(vllm_extra_args=["--enforce-eager", "--api-key", "plainword"])
    assert "plainword" not in found and "['--enforce-eager', '--api-key', '***']" in found
    (found,) = problems(vllm_extra_args=["--hf-token=plainword"])
    assert "plainword" not in found and "--hf-token=***" in found


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("vllm_api_key_file", "/nonexistent/gpufleet/api-key"),
        ("vllm_hf_token_env", "HF TOKEN"),
        ("vllm_api_key_envv", "VLLM_API_KEY"),
        ("vllm_hf_token_fille", "/etc/gpufleet/hf-token"),
        ("vllm_require_api_key", True),
        ("vllm_require_api_key", "maybe"),
        # a content hash in a file name is a name (the lab's image archive is named so)
        ("vllm_image_archive", "/nonexistent/vllm-openai-standin-f3f080564831058e.tar"),
        ("vllm_image_archive", "/nonexistent/0123456789abcdef0123456789abcdef01.tar"),
    ],
)
def test_non_secrets_are_shown(key, value, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    found = problems(**{key: value})
    assert found and f"node-1: {key} = {value!r}: " in found[0], found


def test_masking_is_the_one_rule_of_every_problem_line():
    shown = str(Problem("h", "docker_daemon_options", {"labels": [f"t={HF_TOKEN}"]}, "x"))
    assert HF_TOKEN not in shown and "t=***" in shown


# --- hosts of an inventory group, and of the fleet -----------------------------------------
def test_a_host_listed_twice_in_a_group_is_refused():
    with pytest.raises(ConfigError) as raised:
        checked_hosts([("gpu-1", {}), ("gpu-2", {}), ("gpu-1", {"host_gpu_count": 8})])
    assert "gpu-1: name = 'gpu-1': is listed twice in this group" in str(raised.value)
    assert "gpu-2:" not in str(raised.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"ssh_hostname": "10.0.0.5"}, {"ssh_hostname": "10.0.0.5"}),
        ({"ssh_hostname": "GPU-1.internal"}, {"ssh_hostname": "gpu-1.internal."}),
        ({"ssh_hostname": "fd00::5"}, {"ssh_hostname": "fd00:0:0::5", "ssh_port": 22}),
        ({"ssh_hostname": "10.0.0.5", "ssh_port": 2222}, {"ssh_hostname": "10.0.0.5",
                                                          "ssh_port": 2222}),
    ],
)  # fmt: skip
def test_two_hosts_with_one_address_are_refused_naming_both(first, second):
    hosts = [("a", first), ("b", second)]
    with pytest.raises(ConfigError) as raised:
        checked_hosts(hosts)
    assert "b: ssh_hostname = " in str(raised.value) and "address of host a" in str(raised.value)
    with pytest.raises(ConfigError, match="address of host a"):
        load_fleet(hosts)


def test_a_host_whose_name_is_another_hosts_address_is_refused():
    with pytest.raises(ConfigError, match="b: ssh_hostname = '10.0.0.5': is also the address"):
        load_fleet([("10.0.0.5", {}), ("b", {"ssh_hostname": "10.0.0.5"})])


def test_one_address_with_different_ports_is_two_machines():
    """The lab: every host is 127.0.0.1 at its own published port."""
    hosts = [("lab-1", {"ssh_hostname": "127.0.0.1", "ssh_port": 2221}),
             ("lab-2", {"ssh_hostname": "127.0.0.1", "ssh_port": 2222}),
             ("@local", {}), ("@fake/x", {})]  # fmt: skip
    assert checked_hosts(hosts) == hosts
    hosts = [(name, gateway_off(data)) for name, data in hosts]
    assert set(load_fleet(hosts)) == {"lab-1", "lab-2", "@local", "@fake/x"}


def test_the_corpus_files_are_not_readable_by_others_only_where_meant():
    """The corpus' mode cases rely on the umask not mattering."""
    from tests.corpus.bad_input import CORPUS_DIR, FILES, make_files

    make_files()
    for name, mode in FILES.items():
        assert os.stat(CORPUS_DIR / name).st_mode & 0o777 == mode


def test_a_host_reached_at_its_name_must_have_a_host_name():
    """Without ssh_hostname pyinfra connects to the name itself: it is SSH data too."""
    with pytest.raises(ConfigError) as raised:
        checked_hosts([("gpu1\nProxyCommand touch /tmp/x", {}), ("-oProxyCommand=x", {})])
    lines = str(raised.value).splitlines()[1:]
    assert len(lines) == 2 and all("as no ssh_hostname is set" in line for line in lines)
    assert lines[0].startswith("  - 'gpu1\\nProxyCommand touch /tmp/x': name = ")  # one line
    hosts = [("odd name", {"ssh_hostname": "10.0.0.9"}), "gpu-2.internal", ("@local", {})]
    assert checked_hosts(hosts) == hosts  # plain names and connectors are fine
