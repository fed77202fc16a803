"""The lab fleet (inventory/lab.py): local systemd containers with no GPU and a small disk.

GPU checks report 'not applicable' on these hosts; every other layer runs for real.
"""

host_has_gpus = False
preflight_min_free_disk_gib = 2.0

# The lab's hosts run Debian 12, whose own archive ships the 535 branch; their kernel is the
# controller's, not Debian's, so there are no headers to install for it (DKMS skips it).
driver_source = "distro"
driver_branch = "535"
driver_kernel_headers = False

# Debian's own docker.io: Docker's repository cannot be reached from the lab. Its version is
# pinned, so the pin file and the version check run for real.
docker_source = "distro"
docker_version = "20.10.24"
# The lab's stand-in toolkit repository (tests/standins/toolkit) serves 1.17.8-1 and
# 1.17.9-1: the pin on the older one is what makes the version check mean something.
toolkit_version = "1.17.8-1"
# The STAND-IN vLLM image (tests/standins/vllm) answers at once: a readiness wait of two
# minutes is ample, where a real model download needs the default half hour.
vllm_ready_timeout_s = 120
# The stand-in downloads nothing; the lab's hosts share the controller's disk.
vllm_min_free_cache_gib = 0.5
# Monitoring (lab-1 runs Prometheus: inventory/lab.py's `monitoring` group). Short intervals
# and one short `for:` so the lab tests see an alert go pending, then firing, within a minute.
monitoring_scrape_interval = "5s"
monitoring_alert_for = "10s"
# The lab runs no Grafana, but writes its provisioning files, so that they are deployed for real.
monitoring_grafana_provisioning = True
# The gateway (nginx in front of vLLM) is on by default wherever vLLM listens beyond loopback,
# with TLS files or plain HTTP to choose. The lab's tests reach its servers directly; the
# gateway's own tests (tests/e2e/test_lab_gateway.py) turn it on for their runs.
gateway_mode = "off"
