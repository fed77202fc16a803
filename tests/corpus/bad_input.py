"""The bad-input corpus: configurations every run must refuse before any host is touched.

Each case is the host data that makes one host bad, the data key the error must name and a
fragment of what it must say is allowed. tests/unit/test_bad_input_corpus.py runs every case
through the real deploy.py (pyinfra's fake connector: it records any command sent) and
through the pyinfra CLI, and fails on a traceback, a command sent, or an error that does not
name host, key, value and what is allowed.

A case's ``secret`` is text that must appear nowhere in the output (a token under a misspelt
key, a proxy password). Cases that name controller files with a given mode (a world-readable
key) use the files ``make_files()`` creates under CORPUS_DIR.

HOST_CASES are refusals that depend on what a host is (its OS): they can only be made after
reading the host (facts only), and they fail that host before any change.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Case:
    id: str
    data: dict[str, Any]
    key: str  # the data key the error names
    allowed: str  # a fragment of what the error says is allowed
    env: dict[str, str] = field(default_factory=dict)  # controller environment for the case
    secret: str | None = None  # text that must not appear anywhere in the output


class _Float(float):
    """NaN and infinity that survive ``repr`` into an inventory file (``float('nan')``)."""

    def __repr__(self) -> str:
        return f"float({super().__repr__()!r})"


NAN, INF = _Float("nan"), _Float("inf")

# Controller files of a given mode, for the cases about files other users can read.
CORPUS_DIR = Path(tempfile.gettempdir()) / f"gpufleet-corpus-{os.getuid()}"
FILES = {
    "id_world_readable": 0o644,
    "id_group_readable": 0o640,
    "api_key_group_readable": 0o640,
    "hf_token_world_readable": 0o604,
}


def make_files() -> None:
    """Create CORPUS_DIR's files with their modes (again, whatever the umask)."""
    CORPUS_DIR.mkdir(mode=0o700, exist_ok=True)
    for name, mode in FILES.items():
        path = CORPUS_DIR / name
        path.write_text("sk-corpus-not-a-real-key\n")
        path.chmod(mode)


def _file(name: str) -> str:
    return str(CORPUS_DIR / name)


HF_TOKEN = "hf_" + "aBcD3fGh1jKlMn0pQrStUvWxYz2345678"  # shaped like a real token
API_KEY = "sk-" + "proj4Xy9Lm2Qr7Tv0Wz3Bc6Df8Gh1Jk5"
RANDOM_KEY = "3f9a0c2e7b4d61a8c5e0f7b2d9a4c6e13b8f0a7d2c5e9b1f4a6d8c0e3b7f9a2c"  # openssl rand -hex


TWO_INSTANCES = [{"name": "a", "gpus": [0, 1]}, {"name": "b", "gpus": [2, 3], "port": 8001}]

