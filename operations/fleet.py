"""Deploy-time access to the validated config of the hosts a run targets.

pyinfra runs ``deploy.py`` once per host, in parallel. The first run to ask validates every
targeted host (``--limit`` honoured) in one go, before it returns, so one bad value anywhere
stops the whole run before any fact is gathered or any operation is planned on any host.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from pyinfra import logger
from pyinfra.api import Host, Inventory, State
from pyinfra.api.exceptions import NoGroupError
from pyinfra.api.state import BaseStateCallback
from pyinfra.context import ContextObject, ctx_state
from pyinfra_cli.inventory import make_inventory

from operations.config import FleetConfig
from operations.settings import load_fleet

_VALIDATED: WeakKeyDictionary[State, dict[str, FleetConfig]] = WeakKeyDictionary()


def _run_state(state: State) -> State:
    """The run's own State. deploy.py's `state` is pyinfra's context proxy: one object for
    every run, hashing as the current State; per-run entries key on the State itself, so
    they die with their run."""
    return ctx_state.get() if isinstance(state, ContextObject) else state


def fleet_config(state: State) -> dict[str, FleetConfig]:
    """Config of every targeted host, validated once per run (raises ConfigError)."""
    state = _run_state(state)
    if state not in _VALIDATED:
        targeted = [h for h in state.inventory if state.is_host_in_limit(h)]
        _VALIDATED[state] = load_fleet((h.name, h.data.dict()) for h in targeted)
    return _VALIDATED[state]


class FleetSummary(BaseStateCallback):
    """Ends a run that executed operations with one line naming the hosts that failed
    (connection or operation): pyinfra's results table counts hosts per operation but names
    none. A run that stopped early says so instead of claiming success: pyinfra 3 aborts the
    whole run on a connection dropped mid-command (paramiko's EOFError is not handled:
    pyinfra-dev/pyinfra#1220); a re-run converges the hosts."""

    def __init__(self) -> None:
        self.disconnected: set[str] = set()
        self.started = self.ended = 0
        self.clock: dict[str, float] = {}
        self.seconds: dict[str, float] = {}  # operation name -> wall time across the fleet

    def operation_start(self, state: State, op_hash) -> None:
        self.started += 1
        self.clock[op_hash] = time.monotonic()

    def operation_end(self, state: State, op_hash) -> None:
        self.ended += 1
        name = ", ".join(sorted(state.get_op_meta(op_hash).names))
        self.seconds[name] = time.monotonic() - self.clock.pop(op_hash, time.monotonic())

    def host_disconnect(self, state: State, host: Host) -> None:
        self.disconnected.add(host.name)
        if self.started and self.disconnected >= {h.name for h in state.activated_hosts}:
            every_host_failed = not (set(state.activated_hosts) - set(state.failed_hosts))
            complete = self.ended == len(state.get_op_order()) or every_host_failed
            logger.info(fleet_summary(state, complete))
            if os.environ.get(TIMINGS_ENV):  # for the benchmark: where the run's time went
                Path(os.environ[TIMINGS_ENV]).write_text(json.dumps(self.seconds, indent=1))


def fleet_summary(state: State, complete: bool = True) -> str:
    """'--> Fleet: 2 of 3 host(s) succeeded; failed: lab-3' for the hosts the run targeted."""
    targeted = [h.name for h in state.inventory if state.is_host_in_limit(h)]
    failed = [h.name for h in state.inventory if h in state.failed_hosts]
    tail = f"; failed: {', '.join(failed)}" if failed else ""
    if not complete:
        return f"--> Fleet: the run stopped before its last operation (error above){tail}"
    return f"--> Fleet: {len(targeted) - len(failed)} of {len(targeted)} host(s) succeeded{tail}"


TIMINGS_ENV = "GPUFLEET_TIMINGS"  # a file: each operation's wall time, written at the end

_SUMMARIES: WeakKeyDictionary[State, FleetSummary] = WeakKeyDictionary()


def summarise_at_exit(state: State) -> None:
    """Register FleetSummary once per run (deploy.py runs once per host)."""
    state = _run_state(state)
    if state not in _SUMMARIES:
        _SUMMARIES[state] = FleetSummary()
        state.add_callback_handler(_SUMMARIES[state])


def host_config(state: State, host: Host) -> FleetConfig:
    """Config of one host, after the whole run's hosts were validated."""
    return fleet_config(state)[host.name]


ROOT = Path(__file__).resolve().parent.parent


def select_hosts(inventory: Inventory, patterns: Iterable[str]) -> list[Host]:
    """Hosts matching --limit patterns (group names or host names), like pyinfra's --limit."""
    patterns = [p for pattern in patterns for p in pattern.split(",") if p]
    if not patterns:
        return list(inventory)
    selected = []
    for pattern in patterns:
        try:
            selected += inventory.get_group(pattern)
        except NoGroupError:
            selected += [host for host in inventory if host.name == pattern]
    return list(dict.fromkeys(selected))


def inventory_data(inventory_path: str, limit: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Effective data of the selected hosts of an inventory, in inventory order, loaded by
    pyinfra's own loader (group_data included) outside a deploy: for verify and the
    controller-side commands."""
    with ctx_state.use(State()):  # pyinfra's loader records the file it execs on a state
        inventory = make_inventory(inventory_path, cwd=str(ROOT))
    return {host.name: host.data.dict() for host in select_hosts(inventory, limit)}


def add_limit_option(parser: argparse.ArgumentParser) -> None:
    """``--limit HOST_OR_GROUP`` (repeatable, or a,b) for the controller-side commands."""
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="HOST_OR_GROUP",
        help="only these hosts or groups, like pyinfra's --limit (repeatable, or a,b)",
    )
