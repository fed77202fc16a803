"""Plan tests: a driver or container toolkit change recreates the vLLM containers.

A GPU container keeps the driver files the runtime put in it when it was created
(NVIDIA/gpu-operator#416), so on GPU hosts the spec hash covers the driver version the host
runs and the installed toolkit (operations.vllm, "Driver and toolkit changes"). Here: given
the driver and Docker layers' facts, what the vLLM layer plans; the same-run case of a
toolkit upgrade, executed on the facts of after the upgrade; and the next run planning
nothing.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from pyinfra.connectors.util import CommandOutput
from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state

from operations.docker.facts import parse_stack
from operations.driver.facts import loaded_driver, parse_driver_state
from operations.toolkit.facts import PACKAGES, toolkit_version
from operations.vllm import NO_RUNTIME, Runtime, container_args
from tests.plan.harness import FakeFleet
from tests.plan.test_docker_plan import by_name, dpkg, profile
from tests.plan.test_vllm_plan import (
    BASE,
    KEY,
    config_of,
    docker_run,
    gate_of,
    plan_of,
    ready_line,
    running,
    secrets_line,
    spec_of,
    steps,
)

DRIVER_KEY = "module_loaded="  # a line only the DriverState script prints
STACK_KEY = "ctk_version="  # a line only the ContainerStack script prints
OLD_DRIVER, NEW_DRIVER = "570.172.08", "580.159.04"
OLD_TOOLKIT, NEW_TOOLKIT = "1.17.7-1", "1.17.8-1"


def driver_lines(version: str | None) -> list[str]:
    """DriverState output of a host that runs driver ``version`` (None: no driver at all)."""
    if version is None:
        return []
    return [f"nvml_version={version}", f"module_loaded={version}", f"proc_version={version}"]


def stack_lines(version: str | None) -> list[str]:
    """ContainerStack output of a host with the toolkit's four packages at ``version``."""
    lines = ["active=active", "server_version=27.5.1", "info={}"]
    if version is None:
        return [*lines, "ctk_version="]
    upstream = version.split("-")[0]
    packages = [f"package={name} {version}" for name in PACKAGES]
    return [*lines, *packages, f"ctk_version=NVIDIA Container Toolkit CLI version {upstream}"]


def runtime(driver: str | None, toolkit: str | None) -> Runtime:
    """The Runtime the vLLM layer reads from those facts, through the layers' own readers
    (loaded_driver, toolkit_version): what the hash must cover."""
    version = loaded_driver(parse_driver_state(driver_lines(driver)))
    stack = toolkit_version(parse_stack(stack_lines(toolkit)))
    return Runtime(version or "", stack or "")


def facts(driver: str | None, toolkit: str | None) -> dict[str, list[str]]:
    return {DRIVER_KEY: driver_lines(driver), STACK_KEY: stack_lines(toolkit)}


def deployed_under(config, under: Runtime) -> list[str]:
    """VllmState lines of the instance deployed and proven ready under ``under``."""
    spec = spec_of(config, runtime=under)
    return [running(config, spec=spec), ready_line("main", spec),
            secrets_line("main", {"VLLM_API_KEY": KEY})]  # fmt: skip


def test_the_readers_see_the_versions_of_the_facts():
    assert runtime(NEW_DRIVER, NEW_TOOLKIT).driver == NEW_DRIVER
    toolkit = runtime(NEW_DRIVER, NEW_TOOLKIT).toolkit
    assert all(f"{name}={NEW_TOOLKIT}" in toolkit for name in PACKAGES), toolkit
    assert runtime(None, None) == NO_RUNTIME


def test_the_spec_covers_the_driver_and_the_toolkit_and_nothing_else_changes_it():
    config = config_of()
    specs = {
        spec_of(config, runtime=runtime(driver, toolkit))
        for driver in (OLD_DRIVER, NEW_DRIVER)
        for toolkit in (OLD_TOOLKIT, NEW_TOOLKIT)
    }
    assert len(specs) == 4  # each version counts on its own
    again = spec_of(config_of(), runtime=runtime(NEW_DRIVER, NEW_TOOLKIT))
    assert again == spec_of(config, runtime=runtime(NEW_DRIVER, NEW_TOOLKIT))  # stable


def test_same_driver_and_toolkit_plan_nothing(tmp_path, monkeypatch):
    config, now = config_of(), runtime(NEW_DRIVER, NEW_TOOLKIT)
    state = ["docker=up", *deployed_under(config, now)]
    planned = plan_of(tmp_path, monkeypatch, state=state, facts=facts(NEW_DRIVER, NEW_TOOLKIT))
    assert list(planned) == BASE


