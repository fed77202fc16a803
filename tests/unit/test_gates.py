"""Unit tests of the compatibility gates (operations.gates) on configs and fact dicts: each gate
refuses with its message, passes when the pieces fit, and says why when it cannot judge; the
CVE override names the CVE; a malformed CVE id is bad input, refused before any host."""

from __future__ import annotations

import json

import pytest

from operations import gates
from operations.config.load import load_config
from operations.driver.facts import driver_command, parse_driver_state
from operations.driver.health import VLLM_IMAGE_CUDA
from tests.plan.harness import gateway_off
from tests.unit.test_scripts import _dash, _stubs, needs_dash


def config(**data):
    found, problems = load_config("node-1", gateway_off(data))
    assert not problems, problems
    return found


def driver_state(version: str | None, cuda: int = 13000, *extra: str) -> dict:
    if version is None:
        return parse_driver_state(["init=systemd", *extra])
    probe = {"probe": "nvml", "driver": version, "cuda_driver": cuda, "gpus": [{"index": 0}]}
    return parse_driver_state(
        [
            f"nvml_version={version}",
            f"module_loaded={version}",
            "nvml=" + json.dumps(probe),
            *extra,
        ]  # fmt: skip
    )


def toolkit(version: str | None, installed: str | None = None, **data) -> gates.Judgement:
    found = gates.Judgement()
    gates.toolkit_gate(config(toolkit_version=version, **data), installed, found)
    return found


# --- toolkit floor


def test_the_floors_are_nvidias_bulletins():
    floors = {cve: fixed for cve, fixed, _ in gates.TOOLKIT_FLOORS}
    assert floors["CVE-2024-0132"] == (1, 16, 2)
    assert floors["CVE-2025-23266"] == (1, 17, 8)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("1.17.8-1", (1, 17, 8)),
        ("1.17.8", (1, 17, 8)),
        ("1:1.16.1-1", (1, 16, 1)),  # an epoch is not the version
        ("1.17.7-1.el9", (1, 17, 7)),
        ("NVIDIA Container Toolkit CLI version 1.17.8", (1, 17, 8)),
        ("commit: 1234", None),
    ],
)
def test_toolkit_versions_are_read_from_pins_packages_and_the_cli(text, version):
    assert gates.toolkit_floor(text) == version


def test_a_pin_below_both_floors_is_refused_naming_each_cve_and_the_floor():
    (problem,) = toolkit("1.16.1").problems
    assert problem.startswith("toolkit_version 1.16.1 is below the NVIDIA security floor 1.17.8")
    assert "CVE-2024-0132 (fixed in 1.16.2" in problem
    assert "CVE-2025-23266 (fixed in 1.17.8" in problem
    assert "toolkit_accept_cves naming CVE-2024-0132,CVE-2025-23266" in problem


@pytest.mark.parametrize("version", ["1.17.8", "1.17.8-1", "1.17.9-1", "1.18.0"])
def test_a_pin_at_or_above_the_floor_passes(version):
    found = toolkit(version)
    assert found.problems == [] and found.notes == []


def test_the_override_accepts_only_the_cves_it_names_and_says_so():
    found = toolkit("1.16.1", toolkit_accept_cves="CVE-2024-0132, CVE-2025-23266")
    assert found.problems == []
    assert len(found.notes) == 2
    assert "CVE-2024-0132" in found.notes[0] and "accepted by toolkit_accept_cves" in found.notes[0]
    assert "CVE-2025-23266" in found.notes[1]
    (problem,) = toolkit("1.16.1", toolkit_accept_cves=["CVE-2024-0132"]).problems
    assert "CVE-2025-23266" in problem and "CVE-2024-0132" not in problem


def test_the_installed_toolkit_is_judged_when_nothing_is_pinned():
    (problem,) = toolkit(None, "1.17.7-1").problems
    assert problem.startswith("the installed toolkit 1.17.7-1 is below")
    assert "CVE-2025-23266" in problem


