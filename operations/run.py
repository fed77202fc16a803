"""Deploy-time access to the validated config of the hosts a run targets.

pyinfra runs ``deploy.py`` once per host, in parallel. The first run to ask validates every
targeted host (``--limit`` honoured) in one go, before it returns, so one bad value anywhere
stops the whole run before any fact is gathered or any operation is planned on any host.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

from pyinfra import logger
from pyinfra.api import Host, State
from pyinfra.api.state import BaseStateCallback
from pyinfra.context import ContextObject, ctx_state

from operations import guard
from operations.config.load import ConfigError, load_fleet
from operations.config.model import FleetConfig
from operations.guard import cli_error, host_sources

_VALIDATED: WeakKeyDictionary[State, dict[str, FleetConfig] | ConfigError] = WeakKeyDictionary()


def _run_state(state: State) -> State:
    """The run's own State. deploy.py's `state` is pyinfra's context proxy: one object for
    every run, hashing as the current State; per-run entries key on the State itself, so
    they die with their run."""
    return ctx_state.get() if isinstance(state, ContextObject) else state


def fleet_config(state: State) -> dict[str, FleetConfig]:
    """Config of every targeted host, validated once per run (raises ConfigError, each
    problem naming the file its value came from, printed by pyinfra's CLI as one message).
    A refusal is kept too: every host's deploy.py asks, and 200 hosts would otherwise
    validate the fleet 200 times."""
    state = _run_state(state)

    def validate() -> dict[str, FleetConfig]:
        targeted = [h for h in state.inventory if state.is_host_in_limit(h)]
        early = guard.VALIDATED.get(state.inventory, {})
        if all(h.name in early for h in targeted):  # the CLI guard did it before connecting
            return {h.name: early[h.name] for h in targeted}
        sources = {h.name: host_sources(h) for h in targeted}
        return load_fleet(((h.name, h.data.dict()) for h in targeted), sources)

    return _once_per_run(_VALIDATED, state, validate)


def _once_per_run(memo: WeakKeyDictionary, state: State, build: Callable[[], Any]) -> Any:
    """``build()``'s result for this run, built on the first ask; a ConfigError it raises is
    kept as well (as the CLI prints it) and raised again at every ask."""
    if state not in memo:
        try:
            memo[state] = build()
        except ConfigError as error:
            memo[state] = cli_error(error)
    found = memo[state]
    if isinstance(found, ConfigError):
        raise found
    return found


class FleetSummary(BaseStateCallback):
    """Ends a run that executed operations with one line naming the hosts that failed
    (connection or operation): pyinfra's results table counts hosts per operation but names
    none. A run that stopped early (pyinfra aborted it) says so instead of claiming success;
    a re-run converges the hosts."""

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


# An interrupted run exits 128 + the signal's number, the shell's convention (130 for Ctrl-C,
# 143 for SIGTERM): scripts chaining on the deploy stop. pyinfra's own handler exits 0.
EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_host_greenlets() -> None:
    """Kill the run's per-host greenlets (planning, facts, operations) without waiting.

    pyinfra's disconnect on the way out spawns into the same bounded pool; with every slot
    held by a host still planning or running a command it would wait for them all (a minute
    and more), so the signal would not end the run. GreenletExit is not an Exception, so
    pyinfra's per-host wrappers let it pass and the greenlets die quietly."""
    if not ctx_state.isset():
        return
    state = ctx_state.get()
    for pool in (getattr(state, "pool", None), getattr(state, "fact_pool", None)):
        if pool is not None:
            pool.kill(block=False)


def _interrupted(signum: int, frame: object) -> None:
    """Say so and end the run with 128 + signum. SystemExit reaches the main greenlet from
    whichever one runs (gevent passes it on), so pyinfra's CLI disconnects every host on its
    way out (the run's host locks go with the connections) and the summary says the run
    stopped before its last operation."""
    name = signal.Signals(signum).name
    print(f"--> Interrupted by {name}: the run stopped early", file=sys.stderr, flush=True)
    if not _EXIT_CODE:  # whatever pyinfra exits with after this, the run exits 128 + signum
        atexit.register(_exit_interrupted)
    _EXIT_CODE.append(128 + signum)
    _stop_host_greenlets()
    raise SystemExit(128 + signum)


_EXIT_CODE: list[int] = []


def _exit_interrupted() -> None:
    """At interpreter exit after a signal: exit 128 + signum. The SystemExit raised in the
    handler can end in a greenlet that pyinfra's CLI then outlives (it went on to the next
    operation and exited 1 when the signal came mid-operation, under load)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_CODE[0])


def exit_non_zero_on_signals() -> None:
    """Make SIGINT and SIGTERM end a pyinfra run with 130 and 143 instead of 0 (SIGINT) or
    without disconnecting (SIGTERM). Called from the project's config.py, which pyinfra's CLI
    execs after its main() installed its handler (``Exiting upon user request!``, exit 0)."""
    for signum in EXIT_SIGNALS:
        signal.signal(signum, _interrupted)


_FLEETS: WeakKeyDictionary[State, dict[str, tuple[dict, FleetConfig]] | ConfigError] = (
    WeakKeyDictionary()
)


def inventory_fleet(state: State) -> dict[str, tuple[dict, FleetConfig]]:
    """{name: (data, config)} of every host of the inventory, targeted by this run or not
    (what the monitoring group's Prometheus scrapes is the whole fleet, whatever --limit
    says), validated once per run (raises ConfigError as fleet_config does)."""
    state = _run_state(state)

    def validate() -> dict[str, tuple[dict, FleetConfig]]:
        hosts = [(h.name, h.data.dict()) for h in state.inventory]
        configs = load_fleet(hosts, {h.name: host_sources(h) for h in state.inventory})
        return {name: (data, configs[name]) for name, data in hosts}

    return _once_per_run(_FLEETS, state, validate)


def host_config(state: State, host: Host) -> FleetConfig:
    """Config of one host, after the whole run's hosts were validated."""
    return fleet_config(state)[host.name]
