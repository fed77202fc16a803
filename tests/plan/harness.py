"""Plan tests: run deploy.py against pyinfra's @fake connector and read the planned commands.

Hosts get the real group_data (loaded by pyinfra's own inventory loader), scripted fact
output (``fake_responses``) and no delay. ``FakeFleet.plan()`` returns, per host, the
operations in order with the exact shell commands each would run: given facts -> commands.
An operation that runs only if an earlier one changes something is named with CONDITIONAL.
The "Package manager" step every layer shares (operations.kit.packages.package_manager_ready) is
left out of plans unless asked for (``plan(base=True)``), so layer tests see their layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyinfra
from pyinfra.api import Config, State
from pyinfra.api.command import FileUploadCommand, FunctionCommand
from pyinfra.api.connect import connect_all
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state
from pyinfra_cli.inventory import make_inventory
from pyinfra_cli.util import load_deploy_file

ROOT = Path(__file__).resolve().parents[2]
CONDITIONAL = " [if changed]"
BASE = "Package manager | "
DEPLOY = str(ROOT / "deploy.py")


def _inventory_file(tmp_path: Path, hosts: dict[str, dict[str, Any]], group: str) -> Path:
    """An inventory file with one group of @fake hosts (pyinfra loads group_data beside it)."""
    path = tmp_path / f"{group}.py"
    rows = ",\n".join(f"    ({f'@fake/{name}'!r}, {data!r})" for name, data in hosts.items())
    path.write_text(f"import re\n\n{group} = [\n{rows},\n]\n")
    return path


def gateway_off(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the gateway off unless it sets a ``gateway_*`` key (a copy). By default
    the gateway is on wherever vLLM listens beyond loopback, and then needs TLS files or plain
    HTTP allowed: tests of the other layers do not set them (the gateway's tests do)."""
    if any(key.startswith("gateway_") for key in data):
        return data
    return {**data, "gateway_mode": "off"}


def gateway_off_beside(inventory: Path) -> Path:
    """The same for an inventory file of a test: group_data beside it (which pyinfra reads
    after the repository's) turns the gateway off for every host that sets none itself."""
    group_data = inventory.parent / "group_data"
    group_data.mkdir(exist_ok=True)
    (group_data / "all.py").write_text('gateway_mode = "off"\n')
    return inventory


class FakeFleet:
    """Fake hosts with scripted facts, planned through the real deploy.py and group_data."""

    def __init__(self, tmp_path: Path, hosts: dict[str, dict[str, Any]], group: str = "plan"):
        for data in hosts.values():
            data.setdefault("fake_delay", 0)
            data.setdefault("fake_delay_jitter", 0)
            data.update(gateway_off(data))
        self.inventory_path = _inventory_file(tmp_path, hosts, group)
        self.inventory = None
        self.state = State()

    def plan(self, base: bool = False) -> dict[str, list[tuple[str, list[str]]]]:
        """{host: [(operation name, [commands])]}, in run order; raises what deploy.py raises.
        ``base``: include the shared package-manager step."""
        pyinfra.is_cli = True
        state = self.state
        with ctx_state.use(state):
            self.inventory = make_inventory(str(self.inventory_path), cwd=str(ROOT))
        config = Config()
        state.init(self.inventory, config)
        with ctx_state.use(state), ctx_inventory.use(self.inventory), ctx_config.use(config):
            state.set_stage(StateStage.Connect)
            connect_all(state)
            state.set_stage(StateStage.Prepare)
            load_deploy_file(state, DEPLOY)
            plans = {_short(host.name): _host_plan(state, host) for host in self.inventory}
        return {
            name: [(op, cmds) for op, cmds in ops if base or not op.startswith(BASE)]
            for name, ops in plans.items()
        }

    def sent(self) -> dict[str, list[str]]:
        """Every command the planning sent to each host (fact commands included)."""
        return {_short(h.name): list(h.connector.executed_commands) for h in self.inventory}


def _short(name: str) -> str:
    return name.removeprefix("@fake/")


def _text(command) -> str:
    """A planned command as text; a file upload as ``upload <dest>: <content>``."""
    if isinstance(command, FileUploadCommand):
        src = command.src
        content = src.getvalue() if hasattr(src, "getvalue") else f"<{src}>"
        return f"upload {command.dest}: {content}"
    if isinstance(command, FunctionCommand):
        return f"python: {command.function.__name__}"
    return str(command.get_raw_value())


def _host_plan(state: State, host) -> list[tuple[str, list[str]]]:
    planned = []
    with ctx_host.use(host):
        for op_hash in state.get_op_order():
            if op_hash not in state.ops[host]:
                continue
            op_data = state.get_op_data_for_host(host, op_hash)
            commands = [_text(c) for c in op_data.command_generator()]
            name = ", ".join(sorted(state.op_meta[op_hash].names))
            if op_data.global_arguments.get("_if"):
                name += CONDITIONAL  # runs only if an earlier operation changed something
            planned.append((name, commands))
    return planned
