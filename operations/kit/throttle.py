"""A plain deploy never takes the whole fleet's vLLM servers down at once.

pyinfra runs each operation on every host at the same time, so a change that recreates the
servers (an image, an engine argument, a rotated API key) would stop them all together and
the fleet would serve nothing until the first came back: minutes with a real model load.
Here the part of a recreation that takes a serving server out of service (stop it, start the
new one, wait until it is ready) is a ``Throttled`` command: it first takes one of the run's
``vllm_max_unavailable`` slots for that instance, on the controller, and gives it back once the
new server passed the readiness gate (or the host rolled back, or failed). So at most that
many hosts are without that server at any moment; the others wait their turn, and say so.

Once one host's replacement failed, the hosts still waiting do not try it: they fail at once
with their server left as it was, as a rollout stops at a failed batch (a broken image would
otherwise be tried, and waited for, a slot at a time across the whole fleet). A host that
stopped answering (operations.kit.bounds: hung, or gone) fails alone and stops nobody: that is
the host's fault, not the change's; its slot is free again. Hosts whose
server is not serving (a first deploy, a crash-looping server) take no slot: nothing is lost.

``python -m operations.cli.rollout`` stays the tool for canaries and explicit batches; inside a
batch the limit applies to the batch's hosts.
"""

from __future__ import annotations

import math
from weakref import WeakKeyDictionary

from gevent.lock import BoundedSemaphore
from pyinfra import logger
from pyinfra.api import Host, State, StringCommand
from pyinfra.connectors.util import CommandOutput

from operations import run
from operations.kit import bounds
from operations.kit.quoting import shell

SETTING = "vllm_max_unavailable"
# Printed by a throttled script that ran to its end and failed (its server did not come up,
# or it rolled back): the change's failure, which holds the waiting hosts back. A command that
# failed without it (the connection dropped, the host was killed or hung) is the host's fault.
FAILED = "gpufleet: this host's replacement failed (above)"


def reporting(script: str) -> str:
    """``script`` in a subshell that prints FAILED when it fails (exit 1 either way)."""
    return f"(\n{script}\n) || {{ echo {shell(FAILED)} >&2; exit 1; }}"


def change_failed(output: CommandOutput) -> bool:
    """Whether the command's own script said it failed (see FAILED)."""
    return any(line.line == FAILED for line in output)


def slot_count(setting: str, hosts: int) -> int:
    """How many hosts may replace a serving server at once: the count, or the percentage of
    ``hosts`` rounded down, at least 1."""
    if setting.endswith("%"):
        return max(1, math.floor(hosts * int(setting[:-1]) / 100))
    return max(1, int(setting))


class Slots:
    """The slots of one instance's recreations in one run, and the first host that failed."""

    def __init__(self, size: int):
        self.size = size
        self.semaphore = BoundedSemaphore(size)
        self.failed: str | None = None


_RUNS: WeakKeyDictionary[State, dict[tuple[str, str], Slots]] = WeakKeyDictionary()


def slots(state: State, instance: str, setting: str) -> Slots:
    """The run's slots for ``instance`` among the hosts whose limit is ``setting``; a
    percentage counts the run's targeted hosts with that same setting."""
    groups = _RUNS.setdefault(state, {})
    if (instance, setting) not in groups:
        configs = run.fleet_config(state).values()
        sharing = sum(1 for config in configs if config.vllm.max_unavailable == setting) or 1
        groups[(instance, setting)] = Slots(slot_count(setting, sharing))
    return groups[(instance, setting)]


class Throttled(StringCommand):
    """A shell command that runs only while it holds one of the run's slots of ``instance``
    (see the module doc). Waiting for a slot happens on the controller; the command's own
    bound (``_timeout``) starts when it runs."""

    def __init__(self, script: str, instance: str, setting: str, **arguments):
        super().__init__(script, **arguments)
        self.instance, self.setting = instance, setting

    def execute(self, state: State, host: Host, connector_arguments):
        group = slots(state, self.instance, self.setting)
        if group.semaphore.locked():
            logger.info(
                f"{host.print_prefix}{self.instance}: waiting for a free slot "
                f"({SETTING}={self.setting}: {group.size} host(s) at a time)"
            )
        with group.semaphore:
            if group.failed:
                return False, self._held_back(host, group)
            status, output = super().execute(state, host, connector_arguments)
            if status is False and change_failed(output) and not bounds.stopped_answering(host):
                group.failed = group.failed or host.name
            return status, output

    def _held_back(self, host: Host, group: Slots) -> CommandOutput:
        why = (
            f"{self.instance}: not replaced: replacing it failed on {group.failed} while this "
            f"host waited its turn ({SETTING}); the server here was left serving as it was"
        )
        logger.error(f"{host.print_prefix}{why}")
        return CommandOutput([])
