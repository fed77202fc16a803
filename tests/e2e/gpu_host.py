"""The STAND-IN GPU lab hosts (lab/gpu.py) for end-to-end tests: fixtures and helpers.

    from tests.e2e import gpu_host
    gpu_hosts, gpu_h100 = gpu_host.gpu_hosts, gpu_host.gpu_h100  # the fixtures, in the module

    def test_x(gpu_h100):
        with fault(gpu_h100, "pcie_x8"):
            done = on_gpu_host(gpu_h100, "nvidia-smi -L")

``gpu_hosts(variant)`` brings a host up once per session (after the ``lab`` fixture: same
image, keys, stand-in repositories) and leaves every host it made healthy at the end;
``fault`` puts one fault of tests/standins/gpu's FAULTS on it and heals it afterwards. Run
under ``flock /tmp/gpufleet-lab.lock`` like every lab test. The inventory of these hosts is
inventory/lab_gpu.py.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator

import pytest

from lab.gpu import GpuHost, ensure_gpu_host, heal, inject
from tests.e2e.helpers import ROOT


@pytest.fixture(scope="session")
def gpu_hosts(lab) -> Iterator[Callable[[str], GpuHost]]:
    """A function: variant (h100, hgx8) -> its running GPU lab host, made once."""
    made: dict[str, GpuHost] = {}

    def get(variant: str) -> GpuHost:
        if variant not in made:
            made[variant] = ensure_gpu_host(variant, ROOT, log=lambda _line: None)
        return made[variant]

    yield get
    for variant in made:
        heal(variant, ROOT)


@pytest.fixture
def gpu_h100(gpu_hosts) -> GpuHost:
    return gpu_hosts("h100")


@pytest.fixture
def gpu_hgx8(gpu_hosts) -> GpuHost:
    return gpu_hosts("hgx8")


def on_gpu_host(host: GpuHost, command: str, input: str | None = None,
                timeout: int = 120) -> subprocess.CompletedProcess:  # fmt: skip
    """``command`` on the GPU host over SSH (its pinned host key checked); .output is both
    streams."""
    done = subprocess.run(host.ssh(command), input=input, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    done.output = done.stdout + done.stderr
    return done


@contextlib.contextmanager
def fault(host: GpuHost, name: str, gpu: int = -1) -> Iterator[dict]:
    """The host shows fault ``name`` inside the block (yields its description), healthy after."""
    try:
        yield inject(host.variant, name, ROOT, gpu)
    finally:
        heal(host.variant, ROOT)