@pytest.mark.parametrize(
    ("why", "before", "now"),
    [
        ("the driver changed", (OLD_DRIVER, NEW_TOOLKIT), (NEW_DRIVER, NEW_TOOLKIT)),
        ("the toolkit changed", (NEW_DRIVER, OLD_TOOLKIT), (NEW_DRIVER, NEW_TOOLKIT)),
        ("a driver came", (None, NEW_TOOLKIT), (NEW_DRIVER, NEW_TOOLKIT)),
        ("the toolkit went", (NEW_DRIVER, NEW_TOOLKIT), (NEW_DRIVER, None)),
    ],
)
def test_a_changed_version_plans_a_recreation_keeping_the_old_server(
    tmp_path, monkeypatch, why, before, now
):
    config = config_of()
    state = ["docker=up", *deployed_under(config, runtime(*before))]
    commands = plan_of(tmp_path, monkeypatch, state=state, facts=facts(*now))["vLLM vllm-main"]
    new_spec = spec_of(config, runtime=runtime(*now))
    run = docker_run(commands)
    assert run[:5] == ["docker", "run", "--detach", "--label", f"gpufleet.spec={new_spec}"], why
    assert run[5:] == container_args(config, config.vllm.servers()[0]), why  # args unchanged
    # the proven server is kept aside and restored if the new one fails, like any recreation
    old_spec = spec_of(config, runtime=runtime(*before))
    gate = gate_of(commands)
    assert f"printf '%s\\n' {new_spec} > /etc/gpufleet/vllm/main.ready" in gate, why
    assert f"rolled back to the previous server (spec {old_spec})" in gate, why
    assert not any(c.startswith("upload ") for c in commands), why  # the secrets did not change


def test_a_host_with_no_driver_and_no_toolkit_hashes_as_before(tmp_path, monkeypatch):
    """No driver, no toolkit: the label is the arguments' hash alone, as before the runtime
    counted, so a container created before it is not recreated for it."""
    config = config_of()
    (server,) = config.vllm.servers()
    before = hashlib.sha256(json.dumps(container_args(config, server)).encode()).hexdigest()[:16]
    assert spec_of(config) == before
    state = ["docker=up", running(config, spec=before), ready_line("main", before),
             secrets_line("main", {"VLLM_API_KEY": KEY})]  # fmt: skip
    planned = plan_of(tmp_path, monkeypatch, state=state, facts=facts(None, None))
    assert list(planned) == BASE
    (tmp_path / "fresh").mkdir()
    fresh = plan_of(tmp_path / "fresh", monkeypatch, facts=facts(None, None))
    assert docker_run(fresh["vLLM vllm-main"])[4] == f"gpufleet.spec={before}"


def test_a_gpu_less_host_ignores_the_driver_and_toolkit_and_reads_neither(tmp_path, monkeypatch):
    """No GPUs: the containers get none, so no driver file can go stale: the label is the
    arguments' hash whatever is installed, and neither fact is read."""
    config = config_of(host_has_gpus=False)
    state = ["docker=up", running(config), ready_line("main", spec_of(config)),
             secrets_line("main", {"VLLM_API_KEY": KEY})]  # fmt: skip
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    responses = {
        **facts(NEW_DRIVER, NEW_TOOLKIT),
        "os-release": [line for line in profile() if not line.startswith("pci=")],
        "label=gpufleet.vllm": state,
        "docker image inspect": ['[{"Id": "sha256:abc"}]'],
    }
    host = {"fake_responses": responses, "deploy_layers": "vllm", "host_has_gpus": False}
    fleet = FakeFleet(tmp_path, {"h": host})
    assert list(by_name(fleet.plan()["h"])) == BASE
    sent = fleet.sent()["h"]
    assert not [c for c in sent if DRIVER_KEY in c or STACK_KEY in c]


# --- the same run: the toolkit layer upgrades, the vLLM layer decides again ------------------


def upgrade_fleet(tmp_path, monkeypatch, label: Runtime) -> FakeFleet:
    """A GPU host running driver NEW_DRIVER and the toolkit at OLD_TOOLKIT, pinned to
    NEW_TOOLKIT (the toolkit layer plans the move), whose server is labelled under ``label``;
    layers toolkit and vllm in one run."""
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    config = config_of()
    responses = {
        **facts(NEW_DRIVER, OLD_TOOLKIT),
        "/etc/cdi/nvidia.yaml": ["current"],
        "os-release": profile(),
        "dpkg -l": dpkg(*(f"{name} {OLD_TOOLKIT}" for name in PACKAGES)),
        "label=gpufleet.vllm": ["docker=up", *deployed_under(config, label)],
        "docker image inspect": ['[{"Id": "sha256:abc"}]'],
    }
    host = {"fake_responses": responses, "deploy_layers": "toolkit,vllm",
            "toolkit_version": NEW_TOOLKIT.split("-")[0]}  # fmt: skip
    tmp_path.mkdir(exist_ok=True)
    return FakeFleet(tmp_path, {"h": host})


