"""Plan tests of the compatibility gates (operations.gates): a host that fails one gets one
failing operation naming host, setting, value and what is allowed, and nothing else is planned
on it (no package manager step, no layer, no lock); a host that passes gets no gate step at all,
so the gates never stand between a converged host and a plan of no change."""

from __future__ import annotations

import json

from operations.toolkit.facts import PACKAGES
from tests.plan.harness import FakeFleet
from tests.plan.test_driver_plan import H100, profile

NVSWITCH = "pci=0000:05:00.0 0x068000 0x22a3"
FAILED = "Compatibility gates | Compatibility gates failed"
GPU = {"index": 0, "pci_bus_id": "00000000:18:00.0", "persistence": 1}


def driver(version: str | None = "580.159.04", cuda: int = 13000, *extra: str) -> list[str]:
    """DriverState of a host running ``version`` (its NVML saying CUDA ``cuda``), from a
    package; None: no driver at all."""
    if version is None:
        return ["init=systemd"]
    probe = {"probe": "nvml", "driver": version, "cuda_driver": cuda, "gpus": [GPU]}
    return [
        f"nvml_version={version}", f"module_loaded={version}", f"proc_version={version}",
        f"package=nvidia-open-{version.split('.')[0]} {version}-1", "init=systemd",
        "nvml=" + json.dumps(probe), *extra,
    ]  # fmt: skip


def stack(version: str | None) -> list[str]:
    """ContainerStack output with the toolkit's four packages at ``version`` (None: none)."""
    lines = ["active=active", "server_version=27.5.1", "info={}"]
    if version is None:
        return [*lines, "ctk_version="]
    cli = f"ctk_version=NVIDIA Container Toolkit CLI version {version.split('-')[0]}"
    return [*lines, *(f"package={name} {version}" for name in PACKAGES), cli]


def host(driver_lines=(), stack_lines=(), gpus=(H100,), **data) -> dict:
    data.setdefault("deploy_layers", "toolkit")
    data.setdefault("toolkit_version", "1.17.8-1")
    return {
        "fake_responses": {
            "os-release": profile("ubuntu", "24.04", "noble", gpus),
            "libnvidia-ml.so.1": list(driver_lines),
            "ctk_version=": list(stack_lines),
        },
        **data,
    }


def plan(tmp_path, monkeypatch, **hosts) -> dict[str, list[tuple[str, list[str]]]]:
    monkeypatch.setenv("VLLM_API_KEY", "k" * 32)
    return FakeFleet(tmp_path, hosts).plan(base=True)


def refusal(planned: list[tuple[str, list[str]]]) -> str:
    """The one failing operation's command: the host's whole plan must be that."""
    assert [name for name, _ in planned] == [FAILED], planned
    ((command,),) = [commands for _, commands in planned]
    return command


def test_a_toolkit_below_the_floor_fails_the_host_naming_each_cve_and_plans_nothing(
    tmp_path, monkeypatch
):
    planned = plan(tmp_path, monkeypatch, h=host(toolkit_version="1.16.1-1"))["h"]
    message = refusal(planned)
    assert "@fake/h: compatibility gates: toolkit_version 1.16.1-1 is below" in message
    assert "the NVIDIA security floor 1.17.8" in message
    assert "CVE-2024-0132 (fixed in 1.16.2" in message
    assert "CVE-2025-23266 (fixed in 1.17.8" in message
    assert "toolkit_accept_cves naming CVE-2024-0132,CVE-2025-23266" in message
    assert message.endswith("exit 1")


def test_accepting_every_cve_named_lets_the_toolkit_through(tmp_path, monkeypatch):
    data = {"toolkit_version": "1.16.1-1", "toolkit_accept_cves": "CVE-2024-0132,CVE-2025-23266"}
    planned = plan(tmp_path, monkeypatch, h=host(**data))["h"]
    names = [name for name, _ in planned]
    assert not [n for n in names if n.startswith("Compatibility gates")], names
    assert any("Install NVIDIA Container Toolkit" in n for n in names), names


def test_accepting_one_cve_still_refuses_the_other(tmp_path, monkeypatch):
    data = {"toolkit_version": "1.16.1-1", "toolkit_accept_cves": "CVE-2024-0132"}
    message = refusal(plan(tmp_path, monkeypatch, h=host(**data))["h"])
    assert "CVE-2025-23266 (fixed in 1.17.8" in message
    assert "CVE-2024-0132" not in message


def test_the_lab_pin_passes_the_floor(tmp_path, monkeypatch):
    planned = plan(tmp_path, monkeypatch, h=host(toolkit_version="1.17.8-1"))["h"]
    assert FAILED not in [name for name, _ in planned]