def test_no_pin_and_nothing_installed_is_skipped_with_the_reason():
    found = toolkit(None, None)
    assert found.problems == []
    assert found.notes == [
        "toolkit gate skipped: toolkit_version is not set and no toolkit is installed "
        "(the repository's newest is installed)"
    ]


def test_the_oldest_installed_package_is_the_version():
    packages = {"nvidia-container-toolkit": "1.17.8-1", "libnvidia-container1": "1.16.1-1"}
    stack = {"packages": packages}
    assert gates.installed_toolkit(stack) == "1.16.1-1"
    cli = {"packages": {}, "ctk_version": "NVIDIA Container Toolkit CLI version 1.17.8"}
    assert gates.installed_toolkit(cli) == "NVIDIA Container Toolkit CLI version 1.17.8"
    assert gates.installed_toolkit({"packages": {}, "ctk_version": ""}) is None


@pytest.mark.parametrize("bad", ["CVE-2024-13", "cve-2024-0132", "CVE-24-0132", "GHSA-xxxx"])
def test_a_malformed_cve_id_is_bad_input(bad):
    _config, problems = load_config("node-1", {"toolkit_accept_cves": ["CVE-2024-0132", bad]})
    (problem,) = [str(p) for p in problems]
    assert "node-1" in problem and "toolkit_accept_cves" in problem and bad in problem
    assert "a CVE id such as CVE-2025-23266" in problem


# --- CUDA


def cuda(state: dict, **data) -> gates.Judgement:
    found = gates.Judgement()
    data.setdefault("deploy_layers", "vllm")
    gates.cuda_gate(config(**data), state, found)
    return found


def test_a_driver_below_the_image_cuda_is_refused_with_the_health_checks_words():
    old = driver_state("535.261.03", 12020)
    (problem,) = cuda(old, vllm_image="vllm/vllm-openai:v0.11.0").problems
    assert problem.startswith("driver 535.261.03: the driver supports CUDA 12.2, ")
    assert "needs 12.8 (gpu_min_cuda_driver)" in problem
    assert "allowed: a driver supporting CUDA 12.8 or later (driver_branch)" in problem


def test_the_gate_is_the_health_checks_rule():
    """Same rule as the verify check: gpu_min_cuda_driver overrides the image's table."""
    state = driver_state("570.172.08", 12080)
    assert cuda(state, vllm_image="vllm/vllm-openai:v0.11.0").problems == []
    assert cuda(state, gpu_min_cuda_driver="12.9").problems
    newest = VLLM_IMAGE_CUDA[-1]
    image = "vllm/vllm-openai:v{}.{}.{}".format(*newest[0])
    assert "needs 13.0" in cuda(state, vllm_image=image).problems[0]


def test_a_driver_that_supports_the_image_passes():
    found = cuda(driver_state("580.159.04", 13000), vllm_image="vllm/vllm-openai:v0.11.0")
    assert found.problems == [] and found.notes == []


def test_no_driver_and_none_being_installed_is_skipped_with_the_reason():
    found = cuda(driver_state(None))
    assert found.problems == []
    assert found.notes and found.notes[0].startswith("CUDA gate skipped: ")


def test_a_driver_being_installed_is_judged_on_its_branch():
    data = {"deploy_layers": "driver,vllm", "driver_source": "cuda-repo",
            "vllm_image": "vllm/vllm-openai:v0.11.0"}  # fmt: skip
    (problem,) = cuda(driver_state(None), driver_branch="535", **data).problems
    assert problem.startswith("driver_branch 535 supports CUDA 12.2, ")
    assert cuda(driver_state(None), driver_branch="580", **data).problems == []
    unknown = cuda(driver_state(None), driver_branch="590", **data)
    assert unknown.problems == [] and "branch 590 is not known here" in unknown.notes[0]
    # moving a loaded 580 to 535 is judged on 535, not on what runs now
    moving = cuda(driver_state("580.159.04", 13000), driver_branch="535", **data)
    assert moving.problems and moving.problems[0].startswith("driver_branch 535")


