"""Deploy-time access to the validated config of the hosts a run targets.

pyinfra runs ``deploy.py`` once per host, in parallel. The first run to ask validates every
targeted host (``--limit`` honoured) in one go, before it returns, so one bad value anywhere
stops the whole run before any fact is gathered or any operation is planned on any host.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from pyinfra.api import Host, State
from pyinfra.context import ContextObject, ctx_state

from operations.config import FleetConfig
from operations.settings import load_fleet

_VALIDATED: WeakKeyDictionary[State, dict[str, FleetConfig]] = WeakKeyDictionary()


def fleet_config(state: State) -> dict[str, FleetConfig]:
    """Config of every targeted host, validated once per run (raises ConfigError)."""
    if isinstance(state, ContextObject):
        # deploy.py's `state` is pyinfra's context proxy: one object for every run, hashing
        # as the current State. Key on the State itself, so an entry dies with its run.
        state = ctx_state.get()
    if state not in _VALIDATED:
        targeted = [h for h in state.inventory if state.is_host_in_limit(h)]
        _VALIDATED[state] = load_fleet((h.name, h.data.dict()) for h in targeted)
    return _VALIDATED[state]


def host_config(state: State, host: Host) -> FleetConfig:
    """Config of one host, after the whole run's hosts were validated."""
    return fleet_config(state)[host.name]
