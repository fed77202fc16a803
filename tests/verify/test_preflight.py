"""Verify, layer 0 (preflight): the host is reachable, supported, and matches its config.

All checks read one HostProfile (the deploy's own fact script, one SSH round trip per host).
"""

from __future__ import annotations

import pytest

from operations import preflight
from tests.verify.facts import PROFILE
from tests.verify.fleet import FleetHost

pytestmark = pytest.mark.preflight
FACTS = (PROFILE,)


def test_reachable(fleet_host: FleetHost):
    result = fleet_host.host.run("true")
    assert result.rc == 0, f"{result!r}"


def test_supported_os(fleet_host: FleetHost):
    profile = fleet_host.read(PROFILE)
    assert preflight.os_supported(profile["os_id"], profile["os_version"]), (
        f"{profile['os_id']} {profile['os_version']} is not one of: "
        f"{preflight.supported_os_words()}"
    )


def test_supported_arch(fleet_host: FleetHost):
    arch = fleet_host.read(PROFILE)["arch"]
    assert arch in preflight.SUPPORTED_ARCH, f"{arch} is not one of {preflight.SUPPORTED_ARCH}"


def test_gpu_presence_matches_config(fleet_host: FleetHost):
    gpus = len(fleet_host.read(PROFILE)["nvidia_gpus"])
    problems = preflight.gpu_problems(fleet_host.config, gpus)
    assert not problems, problems[0]


def test_free_disk(fleet_host: FleetHost):
    free = fleet_host.read(PROFILE)["disk_free_gib"]
    needed = fleet_host.config.preflight.min_free_disk_gib
    assert free >= needed, f"{free} GiB free, preflight_min_free_disk_gib is {needed}"