def test_an_unknown_image_is_skipped_with_the_reason():
    found = cuda(driver_state("580.159.04"), vllm_image="registry.local/my-vllm:custom")
    assert found.problems == []
    assert "set gpu_min_cuda_driver" in found.notes[0]


def test_gpu_less_hosts_and_runs_without_vllm_are_not_judged():
    old = driver_state("535.261.03", 12020)
    assert cuda(old, host_has_gpus=False) == gates.Judgement()
    assert cuda(old, deploy_layers="driver,toolkit") == gates.Judgement()


# --- fabric manager


def fabric(state: dict, **data) -> gates.Judgement:
    found = gates.Judgement()
    data.setdefault("driver_source", "cuda-repo")
    data.setdefault("driver_branch", "580")
    profile = {"nvswitches": [{"slot": "0000:05:00.0"}]}
    gates.fabric_manager_gate(config(**data), profile, state, found)
    return found


@pytest.mark.parametrize(
    ("package", "version"),
    [
        ("nvidia-fabricmanager-580", "580.95.05-1"),
        ("nvidia-fabricmanager", "580.95.05-1.el9"),
        ("nvidia-fabric-manager", "3:580.95.05-1"),
    ],  # fmt: skip
)
def test_a_fabric_manager_of_another_version_is_refused(package, version):
    state = driver_state("580.159.04", 13000, f"package={package} {version}")
    (problem,) = fabric(state).problems
    assert problem == (
        f"the fabric manager {package} is {version}, the driver is 580.159.04: they must be "
        f"the same version; allowed: {package} at 580.159.04 (driver_fabric_manager)"
    )


@pytest.mark.parametrize("version", ["580.159.04-1", "580.159.04-1.el9", "1:580.159.04-1"])
def test_a_fabric_manager_of_the_driver_version_passes(version):
    state = driver_state("580.159.04", 13000, f"package=nvidia-fabricmanager-580 {version}")
    assert fabric(state) == gates.Judgement()


def test_a_fabric_manager_that_is_no_package_is_skipped_with_the_reason():
    found = fabric(driver_state("580.159.04"))  # the lab's STAND-IN HGX: a unit, no package
    assert found.problems == []
    assert found.notes == [
        "fabric manager gate skipped: no fabric manager package or nv-fabricmanager binary "
        "is installed, so its version cannot be read"
    ]


def test_a_fabric_manager_that_is_no_package_is_judged_on_what_its_binary_says():
    state = driver_state("580.159.04", 13000, "fabricmanager_version=580.95.05")
    (problem,) = fabric(state).problems
    assert problem.startswith("the fabric manager nv-fabricmanager is 580.95.05, the driver is ")
    same = driver_state("580.159.04", 13000, "fabricmanager_version=580.159.04")
    assert fabric(same) == gates.Judgement()


@needs_dash
def test_the_driver_state_script_reads_the_fabric_manager_binarys_version(tmp_path):
    """Recorded output: "Fabric Manager version is : 535.161.08" (nv-fabricmanager 535)."""
    version = "printf '%s\\n' '' 'Fabric Manager version is : 535.161.08' ''"
    for stubs, expected in (({"nv-fabricmanager": version}, "535.161.08"), ({}, None)):
        path = _stubs(tmp_path / f"bin-{expected}", stubs)
        done = _dash(driver_command(), tmp_path, path)
        assert done.returncode == 0, done.stderr
        assert parse_driver_state(done.stdout.splitlines()).get("fabricmanager_version") == (
            expected
        )


def test_a_driver_move_in_this_run_takes_the_fabric_manager_with_it():
    state = driver_state("570.172.08", 12080, "package=nvidia-fabricmanager-570 570.172.08-1")
    found = fabric(state, deploy_layers="driver")  # driver_branch 580: this run moves both
    assert found.problems == [] and "this run moves the driver" in found.notes[0]


def test_hosts_without_nvswitches_are_not_judged():
    state = driver_state("580.159.04", 13000, "package=nvidia-fabricmanager-580 580.95.05-1")
    found = gates.Judgement()
    gates.fabric_manager_gate(config(), {"nvswitches": []}, state, found)
    assert found == gates.Judgement()
