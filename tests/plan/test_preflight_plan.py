"""Plan tests of deploy.py's preflight gate: given a host's facts, exactly what is planned."""

from __future__ import annotations

import logging
import time

import pytest

from operations.config.load import ConfigError
from operations.preflight.facts import profile_command
from tests.plan.harness import FakeFleet

DEBIAN12 = [
    "os_id=debian", "os_version=12", "os_codename=bookworm", "arch=x86_64",
    "kernel=6.1.0-28-amd64",
]  # fmt: skip
SUPPORTED = "supported: ubuntu 22.04, ubuntu 24.04, debian 12, rocky 9, rhel 9"


def os_release(os_id: str, version: str, arch: str = "x86_64") -> list[str]:
    return [f"os_id={os_id}", f"os_version={version}", f"arch={arch}", "kernel=5.15.0"]


H100 = "pci=0000:1b:00.0 0x030200 0x2330"
NVSWITCH = "pci=0000:05:00.0 0x068000 0x22a3"


def profile(*lines: str, os_lines=DEBIAN12, free_kib=200 * 1024**2) -> dict:
    """fake_responses answering the HostProfile script with these lines."""
    body = [*os_lines, *lines, "secure_boot=disabled", f"disk_free_kib={free_kib}"]
    return {"os-release": body}


def host(responses: dict, **settings) -> dict:
    """A fake host answering the preflight fact; only the preflight layer runs by default."""
    return {"fake_responses": responses, "deploy_layers": "preflight", **settings}


def fails_with(planned: list, text: str) -> bool:
    """The host's plan is the single failing preflight operation, saying ``text``."""
    ((name, commands),) = planned
    return (
        name == "Preflight | Preflight failed" and text in commands[0] and "exit 1" in commands[0]
    )