CASES = [
    # --- deploy, host, preflight
    Case("layer-typo", {"deploy_layers": "driver,gpu"}, "deploy_layers[1]", "or 'monitoring'"),
    Case("has-gpus-not-bool", {"host_has_gpus": "maybe"}, "host_has_gpus", "valid boolean"),
    Case("gpu-count-zero", {"host_gpu_count": 0}, "host_gpu_count", "greater than or equal to 1"),
    Case("gpu-count-huge", {"host_gpu_count": 65}, "host_gpu_count", "less than or equal to 64"),
    Case("host-address-spaces", {"host_address": "a b"}, "host_address", "a host name"),
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
         "'cuda-repo', 'distro' or 'preinstalled'"),
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
    Case("model-with-spaces", {"vllm_model": "Qwen 2.5"}, "vllm_model", "a Hugging Face id"),
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
    # === issue 13, class 5: a bool is not a number (vllm_port = True became port 1)
    Case("port-bool", {"vllm_port": True}, "vllm_port", "not true/false"),
    Case("tp-bool", {"vllm_tensor_parallel_size": True}, "vllm_tensor_parallel_size",
         "not true/false"),
    Case("gpu-count-bool", {"host_gpu_count": True}, "host_gpu_count", "not true/false"),
    Case("log-files-bool", {"docker_log_max_file": False}, "docker_log_max_file",
         "not true/false"),
    Case("lock-timeout-bool", {"deploy_lock_timeout_s": True}, "deploy_lock_timeout_s",
         "not true/false"),
    Case("reboot-timeout-bool", {"driver_reboot_timeout_s": True}, "driver_reboot_timeout_s",
         "not true/false"),
    Case("restart-timeout-bool", {"docker_restart_timeout_s": True},
         "docker_restart_timeout_s", "not true/false"),
    Case("ready-timeout-bool", {"vllm_ready_timeout_s": True}, "vllm_ready_timeout_s",
         "not true/false"),
    Case("max-model-len-bool", {"vllm_max_model_len": True}, "vllm_max_model_len",
         "not true/false"),
    Case("gpu-mem-bool", {"vllm_gpu_memory_utilization": True}, "vllm_gpu_memory_utilization",
         "must be a number, not true/false"),
    Case("disk-gib-bool", {"preflight_min_free_disk_gib": False}, "preflight_min_free_disk_gib",
         "must be a number, not true/false"),
    Case("instance-port-bool", {"vllm_instances": [{"name": "a", "port": True}]},
         "vllm_instances[0].port", "not true/false"),
    Case("ssh-port-bool", {"ssh_port": True}, "ssh_port", "a port number from 1 to 65535"),
    # === class 5/7: numbers are finite (NaN was reported as "less than or equal to 1000000")
    Case("disk-gib-nan", {"preflight_min_free_disk_gib": NAN}, "preflight_min_free_disk_gib",
         "must be a finite number"),
    Case("cache-gib-inf", {"vllm_min_free_cache_gib": INF}, "vllm_min_free_cache_gib",
         "must be a finite number"),
    Case("gpu-mem-nan", {"vllm_gpu_memory_utilization": NAN}, "vllm_gpu_memory_utilization",
         "must be a finite number"),
    Case("gpu-mem-nan-text", {"vllm_gpu_memory_utilization": "nan"},
         "vllm_gpu_memory_utilization", "must be a finite number"),
    Case("port-nan", {"vllm_port": NAN}, "vllm_port", "must be a finite whole number"),
    Case("instance-gpu-mem-inf",
         {"vllm_instances": [{"name": "a", "gpu_memory_utilization": INF}]},
         "vllm_instances[0].gpu_memory_utilization", "must be a finite number"),
    # === class 5: sane upper bounds
    Case("max-model-len-huge", {"vllm_max_model_len": 10**40}, "vllm_max_model_len",
         "less than or equal to 16777216"),
    Case("max-model-len-tiny", {"vllm_max_model_len": 8}, "vllm_max_model_len",
         "greater than or equal to 16"),
    Case("lock-timeout-huge", {"deploy_lock_timeout_s": 10**9}, "deploy_lock_timeout_s",
         "less than or equal to 86400"),
    Case("disk-gib-huge", {"preflight_min_free_disk_gib": 1e12}, "preflight_min_free_disk_gib",
         "less than or equal to 1000000"),
    Case("tp-huge", {"vllm_tensor_parallel_size": 65}, "vllm_tensor_parallel_size",
         "less than or equal to 64"),
    # === class 5/7: GPU sets: each index once, no bools, at least one
    Case("gpus-duplicate", {"vllm_gpus": [0, 0]}, "vllm_gpus", "each GPU index once"),
    Case("gpus-duplicate-text", {"vllm_gpus": "1,2,1"}, "vllm_gpus", "each GPU index once"),
    Case("gpus-bools", {"vllm_gpus": [True, False]}, "vllm_gpus", "GPU indices from 0 to 63"),
    Case("gpus-empty", {"vllm_gpus": []}, "vllm_gpus", "at least one GPU index or 'all'"),
    Case("gpus-blank-text", {"vllm_gpus": ""}, "vllm_gpus", "must be 'all' or GPU indices"),
    Case("gpus-negative", {"vllm_gpus": [-1]}, "vllm_gpus", "GPU indices from 0 to 63"),
    Case("gpus-too-big", {"vllm_gpus": [64]}, "vllm_gpus", "GPU indices from 0 to 63"),
    Case("gpus-fraction", {"vllm_gpus": [0.5]}, "vllm_gpus", "GPU indices from 0 to 63"),
    Case("gpus-dict", {"vllm_gpus": {"0": 1}}, "vllm_gpus", "must be 'all' or GPU indices"),
    Case("instance-gpus-empty", {"vllm_instances": [{"name": "a", "gpus": []}]},
         "vllm_instances[0].gpus", "at least one GPU index or 'all'"),
    Case("instance-gpus-duplicate", {"vllm_instances": [{"name": "a", "gpus": [3, 3]}]},
         "vllm_instances[0].gpus", "each GPU index once"),
    Case("instance-gpus-bool", {"vllm_instances": [{"name": "a", "gpus": [True]}]},
         "vllm_instances[0].gpus", "GPU indices from 0 to 63"),
    # === class 5: docker_daemon_options: Docker's types, plain JSON, no key a setting owns
    Case("daemon-live-restore-text", {"docker_daemon_options": {"live-restore": "yes"}},
         "docker_daemon_options", "set docker_live_restore instead"),
    Case("daemon-data-root", {"docker_daemon_options": {"data-root": "/srv/docker"}},
         "docker_daemon_options", "set docker_data_root instead"),
    Case("daemon-log-opts", {"docker_daemon_options": {"log-opts": {"max-size": "1g"}}},
         "docker_daemon_options", "set docker_log_max_size and docker_log_max_file"),
    Case("daemon-log-driver", {"docker_daemon_options": {"log-driver": "journald"}},
         "docker_daemon_options", "the deploy uses json-file"),
    Case("daemon-registry-mirrors",
         {"docker_daemon_options": {"registry-mirrors": ["https://m.internal"]}},
         "docker_daemon_options", "set docker_registry_mirrors instead"),
    Case("daemon-exec-opts",
         {"docker_daemon_options": {"exec-opts": ["native.cgroupdriver=systemd"]}},
         "docker_daemon_options", "set docker_cgroup_driver instead"),
    Case("daemon-default-runtime", {"docker_daemon_options": {"default-runtime": "nvidia"}},
         "docker_daemon_options", "set toolkit_default_runtime instead"),
    Case("daemon-runtimes", {"docker_daemon_options": {"runtimes": {"kata": {"path": "k"}}}},
         "docker_daemon_options", "the toolkit layer registers the nvidia runtime"),
    Case("daemon-hosts", {"docker_daemon_options": {"hosts": ["tcp://0.0.0.0:2375"]}},
         "docker_daemon_options", "docker.service already passes -H fd://"),
    Case("daemon-containerd", {"docker_daemon_options": {"containerd": "/run/c.sock"}},
         "docker_daemon_options", "already passes --containerd"),
    Case("daemon-debug-text", {"docker_daemon_options": {"debug": "yes"}},
         "docker_daemon_options", "'debug' must be true or false"),
    Case("daemon-mtu-bool", {"docker_daemon_options": {"mtu": True}}, "docker_daemon_options",
         "'mtu' must be a whole number"),
    Case("daemon-mtu-text", {"docker_daemon_options": {"mtu": "1500"}},
         "docker_daemon_options", "'mtu' must be a whole number"),
    Case("daemon-dns-text", {"docker_daemon_options": {"dns": "10.0.0.2"}},
         "docker_daemon_options", "'dns' must be a list of strings"),
    Case("daemon-dns-numbers", {"docker_daemon_options": {"dns": [10]}},
         "docker_daemon_options", "'dns' must be a list of strings"),
    Case("daemon-features-text", {"docker_daemon_options": {"features": {"buildkit": "on"}}},
         "docker_daemon_options", "an object of true/false values"),
    Case("daemon-nan", {"docker_daemon_options": {"oom-score-adjust": NAN}},
         "docker_daemon_options", "no NaN or infinity"),
    Case("daemon-nested-inf",
         {"docker_daemon_options": {"default-ulimits": {"nofile": {"Hard": INF}}}},
         "docker_daemon_options", "no NaN or infinity"),
    Case("daemon-number-key", {"docker_daemon_options": {1: "x"}}, "docker_daemon_options",
         "the key 1 is not a string"),
    Case("daemon-key-newline", {"docker_daemon_options": {"debug\n": True}},
         "docker_daemon_options", "control or invisible characters"),
    # === class 5/1: no control or invisible character in any string setting
    Case("cache-dir-newline", {"vllm_hf_cache_dir": "/var/lib/hf\nx"}, "vllm_hf_cache_dir",
         "control or invisible characters (found U+000A)"),
    Case("cache-dir-nul", {"vllm_hf_cache_dir": "/var/lib/hf\x00"}, "vllm_hf_cache_dir",
         "found U+0000"),
    Case("disk-path-tab", {"preflight_disk_path": "/data\t"}, "preflight_disk_path",
         "found U+0009"),
    Case("cuda-url-newline", {"driver_cuda_repo_url": "https://mirror.internal/cu\nda"},
         "driver_cuda_repo_url", "control or invisible characters"),
    Case("docker-url-nul", {"docker_repo_url": "https://mirror.internal/\x00docker"},
         "docker_repo_url", "control or invisible characters"),
    Case("toolkit-url-cr", {"toolkit_repo_url": "https://mirror.internal/\rnvidia"},
         "toolkit_repo_url", "found U+000D"),
    Case("registry-mirror-newline", {"docker_registry_mirrors": ["https://m\n.internal"]},
         "docker_registry_mirrors", "control or invisible characters"),
    Case("apt-proxy-newline", {"deploy_apt_proxy": "http://proxy.internal:3142\n"},
         "deploy_apt_proxy", "control or invisible characters"),
    Case("model-zero-width", {"vllm_model": "Qwen/Qwen2.5\u200b-1.5B-Instruct"}, "vllm_model",
         "found U+200B"),
    Case("model-bidi", {"vllm_model": "Qwen/\u202eQwen2.5"}, "vllm_model", "found U+202E"),
    Case("served-name-newline", {"vllm_served_model_name": "chat\nx"},
         "vllm_served_model_name", "control or invisible characters"),
    Case("extra-args-newline", {"vllm_extra_args": ["--enable-prefix-caching\n--x"]},
         "vllm_extra_args", "control or invisible characters"),
    Case("instance-name-newline", {"vllm_instances": [{"name": "a\nb"}]},
         "vllm_instances[0].name", "control or invisible characters"),
    Case("docker-user-newline", {"docker_users": ["ops\nroot"]}, "docker_users",
         "control or invisible characters"),
    Case("env-name-zero-width", {"vllm_api_key_env": "VLLM\u200bAPI_KEY"}, "vllm_api_key_env",
         "found U+200B"),
    Case("image-newline", {"vllm_image": "vllm/vllm-openai:v0.11.0\n"}, "vllm_image",
         "control or invisible characters"),
    Case("fingerprint-newline", {"docker_repo_fingerprint": "9DC8 5822 9FC7 DD38 854A\n"},
         "docker_repo_fingerprint", "control or invisible characters"),
    Case("host-address-newline", {"host_address": "10.0.0.1\nx"}, "host_address",
         "control or invisible characters"),
    Case("docker-version-newline", {"docker_version": "27.5\n"}, "docker_version",
         "control or invisible characters"),
    Case("line-separator", {"vllm_hf_cache_dir": "/var/lib/hf\u2028x"}, "vllm_hf_cache_dir",
         "found U+2028"),
    # === class 1: paths: only characters a server path needs (no shell metacharacters)
    Case("cache-dir-command", {"vllm_hf_cache_dir": "/var/lib/hf$(touch${IFS}/tmp/x)"},
         "vllm_hf_cache_dir", "an absolute path of letters, digits"),
    Case("cache-dir-quotes", {"vllm_hf_cache_dir": '/var/lib/hf";reboot;"'},
         "vllm_hf_cache_dir", "no blanks, quotes, shell characters"),
    Case("cache-dir-backtick", {"vllm_hf_cache_dir": "/var/lib/`id`"}, "vllm_hf_cache_dir",
         "an absolute path of letters"),
    Case("cache-dir-colon", {"vllm_hf_cache_dir": "/var/lib/hf:/etc"}, "vllm_hf_cache_dir",
         "an absolute path of letters"),
    Case("data-root-blank", {"docker_data_root": "/data/docker root"}, "docker_data_root",
         "an absolute path of letters"),
    Case("data-root-dotdot", {"docker_data_root": "/data/../etc"}, "docker_data_root",
         "without '..' components"),
    Case("disk-path-glob", {"preflight_disk_path": "/data/*"}, "preflight_disk_path",
         "an absolute path of letters"),
    Case("archive-dollar", {"vllm_image_archive": "/srv/$HOME/vllm.tar"}, "vllm_image_archive",
         "an absolute path of letters"),
    Case("api-key-file-quote", {"vllm_api_key_file": "/etc/gpufleet/key'"},
         "vllm_api_key_file", "an absolute path of letters"),
    Case("hf-token-file-relative", {"vllm_hf_token_file": "token.txt"}, "vllm_hf_token_file",
         "an absolute path of letters"),
    # === class 1/5: host names and URLs
    Case("bypass-apt-injection",
         {"deploy_apt_proxy_bypass": ['mirror";Acquire::http::Proxy "http://evil']},
         "deploy_apt_proxy_bypass[0]", "a host name (RFC 1123"),
    Case("bypass-url", {"deploy_apt_proxy_bypass": ["http://mirror.internal"]},
         "deploy_apt_proxy_bypass[0]", "a host name (RFC 1123"),
    Case("bypass-leading-dash", {"deploy_apt_proxy_bypass": "ok.internal,-mirror"},
         "deploy_apt_proxy_bypass[1]", "a host name (RFC 1123"),
    Case("bypass-underscore", {"deploy_apt_proxy_bypass": ["my_mirror"]},
         "deploy_apt_proxy_bypass[0]", "a host name (RFC 1123"),
    Case("apt-proxy-ftp", {"deploy_apt_proxy": "ftp://proxy.internal:21"}, "deploy_apt_proxy",
         "URL scheme should be 'http' or 'https'"),
    Case("apt-proxy-quote", {"deploy_apt_proxy": 'http://proxy"x.internal:3142'},
         "deploy_apt_proxy", "plain ASCII"),
    Case("apt-proxy-blank", {"deploy_apt_proxy": "http://proxy :3142"}, "deploy_apt_proxy",
         "plain ASCII"),
    Case("cuda-url-unicode", {"driver_cuda_repo_url": "https://mirr\u00f6r.internal/cuda"},
         "driver_cuda_repo_url", "plain ASCII"),
    Case("host-address-semicolon", {"host_address": "10.0.0.1;x"}, "host_address",
         "a host name (letters, digits"),
    Case("host-address-url", {"host_address": "http://10.0.0.1"}, "host_address",
         "or an IPv4/IPv6 address"),
    Case("bind-bool", {"vllm_bind_address": True}, "vllm_bind_address",
         "written as a string"),
    Case("bind-zone", {"vllm_bind_address": "fe80::1%eth0"}, "vllm_bind_address", "no %zone"),
    # === class 5: model names: the ASCII Hugging Face id character set
    Case("model-cyrillic", {"vllm_model": "Qwen/Qwen2.5-1.5B-Instru\u0441t"}, "vllm_model",
         "a Hugging Face id"),
    Case("model-fullwidth-slash", {"vllm_model": "Qwen\uff0fQwen2.5"}, "vllm_model",
         "ASCII letters, digits"),
    Case("model-two-slashes", {"vllm_model": "a/b/c"}, "vllm_model", "and one '/'"),
    Case("model-dotdot", {"vllm_model": "/models/../etc"}, "vllm_model", "without '..'"),
    Case("model-shell", {"vllm_model": "Qwen/x;reboot"}, "vllm_model", "a Hugging Face id"),
    Case("served-name-blank", {"vllm_served_model_name": "my model"}, "vllm_served_model_name",
         "a Hugging Face id"),
    Case("instance-model-unicode", {"vllm_instances": [{"name": "a", "model": "Q\u0175en/x"}]},
         "vllm_instances[0].model", "a Hugging Face id"),
    # === class 3/5: vllm_extra_args: no secret, no flag the layer sets itself
    Case("extra-args-api-key", {"vllm_extra_args": ["--api-key", API_KEY]}, "vllm_extra_args",
         "vllm_api_key_env or vllm_api_key_file", secret=API_KEY),
    Case("extra-args-api-key-equals", {"vllm_extra_args": ["--api-key=changeme"]},
         "vllm_extra_args", "vllm_api_key_file", secret="changeme"),
    Case("extra-args-hf-token", {"vllm_extra_args": ["--hf-token", HF_TOKEN]},
         "vllm_extra_args", "vllm_hf_token_env or vllm_hf_token_file", secret=HF_TOKEN),
    Case("extra-args-api-key-abbreviated", {"vllm_extra_args": ["--api-k", "plainword"]},
         "vllm_extra_args", "a secret on the command line", secret="plainword"),
    Case("extra-args-api-key-upper", {"vllm_extra_args": ["--API_KEY=plainword"]},
         "vllm_extra_args", "a secret on the command line", secret="plainword"),
    Case("extra-args-secret-value", {"vllm_extra_args": ["--some-flag", HF_TOKEN]},
         "vllm_extra_args", "a secret on the command line", secret=HF_TOKEN),
    Case("extra-args-port", {"vllm_extra_args": ["--port", "9000"]}, "vllm_extra_args",
         "set vllm_port"),
    Case("extra-args-host", {"vllm_extra_args": ["--host=127.0.0.1"]}, "vllm_extra_args",
         "set vllm_bind_address"),
    Case("extra-args-model", {"vllm_extra_args": ["--model", "other/model"]}, "vllm_extra_args",
         "set vllm_model"),
    Case("extra-args-tp-short", {"vllm_extra_args": ["-tp", "2"]}, "vllm_extra_args",
         "set vllm_tensor_parallel_size"),
    Case("extra-args-tp-underscore", {"vllm_extra_args": ["--tensor_parallel_size=2"]},
         "vllm_extra_args", "set vllm_tensor_parallel_size"),
    Case("extra-args-abbreviation", {"vllm_extra_args": ["--max-model", "4096"]},
         "vllm_extra_args", "set vllm_max_model_len"),
    Case("extra-args-dtype", {"vllm_extra_args": "--enforce-eager,--dtype=half"},
         "vllm_extra_args", "set vllm_dtype"),
    Case("extra-args-quantization", {"vllm_extra_args": ["--quantization", "awq"]},
         "vllm_extra_args", "set vllm_quantization"),
    Case("extra-args-served-name", {"vllm_extra_args": ["--served-model-name", "x"]},
         "vllm_extra_args", "set vllm_served_model_name"),
    Case("extra-args-gpu-memory", {"vllm_extra_args": ["--gpu-memory-utilization=0.5"]},
         "vllm_extra_args", "set vllm_gpu_memory_utilization"),
    Case("instance-extra-args-port",
         {"vllm_instances": [{"name": "a", "extra_args": ["--port", "1"]}]},
         "vllm_instances[0].extra_args", "set vllm_port"),
    # === class 5: deploy_layers: each layer once
    Case("layers-duplicate", {"deploy_layers": "driver,driver"}, "deploy_layers",
         "each layer once ('driver' is given twice)"),
    Case("layers-duplicate-list", {"deploy_layers": ["docker", "vllm", "docker"]},
         "deploy_layers", "each layer once ('docker'"),
    # === class 7: versions pyinfra's --data read as numbers: say how to write them
    Case("docker-version-float", {"docker_version": 27.5}, "docker_version",
         """--data 'docker_version="27.5"'"""),
    Case("toolkit-version-float", {"toolkit_version": 1.17}, "toolkit_version",
         """toolkit_version = "1.17" in a file"""),
    Case("driver-branch-float", {"driver_branch": 580.0}, "driver_branch",
         "write the version as a string"),
    Case("docker-version-bool", {"docker_version": True}, "docker_version",
         "Input should be a valid string"),
    # === class 3: secrets never echoed, masked by what the value looks like
    Case("misspelt-hf-token", {"vllm_hf_tokn": HF_TOKEN}, "vllm_hf_tokn", "unknown setting",
         secret=HF_TOKEN),
    Case("misspelt-api-key", {"vllm_api_kye": API_KEY}, "vllm_api_kye", "unknown setting",
         secret=API_KEY),
    Case("misspelt-key-hex-secret", {"vllm_apikey_value": RANDOM_KEY}, "vllm_apikey_value",
         "unknown setting", secret=RANDOM_KEY),
    Case("secret-under-odd-key", {"gpu_notes": "token " + HF_TOKEN}, "gpu_notes",
         "unknown setting", secret=HF_TOKEN),
    Case("secret-named-key-plain-value", {"vllm_api_key": "changeme"}, "vllm_api_key",
         "unknown setting", secret="changeme"),
    Case("apt-proxy-password-bad-scheme", {"deploy_apt_proxy": "ftp://ops:Sup3rS3cret@proxy:21"},
         "deploy_apt_proxy", "URL scheme should be", secret="Sup3rS3cret"),
    Case("apt-proxy-password-newline",
         {"deploy_apt_proxy": "http://ops:Sup3rS3cret@proxy.internal\n:3142"},
         "deploy_apt_proxy", "control or invisible characters", secret="Sup3rS3cret"),
    Case("mirror-password", {"docker_registry_mirrors": ["ftp://ops:m1rrorPa55@m.internal"]},
         "docker_registry_mirrors[0]", "URL scheme", secret="m1rrorPa55"),
    Case("token-in-model-field", {"vllm_model": HF_TOKEN + " "}, "vllm_model",
         "a Hugging Face id", secret=HF_TOKEN),
    # === class 5: SSH data: host and user names, private keys only their owner reads
    Case("ssh-hostname-newline", {"ssh_hostname": "gpu1\nProxyCommand touch /tmp/x"},
         "ssh_hostname", "control or invisible characters"),
    Case("ssh-hostname-option", {"ssh_hostname": "-oProxyCommand=touch"}, "ssh_hostname",
         "no spaces, quotes, '%', leading '-'"),
    Case("ssh-hostname-percent", {"ssh_hostname": "gpu%h"}, "ssh_hostname",
         "a host name or IP address"),
    Case("ssh-hostname-quote", {"ssh_hostname": 'gpu"1'}, "ssh_hostname",
         "a host name or IP address"),
    Case("ssh-hostname-zone", {"ssh_hostname": "fe80::1%eth0"}, "ssh_hostname",
         "a host name or IP address"),
    Case("ssh-user-blank", {"ssh_user": "ubuntu root"}, "ssh_user", "a user name"),
    Case("ssh-user-option", {"ssh_user": "-oProxyCommand=x"}, "ssh_user",
         "not starting with '-'"),
    Case("ssh-user-newline", {"ssh_user": "root\nHost *"}, "ssh_user",
         "control or invisible characters"),
    Case("ssh-key-world-readable", {"ssh_key": _file("id_world_readable")}, "ssh_key",
         "chmod 600"),
    Case("ssh-key-group-readable", {"ssh_key": _file("id_group_readable")}, "ssh_key",
         "readable by its owner only (mode 0640"),
    Case("ssh-known-hosts-newline", {"ssh_known_hosts_file": "/etc/ssh/known\nhosts"},
         "ssh_known_hosts_file", "control or invisible characters"),
    Case("api-key-file-group-readable", {"vllm_api_key_file": _file("api_key_group_readable")},
         "vllm_api_key_file", "chmod 600"),
    Case("hf-token-file-world-readable",
         {"vllm_hf_token_file": _file("hf_token_world_readable")}, "vllm_hf_token_file",
         "readable by its owner only (mode 0604)"),
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