def test_an_installed_toolkit_below_the_floor_fails_a_gpu_host_that_runs_vllm(
    tmp_path, monkeypatch
):
    data = {"deploy_layers": "vllm", "toolkit_version": None}
    planned = plan(tmp_path, monkeypatch, h=host(driver(), stack("1.17.7-1"), **data))["h"]
    message = refusal(planned)
    assert "the installed toolkit 1.17.7-1 is below the NVIDIA security floor 1.17.8" in message
    assert "CVE-2025-23266" in message and "CVE-2024-0132" not in message


def test_a_driver_too_old_for_the_image_fails_the_host_before_any_change(tmp_path, monkeypatch):
    data = {"deploy_layers": "toolkit,vllm", "vllm_image": "vllm/vllm-openai:v0.11.0"}
    planned = plan(tmp_path, monkeypatch, h=host(driver("535.261.03", 12020), **data))["h"]
    message = refusal(planned)
    assert "driver 535.261.03: the driver supports CUDA 12.2" in message
    assert "vllm/vllm-openai:v0.11.0 needs 12.8 (gpu_min_cuda_driver)" in message
    assert "allowed: a driver supporting CUDA 12.8 or later (driver_branch)" in message


def test_a_driver_new_enough_passes_and_the_layers_are_planned(tmp_path, monkeypatch):
    data = {"deploy_layers": "toolkit,vllm", "vllm_image": "vllm/vllm-openai:v0.11.0"}
    planned = plan(tmp_path, monkeypatch, h=host(driver(), stack("1.17.8-1"), **data))["h"]
    names = [name for name, _ in planned]
    assert not [n for n in names if n.startswith("Compatibility gates")], names
    assert any(n.startswith("vLLM") for n in names), names


def test_a_fresh_host_is_judged_on_the_branch_being_installed(tmp_path, monkeypatch):
    data = {"deploy_layers": "driver,vllm", "driver_source": "cuda-repo", "driver_branch": "535",
            "vllm_image": "vllm/vllm-openai:v0.11.0"}  # fmt: skip
    message = refusal(plan(tmp_path, monkeypatch, h=host(driver(None), **data))["h"])
    assert "driver_branch 535 supports CUDA 12.2, vllm/vllm-openai:v0.11.0 needs 12.8" in message
    assert "(570, 575, 580)" in message
    data["driver_branch"] = "580"
    (tmp_path / "580").mkdir()
    planned = plan(tmp_path / "580", monkeypatch, h=host(driver(None), **data))["h"]
    assert FAILED not in [name for name, _ in planned]


def test_a_fabric_manager_of_another_version_fails_the_nvswitch_host(tmp_path, monkeypatch):
    lines = driver("580.159.04", 13000, "package=nvidia-fabricmanager-580 580.95.05-1")
    message = refusal(plan(tmp_path, monkeypatch, h=host(lines, gpus=(H100, NVSWITCH)))["h"])
    assert "the fabric manager nvidia-fabricmanager-580 is 580.95.05-1, the driver is " in message
    assert "580.159.04: they must be the same version" in message
    assert "allowed: nvidia-fabricmanager-580 at 580.159.04" in message


def test_a_fabric_manager_of_the_driver_version_passes(tmp_path, monkeypatch):
    lines = driver("580.159.04", 13000, "package=nvidia-fabricmanager-580 580.159.04-1")
    planned = plan(tmp_path, monkeypatch, h=host(lines, gpus=(H100, NVSWITCH)))["h"]
    assert FAILED not in [name for name, _ in planned]


def test_one_refused_host_fails_alone_while_the_other_deploys(tmp_path, monkeypatch):
    plans = plan(tmp_path, monkeypatch, bad=host(toolkit_version="1.16.1-1"), good=host())
    assert "CVE-2025-23266" in refusal(plans["bad"])
    names = [name for name, _ in plans["good"]]
    assert FAILED not in names and any("NVIDIA Container Toolkit" in n for n in names), names


def test_a_gpu_less_host_reads_no_driver_or_stack_for_the_gates(tmp_path, monkeypatch):
    fleet_host = host(gpus=(), host_has_gpus=False, deploy_layers="toolkit,vllm")
    fleet = FakeFleet(tmp_path, {"h": fleet_host})
    monkeypatch.setenv("VLLM_API_KEY", "k" * 32)
    fleet.plan()
    sent = fleet.sent()["h"]
    assert not [c for c in sent if "module_loaded=" in c or "ctk_version=" in c]