def test_gpu_host_passes_with_one_fact_command_and_plans_nothing_yet(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pyinfra")
    fleet = FakeFleet(
        tmp_path,
        {"gpu1": host(profile(H100, H100), host_gpu_count=2, deploy_layers="preflight")},
    )
    assert fleet.plan() == {"gpu1": []}
    (fact_command,) = fleet.sent()["gpu1"]  # one round trip gathers every preflight fact
    assert profile_command("/") in fact_command
    assert "debian 12 x86_64, kernel 6.1.0-28-amd64, 2 NVIDIA GPU(s)" in caplog.text
    assert "driver:" not in caplog.text


@pytest.mark.parametrize(
    ("os_lines", "expected"),
    [
        (
            ["os_id=debian", "os_version=11", "arch=x86_64", "kernel=5.10"],
            "unsupported OS debian 11",
        ),
        (["os_id=centos", "os_version=7", "arch=x86_64", "kernel=3.10"], "unsupported OS centos 7"),
        (["os_id=ubuntu", "os_version=20.04", "arch=x86_64", "kernel=5.4"], "ubuntu 20.04"),
        (["os_id=debian", "os_version=12", "arch=ppc64le", "kernel=6.1"], "architecture ppc64le"),
    ],
)
def test_unsupported_platform_fails_that_host(tmp_path, os_lines, expected):
    planned = FakeFleet(tmp_path, {"h": host(profile(H100, os_lines=os_lines))}).plan()
    assert fails_with(planned["h"], expected)


@pytest.mark.parametrize(
    ("os_lines"),
    [
        os_release("ubuntu", "22.04"),
        os_release("ubuntu", "24.04", "aarch64"),
        os_release("rocky", "9.4"),
        os_release("rhel", "9.5"),
    ],
)
def test_supported_platforms_pass(tmp_path, os_lines):
    assert FakeFleet(tmp_path, {"h": host(profile(H100, os_lines=os_lines))}).plan() == {"h": []}


def test_gpu_group_host_without_gpu_fails_with_the_fix_in_the_message(tmp_path):
    planned = FakeFleet(tmp_path, {"h": host(profile())}).plan()
    assert fails_with(planned["h"], "no NVIDIA GPU (PCI vendor 10de)")
    assert fails_with(planned["h"], "set host_has_gpus = False")


def test_host_declared_without_gpus_passes_without_gpu(tmp_path):
    assert FakeFleet(tmp_path, {"h": host(profile(), host_has_gpus=False)}).plan() == {"h": []}


def test_gpu_count_mismatch_fails(tmp_path):
    planned = FakeFleet(tmp_path, {"h": host(profile(H100), host_gpu_count=8)}).plan()
    assert fails_with(planned["h"], "1 NVIDIA GPU(s) on the PCI bus, host_gpu_count expects 8")


def test_nvswitch_is_not_counted_as_a_gpu(tmp_path):
    fleet = FakeFleet(tmp_path, {"h": host(profile(H100, NVSWITCH), host_gpu_count=1)})
    assert fleet.plan() == {"h": []}


def test_small_disk_fails(tmp_path):
    responses = profile(H100, free_kib=5 * 1024**2)
    planned = FakeFleet(tmp_path, {"h": host(responses)}).plan()
    assert fails_with(planned["h"], "only 5.0 GiB free on /, preflight_min_free_disk_gib is 30.0")


def test_one_failing_host_does_not_stop_the_others(tmp_path):
    fleet = FakeFleet(tmp_path, {"good": host(profile(H100)), "bad": host(profile())})
    planned = fleet.plan()
    assert planned["good"] == []
    assert fails_with(planned["bad"], "no NVIDIA GPU")


def test_layer_subset_runs_only_those_layers(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pyinfra")
    planned = FakeFleet(tmp_path, {"h": host(profile(H100), deploy_layers="docker")}).plan()["h"]
    layers = {name.split(" | ")[0] for name, _ in planned}
    assert layers == {"Docker Engine"}


def test_bad_value_on_one_host_stops_the_run_before_any_command(tmp_path):
    fleet = FakeFleet(
        tmp_path,
        {"good": host(profile(H100)), "bad": host(profile(H100), vllm_gpu_memory_utilization=1.5)},
    )
    with pytest.raises(ConfigError) as error:
        fleet.plan()
    assert "bad: vllm_gpu_memory_utilization = 1.5: Input should be less than or equal to 1" in str(
        error.value
    )
    assert fleet.sent() == {"good": [], "bad": []}


def test_apt_waits_for_a_held_lock_and_finishes_an_interrupted_dpkg_run(tmp_path):
    interrupted = profile(H100, "dpkg_interrupted=yes")
    fleet = FakeFleet(
        tmp_path, {"h": host(interrupted, deploy_layers="vllm", deploy_lock_timeout_s=120)}
    )
    planned = dict(fleet.plan(base=True)["h"])
    conf = "/etc/apt/apt.conf.d/90gpufleet-lock-timeout"
    lock = planned["Package manager | apt waits for a held lock"]
    assert f'upload {conf}: DPkg::Lock::Timeout "120";\n' in lock
    (finish,) = planned["Package manager | Finish the interrupted dpkg run"]
    assert "until out=$(DEBIAN_FRONTEND=noninteractive dpkg --configure -a 2>&1); do" in finish
    assert "timeout=120\n" in finish


def test_no_package_manager_step_when_only_preflight_runs_or_dpkg_is_fine(tmp_path):
    only_preflight = FakeFleet(tmp_path, {"h": host(profile(H100), deploy_layers="preflight")})
    assert only_preflight.plan(base=True) == {"h": []}
    (tmp_path / "2").mkdir()
    fine = FakeFleet(tmp_path / "2", {"h": host(profile(H100), deploy_layers="vllm")})
    names = [name for name, _ in fine.plan(base=True)["h"]]
    assert "Package manager | Finish the interrupted dpkg run" not in names
    assert "Package manager | apt waits for a held lock" in names


def test_apt_fetches_through_the_configured_proxy_or_not_at_all(tmp_path):
    proxy = "http://cache.internal:3142/"
    fleet = FakeFleet(
        tmp_path, {"h": host(profile(H100), deploy_layers="vllm", deploy_apt_proxy=proxy)}
    )
    planned = dict(fleet.plan(base=True)["h"])
    through = planned["Package manager | apt fetches through the shared proxy"]
    assert (
        f'upload /etc/apt/apt.conf.d/90gpufleet-proxy: Acquire::http::Proxy "{proxy}";\n' in through
    )
    (tmp_path / "2").mkdir()
    none = FakeFleet(tmp_path / "2", {"h": host(profile(H100), deploy_layers="vllm")})
    assert "Package manager | No apt proxy" in dict(none.plan(base=True)["h"])


# --- a host whose facts cannot be read fails alone, with the reason ----------------------


def test_host_without_a_preflight_answer_fails_alone_with_the_reason(tmp_path):
    fleet = FakeFleet(tmp_path, {"good": host(profile(H100)), "silent": host({})})
    planned = fleet.plan()
    assert planned["good"] == []
    assert fails_with(planned["silent"], "could not be read: the profile script printed nothing")


def test_partial_preflight_answer_names_what_is_missing(tmp_path):
    partial = {"os-release": ["os_id=debian", "os_version=12"]}
    planned = FakeFleet(tmp_path, {"good": host(profile(H100)), "h": host(partial)}).plan()
    assert fails_with(planned["h"], "the profile script printed no arch, kernel")
    assert planned["good"] == []


def test_garbled_preflight_lines_are_left_out_not_a_crash(tmp_path):
    garbled = profile(H100, "pci=0000:1b:00.0", free_kib="lots")
    planned = FakeFleet(tmp_path, {"h": host(garbled), "good": host(profile(H100))}).plan()
    assert fails_with(planned["h"], "the free space on / could not be read")
    assert planned["good"] == []


def test_preflight_fact_that_fails_fails_that_host_and_the_others_go_on(tmp_path, caplog):
    failing = {"os-release": {"success": False, "stderr": "sh: 1: cannot fork"}}
    fleet = FakeFleet(
        tmp_path,
        {
            "good": host(profile(H100), deploy_layers="docker"),
            "bad": host(failing, deploy_layers="docker"),
        },
    )
    planned = fleet.plan()
    assert planned["bad"] == []  # nothing planned after the fact that failed
    assert [h.name for h in fleet.state.failed_hosts] == ["@fake/bad"]
    assert {name.split(" | ")[0] for name, _ in planned["good"]} == {"Docker Engine"}
    assert "cannot fork" in caplog.text


def test_preflight_fact_that_never_answers_fails_that_host_within_its_bound(tmp_path, caplog):
    fleet = FakeFleet(
        tmp_path,
        {
            "good": host(profile(H100)),
            "hung": host(profile(H100), fake_delay=30, deploy_fact_timeout_s=1),
        },
    )
    started = time.monotonic()
    planned = fleet.plan()
    took = time.monotonic() - started
    assert took < 1 + 2 + 5, took  # the fact bound, the grace, and the run itself
    assert planned == {"good": [], "hung": []}
    assert [h.name for h in fleet.state.failed_hosts] == ["@fake/hung"]
    assert (
        "stopped answering" in caplog.text and "within 1 s (deploy_fact_timeout_s)" in caplog.text
    )


def test_bad_bound_setting_stops_the_run_before_any_command(tmp_path):
    fleet = FakeFleet(
        tmp_path,
        {"good": host(profile(H100)), "bad": host(profile(H100), deploy_fact_timeout_s=True)},
    )
    with pytest.raises(ConfigError) as error:
        fleet.plan()
    assert "bad: deploy_fact_timeout_s = True: must be a whole number" in str(error.value)
    assert fleet.sent() == {"good": [], "bad": []}


def test_a_later_layers_fact_that_fails_fails_that_host_and_the_others_go_on(tmp_path):
    unreadable = {
        "@@gpufleet-state@@": {"success": False, "stderr": "Input/output error"},
        **profile(H100),
    }
    fleet = FakeFleet(
        tmp_path,
        {
            "good": host(profile(H100), deploy_layers="docker,vllm"),
            "bad": host(unreadable, deploy_layers="docker,vllm"),
        },
    )
    planned = fleet.plan()  # no TypeError from a missing fact: that host stops planning
    assert [h.name for h in fleet.state.failed_hosts] == ["@fake/bad"]
    layers = {name.split(" | ")[0] for name, _ in planned["good"]}
    assert layers == {"Docker Engine", "vLLM server"}
    assert not any(name.startswith("vLLM server") for name, _ in planned["bad"])
