"""Defaults for every host: rendered by `python -m operations.cli.render`, do not edit.

Override any key in group_data/<group>.py, in host data in the inventory, or with
`--data key=value`. The README's config reference says what each key allows.
"""

# --- deploy: What a deploy run does.
# Layers to apply (in stack order); preflight always runs (e.g. --data deploy_layers=driver,docker).
deploy_layers = ["preflight", "driver", "docker", "toolkit", "vllm", "monitoring"]
# How long apt waits for a lock another process holds (unattended-upgrades).
deploy_lock_timeout_s = 600
# HTTP proxy apt fetches through, e.g. a shared apt-cacher-ng: one download.
deploy_apt_proxy = None
# Repository hosts apt reaches directly, not through apt_proxy.
deploy_apt_proxy_bypass = []
# How long reading one fact of a host may take before the host fails.
deploy_fact_timeout_s = 60
# How long one command of an operation may take (when no other bound is its).
deploy_command_timeout_s = 600
# How long a package install, image pull or load, or file transfer may take.
deploy_install_timeout_s = 1800
# Added to the waits with a deadline of their own (readiness, Docker restart).
deploy_timeout_margin_s = 60
# While a command runs, an SSH keepalive that needs a reply goes this often.
deploy_keepalive_interval_s = 10
# Keepalives left unanswered in a row before a host counts as stopped.
deploy_keepalive_count = 3
# How long a deploy waits for another deploy's lock on a host (0: fail now).
deploy_lock_wait_s = 300

# --- host: What the operator declares about the machine itself.
# The host has NVIDIA GPUs; false for GPU-less hosts (the lab): GPU checks say 'not applicable'.
host_has_gpus = True
# Expected number of NVIDIA GPUs; checked when set.
host_gpu_count = None
# Address clients and Prometheus reach the host at; unset = ssh_hostname.
host_address = None

# --- preflight: Layer 0: read-only checks that gate every other layer.
# Free space needed on disk_path (driver, images and model cache).
preflight_min_free_disk_gib = 30.0
# Path whose filesystem is checked.
preflight_disk_path = "/"

# --- driver: Layer 1: the NVIDIA driver.
# cuda-repo (NVIDIA's), distro, or preinstalled (cloud image: installs none).
driver_source = "cuda-repo"
# Driver branch to install and hold.
driver_branch = "580"
# Exact driver version inside the branch; unset = newest of the branch.
driver_version = None
# Kernel module flavour; auto = open on Turing and newer, proprietary before.
driver_kernel_modules = "auto"
# Base URL of NVIDIA's CUDA repository or your mirror; unset = NVIDIA's.
driver_cuda_repo_url = None
# Install headers for the running kernel (DKMS builds the modules with them).
driver_kernel_headers = True
# Fingerprint the repository key must have; unset = NVIDIA's published one.
driver_cuda_repo_fingerprint = None
# Hold the driver packages so unattended upgrades cannot move them.
driver_hold_packages = True
# Enable and run nvidia-persistenced.
driver_persistence = True
# nvidia-fabricmanager; auto = installed when NVSwitches are on the PCI bus.
driver_fabric_manager = "auto"
# Install NVIDIA DCGM (datacenter-gpu-manager).
driver_dcgm = False
# Blacklist and unload nouveau.
driver_blacklist_nouveau = True
# Reboot the host when the loaded module differs from installed.
driver_allow_reboot = True
# Also allow rebooting the machine pyinfra runs on (@local).
driver_reboot_local = False
# How long to wait for a rebooted host.
driver_reboot_timeout_s = 900

# --- gpu: GPU health limits the verify checks apply (operations/driver/health.py).
# Xid codes that fail the kernel log check; others are reported only.
gpu_fatal_xids = [48, 63, 64, 74, 79, 92, 94, 95, 119, 120]
# A GPU this close to its slowdown temperature (degrees C) fails.
gpu_temperature_margin_c = 5
# Rows remapped for correctable errors a GPU may have; unset = not checked.
gpu_max_correctable_remapped_rows = None
# CUDA version the driver must support; auto = the vLLM image tag's (README).
gpu_min_cuda_driver = "auto"

# --- docker: Layer 2: Docker Engine.
# Docker's own signed repository (docker-ce) or the distribution's docker.io.
docker_source = "docker-repo"
# Docker Engine version to pin; unset = newest.
docker_version = None
# Base URL of Docker's repository or your mirror; unset = Docker's.
docker_repo_url = None
# Fingerprint the repository key must have; unset = Docker's published one.
docker_repo_fingerprint = None
# Users added to the docker group (root-equivalent: keep empty in production).
docker_users = []
# Keep containers running while dockerd restarts.
docker_live_restore = True
# json-file log size before rotation.
docker_log_max_size = "100m"
# json-file logs kept.
docker_log_max_file = 3
# Docker's data-root; unset keeps the current one.
docker_data_root = None
# Registry mirrors for Docker Hub pulls.
docker_registry_mirrors = []
# dockerd's cgroup driver; unset keeps Docker's default.
docker_cgroup_driver = None
# Extra daemon.json keys the deploy owns; other keys in the file are kept.
docker_daemon_options = {}
# How long dockerd may take to come back.
docker_restart_timeout_s = 90