def executed(fleet: FakeFleet, op: str, changed: dict[str, bool]) -> list[str]:
    """The commands operation ``op`` runs when executed after the operations named in
    ``changed`` completed (True: it changed something), on the host's facts of then."""
    state = fleet.state
    (host,) = list(fleet.inventory)
    found = {}
    for op_hash in state.get_op_order():
        if op_hash in state.ops[host]:
            names = ", ".join(sorted(state.op_meta[op_hash].names)).split(" | ", 1)[1]
            found[names] = state.get_op_data_for_host(host, op_hash)
    for name, did in changed.items():
        found[name].operation_meta.set_complete(True, ["x"] if did else [], CommandOutput([]))
    state.is_executing = True
    try:
        with (
            ctx_state.use(state), ctx_inventory.use(fleet.inventory), ctx_host.use(host),
            ctx_config.use(state.config),
        ):  # fmt: skip
            return steps([str(c.get_raw_value()) for c in found[op].command_generator()])
    finally:
        state.is_executing = False


def answer(fleet: FakeFleet, key: str, lines: list[str]) -> None:
    """From now on the fake host answers ``lines`` to the fact command holding ``key`` (the
    connector's data is a shallow copy of the inventory's: the list is shared)."""
    (host,) = list(fleet.inventory)
    host.connector.data.get("fake_responses")[key][:] = lines


MOVE = "Move NVIDIA Container Toolkit to 1.17.8[-+~.]* (installed: " + ", ".join(
    f"{name} {OLD_TOOLKIT}" for name in PACKAGES
) + ")"  # fmt: skip


def test_a_toolkit_upgrade_in_the_same_run_recreates_under_the_new_version(tmp_path, monkeypatch):
    config, before = config_of(), runtime(NEW_DRIVER, OLD_TOOLKIT)
    fleet = upgrade_fleet(tmp_path, monkeypatch, label=before)
    planned = by_name(fleet.plan()["h"])
    assert MOVE in planned
    # the planning facts show the old toolkit, as the label: nothing to do on them, so the
    # server's operation runs only if the move changed something, and decides again then
    assert planned["vLLM vllm-main [if changed]"] == []
    assert planned["Generate the CDI spec [if changed]"]  # the same condition
    # the move ran: the host's facts now name the new toolkit
    answer(fleet, STACK_KEY, stack_lines(NEW_TOOLKIT))
    commands = executed(fleet, "vLLM vllm-main", {MOVE: True})
    after = spec_of(config, runtime=runtime(NEW_DRIVER, NEW_TOOLKIT))
    assert docker_run(commands)[4] == f"gpufleet.spec={after}"
    assert f"printf '%s\\n' {after} > /etc/gpufleet/vllm/main.ready" in gate_of(commands)
    assert "docker stop vllm-main" in " ".join(commands)  # the proven one kept aside


def test_a_planned_move_that_changed_nothing_leaves_the_server(tmp_path, monkeypatch):
    fleet = upgrade_fleet(tmp_path, monkeypatch, label=runtime(NEW_DRIVER, OLD_TOOLKIT))
    fleet.plan()
    assert executed(fleet, "vLLM vllm-main", {MOVE: False}) == []  # the condition is false
    (tmp_path / "b").mkdir()
    again = upgrade_fleet(tmp_path / "b", monkeypatch, label=runtime(NEW_DRIVER, OLD_TOOLKIT))
    again.plan()
    # it changed something, but the host's toolkit is still the one the label names
    assert executed(again, "vLLM vllm-main", {MOVE: True}) == []


def test_the_run_after_the_upgrade_plans_nothing(tmp_path, monkeypatch):
    """What the same-run recreation wrote (the label under the new toolkit) is what the next
    run's planning facts read: no change."""
    config, now = config_of(), runtime(NEW_DRIVER, NEW_TOOLKIT)
    state = ["docker=up", *deployed_under(config, now)]
    installed = {"dpkg -l": dpkg(*(f"{name} {NEW_TOOLKIT}" for name in PACKAGES))}
    planned = plan_of(tmp_path, monkeypatch, state=state,
                      facts={**facts(NEW_DRIVER, NEW_TOOLKIT), **installed},
                      deploy_layers="toolkit,vllm", toolkit_version="1.17.8")  # fmt: skip
    assert not [name for name in planned if "NVIDIA Container Toolkit to" in name]
    assert "vLLM vllm-main" not in planned and "vLLM vllm-main [if changed]" not in planned
