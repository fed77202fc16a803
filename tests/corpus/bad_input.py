"""The bad-input corpus: configurations every run must refuse before any host is touched.

Each case is the host data that makes one host bad, the data key the error must name and a
fragment of what it must say is allowed. tests/unit/test_bad_input_corpus.py runs every case
through the real deploy.py (pyinfra's fake connector: it records any command sent) and
through the pyinfra CLI, and fails on a traceback, a command sent, or an error that does not
name host, key, value and what is allowed.

HOST_CASES are refusals that depend on what a host is (its OS): they can only be made after
reading the host (facts only), and they fail that host before any change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    id: str
    data: dict[str, Any]
    key: str  # the data key the error names
    allowed: str  # a fragment of what the error says is allowed
    env: dict[str, str] = field(default_factory=dict)  # controller environment for the case


TWO_INSTANCES = [{"name": "a", "gpus": [0, 1]}, {"name": "b", "gpus": [2, 3], "port": 8001}]

CASES = [
    # --- deploy, host, preflight
    Case("layer-typo", {"deploy_layers": "driver,gpu"}, "deploy_layers[1]", "'toolkit' or 'vllm'"),
    Case("has-gpus-not-bool", {"host_has_gpus": "maybe"}, "host_has_gpus", "valid boolean"),
    Case("gpu-count-zero", {"host_gpu_count": 0}, "host_gpu_count", "greater than or equal to 1"),
    Case("gpu-count-huge", {"host_gpu_count": 65}, "host_gpu_count", "less than or equal to 64"),
    Case("host-address-spaces", {"host_address": "a b"}, "host_address", "one word"),
    Case("negative-disk", {"preflight_min_free_disk_gib": -1}, "preflight_min_free_disk_gib",
         "greater than or equal to 0"),
    Case("relative-disk-path", {"preflight_disk_path": "var"}, "preflight_disk_path",
         "an absolute path"),
    # --- driver
    Case("branch-two-digits", {"driver_branch": "57"}, "driver_branch", "3-digit driver branch"),
    Case("version-outside-branch", {"driver_version": "570.195.03"}, "driver_version",
         "must be a version of branch 580"),
    Case("version-as-float", {"driver_version": 580.95}, "driver_version",
         "write the version as a string"),
    Case("driver-source-unknown", {"driver_source": "nvidia"}, "driver_source",
         "'cuda-repo' or 'distro'"),
    Case("mirror-not-a-url", {"driver_cuda_repo_url": "mirror.internal"}, "driver_cuda_repo_url",
         "valid URL"),
    Case("mirror-ftp", {"driver_cuda_repo_url": "ftp://mirror.internal/cuda"},
         "driver_cuda_repo_url", "URL scheme should be 'http' or 'https'"),
    Case("fingerprint-short", {"driver_cuda_repo_fingerprint": "ABCD"},
         "driver_cuda_repo_fingerprint", "40-hex-digit OpenPGP fingerprint"),
    Case("reboot-timeout-negative", {"driver_reboot_timeout_s": -5}, "driver_reboot_timeout_s",
         "greater than or equal to 60"),
    Case("modules-closed", {"driver_kernel_modules": "closed"}, "driver_kernel_modules",
         "'auto', 'open' or 'proprietary'"),
    Case("fabric-manager-yes", {"driver_fabric_manager": "yes"}, "driver_fabric_manager",
         "'auto', 'enabled' or 'disabled'"),
    Case("key-typo", {"drivr_branch": "570"}, "drivr_branch", "did you mean 'driver_branch'?"),
    Case("unknown-key", {"gpu_flavour": "fast"}, "gpu_flavour", "unknown setting"),
    # --- docker
    Case("docker-source-unknown", {"docker_source": "ce"}, "docker_source",
         "'docker-repo' or 'distro'"),
    Case("docker-version-latest", {"docker_version": "latest"}, "docker_version",
         "a Docker version such as 27.5"),
    Case("docker-user-uppercase", {"docker_users": "ops,Root"}, "docker_users[1]",
         "a Unix user name"),
    Case("log-size-unit", {"docker_log_max_size": "100MB"}, "docker_log_max_size",
         "a size such as 512m"),
    Case("log-files-zero", {"docker_log_max_file": 0}, "docker_log_max_file",
         "greater than or equal to 1"),
    Case("docker-timeout-negative", {"docker_restart_timeout_s": -1}, "docker_restart_timeout_s",
         "greater than or equal to 10"),
    Case("daemon-options-not-json", {"docker_daemon_options": {"labels": {1, 2}}},
         "docker_daemon_options", "must be JSON-serialisable"),
    Case("registry-mirror-no-scheme", {"docker_registry_mirrors": "mirror.internal"},
         "docker_registry_mirrors[0]", "valid URL"),
    Case("data-root-relative", {"docker_data_root": "docker"}, "docker_data_root",
         "an absolute path"),
    Case("cgroup-driver-unknown", {"docker_cgroup_driver": "cgroup"}, "docker_cgroup_driver",
         "'systemd' or 'cgroupfs'"),
    # --- toolkit
    Case("toolkit-version-short", {"toolkit_version": "1.17"}, "toolkit_version",
         "a toolkit version such as 1.17.8"),
    Case("runtime-typo", {"toolkit_default_runtime": "nvida"}, "toolkit_default_runtime",
         "Input should be 'nvidia'"),
    Case("toolkit-fingerprint-hex", {"toolkit_repo_fingerprint": "Z" * 40},
         "toolkit_repo_fingerprint", "40-hex-digit"),
    Case("cdi-not-bool", {"toolkit_cdi": "sometimes"}, "toolkit_cdi", "valid boolean"),
    # --- vllm
    Case("image-latest", {"vllm_image": "vllm/vllm-openai:latest"}, "vllm_image",
         "the floating tag 'latest' is refused"),
    Case("image-unpinned", {"vllm_image": "vllm/vllm-openai"}, "vllm_image",
         "an image pinned by tag or digest"),
    Case("gpu-mem-zero", {"vllm_gpu_memory_utilization": 0}, "vllm_gpu_memory_utilization",
         "greater than 0"),
    Case("gpu-mem-above-one", {"vllm_gpu_memory_utilization": 1.2},
         "vllm_gpu_memory_utilization", "less than or equal to 1"),
    Case("port-out-of-range", {"vllm_port": 70000}, "vllm_port", "less than or equal to 65535"),
    Case("tp-above-gpus", {"vllm_gpus": [0, 1], "vllm_tensor_parallel_size": 4},
         "vllm_tensor_parallel_size", "at most the 2 GPU(s) of vllm-main"),
    Case("tp-above-host-gpus", {"host_gpu_count": 2, "vllm_tensor_parallel_size": 4},
         "vllm_tensor_parallel_size", "at most the 2 GPU(s) of vllm-main"),
    Case("gpu-sets-overlap",
         {"vllm_instances": [TWO_INSTANCES[0], {**TWO_INSTANCES[1], "gpus": [1, 2]}]},
         "vllm_instances[1].gpus", "shares GPU [1] with vllm-a"),
    Case("instance-takes-all-gpus",
         {"vllm_instances": [TWO_INSTANCES[0], {"name": "b", "port": 8001}]},
         "vllm_gpus", "shares every GPU with vllm-a"),
    Case("ports-collide",
         {"vllm_instances": [TWO_INSTANCES[0], {**TWO_INSTANCES[1], "port": 8000}]},
         "vllm_instances[1].port", "already used by vllm-a"),
    Case("instance-names-collide",
         {"vllm_instances": [TWO_INSTANCES[0], {**TWO_INSTANCES[1], "name": "a"}]},
         "vllm_instances[1].name", "already used by vllm-a"),
    Case("gpu-beyond-host", {"host_gpu_count": 2, "vllm_gpus": [3]}, "vllm_gpus",
         "GPU indices below host_gpu_count (2)"),
    Case("instance-key-typo", {"vllm_instances": [{"name": "a", "prot": 8001}]},
         "vllm_instances[0].prot", "Extra inputs are not permitted"),
    Case("instance-name-spaces", {"vllm_instances": [{"name": "big model"}]},
         "vllm_instances[0].name", "a short name"),
    Case("ready-timeout-negative", {"vllm_ready_timeout_s": -1}, "vllm_ready_timeout_s",
         "greater than or equal to 10"),
    Case("bind-hostname", {"vllm_bind_address": "localhost"}, "vllm_bind_address",
         "valid IPv4 or IPv6 address"),
    Case("dtype-unknown", {"vllm_dtype": "fp32"}, "vllm_dtype", "'auto', 'half'"),
    Case("quantization-unknown", {"vllm_quantization": "int3"}, "vllm_quantization", "'awq'"),
    Case("model-with-spaces", {"vllm_model": "Qwen 2.5"}, "vllm_model", "one word"),
    Case("cache-dir-relative", {"vllm_hf_cache_dir": "hf"}, "vllm_hf_cache_dir",
         "an absolute path"),
    Case("api-key-required-missing", {"vllm_require_api_key": True}, "vllm_require_api_key",
         "no API key on the controller"),
    Case("api-key-file-missing", {"vllm_api_key_file": "/nonexistent/gpufleet/api-key"},
         "vllm_api_key_file", "unreadable on the controller"),
    Case("api-key-with-blank", {}, "vllm_api_key_env",
         "must hold printable ASCII without blanks", env={"VLLM_API_KEY": "sk two words"}),
    Case("image-archive-missing", {"vllm_image_archive": "/nonexistent/vllm.tar"},
         "vllm_image_archive", "no such file on the controller"),
    # --- broken SSH data in the inventory
    Case("ssh-port-range", {"ssh_port": 70000}, "ssh_port", "a port number from 1 to 65535"),
    Case("ssh-port-text", {"ssh_port": "twenty-two"}, "ssh_port", "a port number"),
    Case("ssh-key-missing", {"ssh_key": "/nonexistent/id_ed25519"}, "ssh_key",
         "a private key file that exists on the controller"),
    Case("ssh-known-hosts-missing", {"ssh_known_hosts_file": "/nonexistent/known_hosts"},
         "ssh_known_hosts_file", "a known_hosts file that exists"),
    Case("ssh-strict-unknown", {"ssh_strict_host_key_checking": "maybe"},
         "ssh_strict_host_key_checking", "one of yes, no, accept-new"),
    Case("ssh-hostname-spaces", {"ssh_hostname": "gpu node 1"}, "ssh_hostname", "no spaces"),
]  # fmt: skip


@dataclass(frozen=True)
class HostCase:
    id: str
    os: tuple[str, str, str]  # os id, version, codename of the host
    data: dict[str, Any]
    message: str  # what the host's failure says


HOST_CASES = [
    HostCase("docker-distro-on-rocky", ("rocky", "9.4", ""),
             {"docker_source": "distro", "deploy_layers": "docker"},
             "rocky 9.4 has no Docker packages of its own: use docker_source = docker-repo"),
    HostCase("driver-branch-not-in-debian", ("debian", "12", "bookworm"),
             {"driver_source": "distro", "driver_branch": "580", "deploy_layers": "driver"},
             "driver_branch 580 is not in debian 12's archive"),
]  # fmt: skip
