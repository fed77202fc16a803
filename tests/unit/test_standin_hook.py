"""The STAND-IN nvidia-container-runtime-hook (tests/standins/toolkit/scripts): as Docker's
--gpus prestart hook on a stand-in GPU host it puts nvidia-smi and the visible GPUs'
description into the container's root file system, renumbered from 0; anywhere else, or
for a container given no GPU, it changes nothing. The verify check it feeds
(test_containers_see_their_gpus) counts what that nvidia-smi lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.standins import gpu
from tests.standins.toolkit.packages import script

HOOK = script("nvidia-container-runtime-hook", "1.17.8-1")


def prestart(tmp_path, env_list: list[str], description: str | None = "hgx8.json"):
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    config = {"root": {"path": "rootfs"}, "process": {"env": env_list}}
    (bundle / "config.json").write_text(json.dumps(config))
    env = {"PATH": os.environ["PATH"]}
    if description:
        env[gpu.ENV] = str(gpu.HERE / description)
        smi = tmp_path / "bin"
        smi.mkdir()
        (smi / "nvidia-smi").symlink_to(gpu.NVIDIA_SMI)
        env["PATH"] = f"{smi}:{env['PATH']}"
    state = json.dumps({"bundle": str(bundle)})  # the OCI state, on stdin
    done = subprocess.run(["sh", "-c", HOOK, "hook", "prestart"], capture_output=True,
                          text=True, input=state, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return bundle / "rootfs"


def listed(rootfs) -> list[str]:
    """What nvidia-smi -L says inside the container (run here, against its root)."""
    inside = rootfs / "usr/share/gpufleet-standin"
    env = {"PATH": os.environ["PATH"], gpu.ENV: str(inside / "gpus.json")}
    done = subprocess.run([sys.executable, str(inside / "nvidia-smi"), "-L"],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_all_gpus_go_into_the_container(tmp_path):
    rootfs = prestart(tmp_path, ["NVIDIA_VISIBLE_DEVICES=all"])
    assert len(listed(rootfs)) == 8
    wrapper = (rootfs / "usr/bin/nvidia-smi").read_text()
    assert "STAND-IN" in wrapper and "GPUFLEET_STANDIN_GPUS=/usr/share/gpufleet-standin" in wrapper


def test_a_device_list_gives_only_those_gpus_renumbered(tmp_path):
    rootfs = prestart(tmp_path, ["NVIDIA_VISIBLE_DEVICES=2,5"])
    names = listed(rootfs)
    assert len(names) == 2 and names[0].startswith("GPU 0:") and names[1].startswith("GPU 1:")
    shipped = json.loads((rootfs / "usr/share/gpufleet-standin/gpus.json").read_text())
    hgx = gpu.load("hgx8")
    assert [g["uuid"] for g in shipped["gpus"]] == [hgx["gpus"][2]["uuid"], hgx["gpus"][5]["uuid"]]


@pytest.mark.parametrize("env_list", [[], ["NVIDIA_VISIBLE_DEVICES=void"], ["PATH=/bin"]])
def test_a_container_given_no_gpu_gets_nothing(tmp_path, env_list):
    rootfs = prestart(tmp_path, env_list)
    assert list(rootfs.iterdir()) == []


def test_a_host_without_stand_in_gpus_gets_nothing(tmp_path):
    rootfs = prestart(tmp_path, ["NVIDIA_VISIBLE_DEVICES=all"], description=None)
    assert list(rootfs.iterdir()) == []
