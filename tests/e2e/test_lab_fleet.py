"""End to end on the lab fleet: real hosts, real SSH, the real deploy.py and verify suite.

Brings up (or reuses) a 3-host lab with ``python -m lab up``, deploys it, verifies it, and
checks that a second run plans no change. Needs root (or a running Docker engine) and
debootstrap; without them the tests skip, unless GPUFLEET_REQUIRE_LAB is set (CI), where a
missing prerequisite is a failure.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import daemon_json, deploy, on_host, verify

pytestmark = pytest.mark.lab


def test_deploy_runs_every_layer_on_every_host_over_ssh(lab):
    done = deploy("-y")
    assert done.returncode == 0, done.output
    for name in lab:
        assert f"[{name}] preflight: debian 12 x86_64" in done.output
    assert "preflight failed" not in done.output and "Driver failed" not in done.output
    for name in lab:  # no GPU daemon left failing on GPU-less hosts (it kept systemd degraded)
        failed = on_host(name, "systemctl --failed --no-legend --plain").stdout
        assert "nvidia" not in failed, (name, failed)


def test_verify_passes_and_writes_the_fleet_report(lab, tmp_path):
    report = tmp_path / "report.json"
    done = verify(f"--fleet-report={report}", f"--junitxml={tmp_path / 'junit.xml'}")
    assert done.returncode == 0, done.output
    hosts = json.loads(report.read_text())["hosts"]
    assert sorted(hosts) == lab
    for cells in hosts.values():
        assert cells["preflight"]["status"] == "PASS" and cells["preflight"]["passed"] == 5
        # the Debian packages, their holds and the nouveau blacklist; GPU checks (3 of the
        # driver, 16 of GPU health) do not apply
        assert cells["driver"]["status"] == "PASS" and cells["driver"]["passed"] == 3
        assert cells["driver"]["not_applicable"] == 19
        # running, enabled, the pinned docker.io, daemon.json and the daemon's settings, group
        assert cells["docker"]["status"] == "PASS" and cells["docker"]["passed"] == 5
        # packages pinned, nvidia-ctk, runtime listed and in daemon.json, udev rule; the CDI
        # spec and the GPU container do not apply without GPUs
        assert cells["toolkit"]["status"] == "PASS" and cells["toolkit"]["passed"] == 5
        assert cells["toolkit"]["not_applicable"] == 2
        # image and restart policy, published address, secrets file, no temporary file beside
        # it, readiness marks and no server kept aside, secrets not in inspect, /health,
        # /v1/models, one-token completion, a streamed one, /v1 refused without the key; the
        # GPUs and the gateway's four (nginx, allowlist, unbuffered, certificate: off) N/A
        assert cells["vllm"]["status"] == "PASS" and cells["vllm"]["passed"] == 11
        assert cells["vllm"]["not_applicable"] == 5
    assert "fleet report" in done.output


def test_second_run_plans_no_change(lab):
    assert deploy("-y").returncode == 0
    done = deploy("--dry", "--json")
    assert done.returncode == 0, done.output
    plan = json.loads(done.stdout)["plan"]
    changing = [(op["name"], op["hosts_with_change"]) for op in plan if op["hosts_with_change"]]
    assert changing == []


def test_bad_value_stops_the_run_before_any_host_is_read(lab):
    done = deploy("-y", "--data", "vllm_port=0")
    assert done.returncode != 0
    assert "invalid configuration, nothing was changed" in done.output
    for name in lab:
        assert f"{name}: vllm_port = 0: Input should be greater than or equal to 1" in done.output
    assert "preflight:" not in done.output  # no fact was gathered on any host
    assert "Traceback" not in done.output


def test_preflight_failure_fails_only_the_targeted_host_with_the_reason(lab):
    done = deploy("-y", "--limit", "lab-1", "--data", "host_has_gpus=true")
    assert done.returncode != 0
    assert "[lab-1] preflight failed: no NVIDIA GPU (PCI vendor 10de) on the PCI bus" in done.output
    assert "lab-2" not in done.output


def test_users_daemon_json_keys_survive_the_deploy(lab):
    user = {"debug": True, "labels": ["team=ml"], "log-opts": {"labels": "team"},
            "runtimes": {"crun": {"path": "/usr/bin/crun"}}}  # fmt: skip
    planted = on_host("lab-2", f"echo '{json.dumps(user)}' > /etc/docker/daemon.json")
    assert planted.returncode == 0, planted.output
    done = deploy("-y", "--limit", "lab-2")
    assert done.returncode == 0, done.output
    merged = daemon_json("lab-2")
    assert merged["debug"] is True and merged["labels"] == ["team=ml"]
    assert merged["log-opts"] == {"labels": "team", "max-file": "3", "max-size": "100m"}
    assert set(merged["runtimes"]) == {"crun", "nvidia"} and merged["live-restore"] is True
    info = on_host("lab-2", "docker info --format '{{.Debug}} {{.LiveRestoreEnabled}}'")
    assert info.stdout.split() == ["true", "true"]  # the running daemon took the merged file


def test_bad_daemon_option_is_rolled_back_and_dockerd_keeps_running(lab):
    before = daemon_json("lab-3")
    done = deploy("-y", "--limit", "lab-3", "--data", 'docker_daemon_options={"bogus-option": 1}')
    assert done.returncode != 0
    assert "[lab-3] daemon.json rolled back: dockerd did not start with the merged file" in (
        done.output
    )
    assert "bogus-option" in done.output and "dockerd is running on the previous file" in (
        done.output
    )
    assert daemon_json("lab-3") == before
    assert on_host("lab-3", "systemctl is-active docker").stdout.strip() == "active"
    again = deploy("--dry", "--json", "--limit", "lab-3")
    changing = [op["name"] for op in json.loads(again.stdout)["plan"] if op["hosts_with_change"]]
    assert changing == []  # nothing half-applied is left for the next run


def test_nvidia_runtime_hands_containers_over_to_runc(lab):
    """On a GPU-less host the stand-in runtime execs runc: a container starts through it."""
    image = (
        "tar -ch /usr/bin/true /lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libc.so.6 "
        "2>/dev/null | docker import - gpufleet-e2e/true:1 >/dev/null"
    )
    done = on_host(
        "lab-1",
        f"{image} && docker run --rm --runtime=nvidia gpufleet-e2e/true:1 /usr/bin/true && "
        "tail -n 1 /var/log/nvidia-container-runtime-standin.log",
    )
    assert done.returncode == 0, done.output
    assert done.stdout.strip(), "the nvidia runtime was not called"


def test_repository_key_with_another_fingerprint_is_removed_not_trusted(lab):
    """Security: a configured fingerprint the served key does not have fails the host and
    removes the key; with the right one the next run fetches, checks and converges."""
    wrong = "0123456789ABCDEF" * 2 + "01234567"
    done = deploy("-y", "--limit", "lab-1", "--data", f"toolkit_repo_fingerprint={wrong}")
    assert done.returncode != 0
    assert f"expected {wrong}: key removed" in done.output
    keyring = on_host("lab-1", "test -e /etc/apt/keyrings/nvidia-container-toolkit.gpg")
    assert keyring.returncode == 1
    assert deploy("-y", "--limit", "lab-1").returncode == 0
    again = deploy("--dry", "--json", "--limit", "lab-1")
    changing = [op["name"] for op in json.loads(again.stdout)["plan"] if op["hosts_with_change"]]
    assert changing == []