# --- toolkit: Layer 3: NVIDIA Container Toolkit.
# Version of the four toolkit packages, pinned together; unset = newest.
toolkit_version = None
# Base URL of NVIDIA's container toolkit repository or your mirror.
toolkit_repo_url = None
# Fingerprint the repository key must have; unset = NVIDIA's published one.
toolkit_repo_fingerprint = None
# Docker's default runtime; unset keeps Docker's (runc).
toolkit_default_runtime = None
# Generate CDI specs for the GPUs.
toolkit_cdi = True
# CVEs of NVIDIA toolkit bulletins accepted below their fix; unset = none.
toolkit_accept_cves = []

# --- vllm: Layer 4: the vLLM OpenAI-compatible server.
# Model to serve (Hugging Face id or path in the cache).
vllm_model = "Qwen/Qwen2.5-1.5B-Instruct"
# Name clients use; unset = the model id.
vllm_served_model_name = None
# Host port of the API.
vllm_port = 8000
# GPUs given to the container: all, or device indices.
vllm_gpus = "all"
# --tensor-parallel-size.
vllm_tensor_parallel_size = 1
# --gpu-memory-utilization, a fraction in (0, 1].
vllm_gpu_memory_utilization = 0.9
# --max-model-len.
vllm_max_model_len = None
# --dtype.
vllm_dtype = "auto"
# --quantization; unset = none.
vllm_quantization = None
# Extra engine arguments appended to the command line.
vllm_extra_args = []
# Allow the floating 'latest' tag.
vllm_allow_latest = False
# vLLM image, pinned by tag or digest.
vllm_image = "vllm/vllm-openai:v0.31.0"
# Controller path of a `docker save` archive of the image: loaded, not pulled.
vllm_image_archive = None
# Servers of one host: [{'name': 'a', 'gpus': [0, 1], 'port': 8001}, ...]; empty = one, named main.
vllm_instances = []
# Host address the API port is published on.
vllm_bind_address = "0.0.0.0"
# --ipc=host (needed for tensor parallel).
vllm_ipc_host = True
# Shared memory size when ipc_host is off.
vllm_shm_size = "10g"
# Host path of the Hugging Face cache; survives container recreation.
vllm_hf_cache_dir = "/var/lib/gpufleet/huggingface"
# Free space the cache's filesystem needs before a server is (re)created.
vllm_min_free_cache_gib = 20.0
# Bound of the model's pre-fetch, run before a server is (re)created.
vllm_prefetch_timeout_s = 3600
# Servers run with HF_HUB_OFFLINE=1: only the pre-fetched cache, no Hub.
vllm_hf_offline = True
# Host path of vLLM's compile cache (VLLM_CACHE_ROOT), root-only 0700.
vllm_compile_cache_dir = "/var/lib/gpufleet/vllm-cache"
# Controller environment variable holding the HF token.
vllm_hf_token_env = "HF_TOKEN"
# Controller file holding the HF token (instead of the env var).
vllm_hf_token_file = None
# Controller environment variable holding the API key.
vllm_api_key_env = "VLLM_API_KEY"
# Controller file holding the API key (instead of the env var).
vllm_api_key_file = None
# Refuse to deploy when no API key is given on the controller.
vllm_require_api_key = False
# Docker restart policy of the container.
vllm_restart_policy = "unless-stopped"
# How long a (re)started server may take to get ready (model download too).
vllm_ready_timeout_s = 1800
# Most hosts a deploy takes out of service at once to replace a vLLM server.
vllm_max_unavailable = "25%"

# --- gateway: Layer 4's front: nginx in front of the vLLM servers, which then listen on loopback.
# on; off; auto = on unless vllm_bind_address is a loopback address.
gateway_mode = "auto"
# A server's loopback port behind the gateway: its vllm port plus this.
gateway_backend_port_offset = 10000
# Controller path of the certificate (chain) nginx presents.
gateway_tls_cert_file = None
# Controller path of its private key (mode 0600).
gateway_tls_key_file = None
# Serve plain HTTP without TLS (only when set).
gateway_plain_http = False
# Addresses allowed /metrics besides loopback and the Prometheus hosts.
gateway_metrics_allow = []
# Largest request body accepted.
gateway_max_body_size = "16m"
# How long a request may run (long generations, streams).
gateway_read_timeout_s = 3600

# --- monitoring: Layer 5: exporters on every host; Prometheus, alerts and dashboards on some.
# Run the distribution's prometheus-node-exporter.
monitoring_node_exporter = True
# Address node-exporter listens on.
monitoring_node_exporter_address = "0.0.0.0"
# Port node-exporter listens on.
monitoring_node_exporter_port = 9100
# Run NVIDIA's dcgm-exporter container on GPU hosts.
monitoring_dcgm_exporter = True
# dcgm-exporter image, pinned by tag or digest.
monitoring_dcgm_image = "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04"
# Controller path of a `docker save` archive of the dcgm-exporter image.
monitoring_dcgm_image_archive = None
# Host address dcgm-exporter's port is published on.
monitoring_dcgm_address = "0.0.0.0"
# Host port of dcgm-exporter's /metrics.
monitoring_dcgm_port = 9400
# Run the fleet's Prometheus here (set for the group monitoring).
monitoring_prometheus = False
# On Prometheus hosts, also write Grafana's datasource and dashboards.
monitoring_grafana_provisioning = False
# Address Prometheus listens on.
monitoring_prometheus_address = "0.0.0.0"
# Port Prometheus listens on.
monitoring_prometheus_port = 9090
# How long Prometheus keeps samples (--storage.tsdb.retention.time).
monitoring_prometheus_retention = "15d"
# How often Prometheus scrapes every target.
monitoring_scrape_interval = "15s"
# One `for:` for every alert rule (a lab's short one); unset = each rule's own.
monitoring_alert_for = None
