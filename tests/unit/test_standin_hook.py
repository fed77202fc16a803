"""The STAND-IN nvidia-container-runtime-hook (tests/standins/toolkit/scripts): as Docker's
--gpus prestart hook on a stand-in GPU host it bind-mounts the host's stand-in directory
read-only into the container (in its mount namespace, through nsenter), says which GPUs the
container sees (view.json, renumbered from 0) and installs an nvidia-smi wrapper that shows
only those; anywhere else, or for a container given no GPU, it changes nothing. The verify
check it feeds (test_containers_see_their_gpus) counts what that nvidia-smi lists, and the
STAND-IN dcgm-exporter reads the same mount at every scrape.

Here a fake `nsenter` records what the hook asks for and makes the bind a symlink (the
effect a bind mount has on reads): the real mount needs root and a container, and the lab
runs it (tests/verify/test_vllm.py, the dcgm stand-in on the GPU lab hosts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.standins import gpu
from tests.standins.toolkit.packages import script

HOOK = script("nvidia-container-runtime-hook", "1.17.8-1")
PID = 4242
FAKE_NSENTER = """#!/bin/sh
# fake nsenter: record the call; a bind becomes a symlink, a read-only remount is recorded
echo "$*" >> "$NSENTER_LOG"
[ -n "$NSENTER_FAIL" ] && { echo "mount: permission denied" >&2; exit 32; }
while [ "$1" != "--" ]; do shift; done; shift
if [ "$1 $2" = "mount --bind" ]; then rmdir "$4" && ln -s "$3" "$4"; fi
exit 0
"""


def prestart(tmp_path, env_list, description="hgx8.json", fail=False, expect_rc=0):
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    config = {"root": {"path": "rootfs"}, "process": {"env": env_list}}
    (bundle / "config.json").write_text(json.dumps(config))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nsenter").write_text(FAKE_NSENTER)
    (bin_dir / "nsenter").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "NSENTER_LOG": str(tmp_path / "calls")}
    if fail:
        env["NSENTER_FAIL"] = "1"
    if description:
        host_dir = tmp_path / "host-etc"  # the host's /etc/gpufleet-standin
        host_dir.mkdir()
        shutil.copy(gpu.HERE / description, host_dir / "gpus.json")
        env[gpu.ENV] = str(host_dir / "gpus.json")
        (bin_dir / "nvidia-smi").symlink_to(gpu.NVIDIA_SMI)
    state = json.dumps({"bundle": str(bundle), "pid": PID})  # the OCI state, on stdin
    done = subprocess.run(["sh", "-c", HOOK, "hook", "prestart"], capture_output=True,
                          text=True, input=state, env=env)  # fmt: skip
    assert done.returncode == expect_rc, done.stderr
    return bundle / "rootfs", done


def calls(tmp_path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def listed(rootfs) -> list[str]:
    """What the nvidia-smi wrapper lists inside the container (run here, against its root:
    the wrapper's fixed paths are rewritten to the root's)."""
    inside = rootfs / "usr/share/gpufleet-standin"
    wrapper = (rootfs / "usr/bin/nvidia-smi").read_text()
    local = rootfs.parent / "nvidia-smi-wrapper"
    local.write_text(wrapper.replace('"/usr/share/gpufleet-standin"', repr(str(inside))))
    done = subprocess.run([sys.executable, "-I", str(local), "-L"], capture_output=True,
                          text=True, env={"PATH": os.environ["PATH"]})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_all_gpus_go_into_the_container_through_a_read_only_mount(tmp_path):
    rootfs, _ = prestart(tmp_path, ["NVIDIA_VISIBLE_DEVICES=all"])
    target = rootfs / "usr/share/gpufleet-standin/host"
    source = tmp_path / "host-etc"
    assert calls(tmp_path) == [
        f"--target {PID} --mount -- mount --bind {source} {target}",
        f"--target {PID} --mount -- mount -o remount,bind,ro {target}",
    ]
    assert len(listed(rootfs)) == 8
    wrapper = (rootfs / "usr/bin/nvidia-smi").read_text()
    assert "STAND-IN" in wrapper and "view.json" in wrapper


def test_a_fault_injected_after_the_start_shows_inside(tmp_path):
    rootfs, _ = prestart(tmp_path, ["NVIDIA_VISIBLE_DEVICES=all"])
    host_file = tmp_path / "host-etc/gpus.json"
    sick = gpu.with_fault(gpu.load("hgx8"), "gpu_missing")
    host_file.write_text(gpu.dumps(sick))  # as `lab gpu fault` rewrites it
    assert len(listed(rootfs)) == 7


def test_a_device_list_gives_only_those_gpus_renumbered(tmp_path):
    rootfs, _ = prestart(tmp_path, ["NVIDIA_VISIBLE_DEVICES=2,5"])
    names = listed(rootfs)
    hgx = gpu.load("hgx8")
    assert names == [
        f"GPU 0: {hgx['gpus'][2]['name']} (UUID: {hgx['gpus'][2]['uuid']})",
        f"GPU 1: {hgx['gpus'][5]['name']} (UUID: {hgx['gpus'][5]['uuid']})",
    ]
    view = json.loads((rootfs / "usr/share/gpufleet-standin/view.json").read_text())
    assert view == {"description": "gpus.json", "visible": [2, 5]}


def test_a_failed_mount_fails_the_container_start(tmp_path):
    _, done = prestart(tmp_path, ["NVIDIA_VISIBLE_DEVICES=all"], fail=True, expect_rc=1)
    assert "STAND-IN" in done.stderr and "permission denied" in done.stderr


@pytest.mark.parametrize("env_list", [[], ["NVIDIA_VISIBLE_DEVICES=void"], ["PATH=/bin"]])
def test_a_container_given_no_gpu_gets_nothing(tmp_path, env_list):
    rootfs, _ = prestart(tmp_path, env_list)
    assert list(rootfs.iterdir()) == [] and calls(tmp_path) == []


def test_a_host_without_stand_in_gpus_gets_nothing(tmp_path):
    rootfs, _ = prestart(tmp_path, ["NVIDIA_VISIBLE_DEVICES=all"], description=None)
    assert list(rootfs.iterdir()) == [] and calls(tmp_path) == []
