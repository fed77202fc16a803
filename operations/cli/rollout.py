"""Roll a change (a new vLLM image or model, a driver update) through the fleet in batches.

    python -m operations.cli.rollout inventory/prod.py -- --data vllm_image=vllm/vllm-openai:v0.11.1
    python -m operations.cli.rollout inventory/prod.py --canary 10% --batch 2 --max-failed-hosts 1
    python -m operations.cli.rollout inventory/prod.py --targets-file /etc/lb/vllm.json -- ...

Why batches: pyinfra runs each operation on every targeted host before the next operation
(``--parallel`` only caps how many hosts run it at once). A plain run bounds how many vLLM
servers it replaces at once (``vllm_max_unavailable``, operations.kit.throttle), but it still
applies every other layer's change to every host, and takes no canary first. ``--serial``
goes host by host but has no batch size, and its ``--fail-percent`` misses ``server.shell``
failures (pyinfra#1195). This command instead runs ``pyinfra -y INVENTORY deploy.py`` per
batch: the canary (``--canary``, default 1 host) alone, then ``--batch`` hosts at a time
(default: ``vllm_max_unavailable``), in inventory order (or the order of the ``--limit``
patterns), and decides from each run's exit code.

Around each batch's run (operations.rollout): its hosts leave the vLLM targets (the
controller's ``--targets-file`` and the monitoring hosts' file_sd), their servers are drained
(``vllm:num_requests_running``/``_waiting`` 0, bounded by ``--drain-timeout``), and they go
back only once every server answers ``/health`` 200 (``--ready-timeout``). A failed batch is
deployed again without the ``--data`` overrides (the inventory's own, previous spec) and put
back once ready; the rollout then stops at a failed canary, or when more hosts failed than
``--max-failed-hosts``, listing the hosts it never touched: they still serve the previous
version. Interrupted (Ctrl-C, SIGTERM), it passes the signal on to the batch's pyinfra run
once (each run has its own process group, so a Ctrl-C reaches it through the rollout alone),
waits for that run to disconnect, names the batch's hosts and those it never touched, and
exits 130 (143 for SIGTERM).

Before any batch, the config of every selected host is validated (with the ``--data`` given
after ``--``), so a bad value stops the rollout with nothing run, as does an inventory that
cannot be read or a ``--limit``/``--exclude`` that selects no host. Arguments after ``--`` go
to every pyinfra run; ``--limit``/``--exclude`` are not allowed there (the batches set the
limit: give them before ``--``). pyinfra runs from the repository root, as deploy.py needs.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra.api.exceptions import PyinfraError
from pyinfra_cli.util import parse_cli_arg

from operations.cli.targets import gateway_cert_files
from operations.guard import check_data_args
from operations.inventory import ROOT, add_limit_option, select
from operations.kit.throttle import slot_count
from operations.rollout.membership import Membership
from operations.rollout.serving import Probe, http_probe, trusting, wait_drained, wait_ready

Runner = Callable[..., int]
"""Runs a command (a list of arguments) with ``cwd=``; returns its exit code."""

_RESERVED = ("--limit", "--exclude")


def batches(hosts: Sequence[str], size: int) -> list[list[str]]:
    """Consecutive batches of at most ``size`` hosts, in the given order."""
    return [list(hosts[start : start + size]) for start in range(0, len(hosts), size)]


def deploy_command(inventory: str, hosts: Sequence[str], extra: Sequence[str]) -> list[str]:
    """The pyinfra run of one batch. One ``--limit`` per host: pyinfra 3 does not split
    ``h1,h2``, and a limit matching no host would deploy nothing and still exit 0."""
    limits = [arg for host in hosts for arg in ("--limit", host)]
    return [sys.executable, "-m", "pyinfra", "-y", inventory, "deploy.py", *limits, *extra]


def data_overrides(extra: Sequence[str]) -> dict[str, Any]:
    """``--data key=value`` of the extra pyinfra arguments, parsed as pyinfra parses them:
    they take precedence over inventory and group data in the deploy, so also in validation."""
    values = []
    for index, arg in enumerate(extra):
        if arg == "--data" and index + 1 < len(extra):
            values.append(extra[index + 1])
        elif arg.startswith("--data="):
            values.append(arg.removeprefix("--data="))
    check_data_args(values)  # pyinfra would stop each batch with a traceback
    pairs = [value.split("=", 1) for value in values]
    return {key: parse_cli_arg(value) for key, value in pairs}


def validated(
    inventory: str, limit: Sequence[str], extra: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Any:
    """The selection (operations.inventory.Selection) once every selected host's config,
    with the --data overrides, is valid (raises ConfigError, or InventoryError when the
    inventory cannot be read or no host is selected)."""
    selection = select(inventory, limit, exclude, data_overrides(extra))
    for line in selection.warnings:
        _say(f"warning: {line}", error=True)
    selection.configs()
    return selection


def validate(
    inventory: str, limit: Sequence[str], extra: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[str]:
    """The selected hosts, in order, once every one's config is valid (see validated)."""
    return list(validated(inventory, limit, extra, exclude).hosts)


def _say(message: str, error: bool = False) -> None:
    """A line of our own between pyinfra's output, flushed before pyinfra writes again."""
    print(f"rollout: {message}", file=sys.stderr if error else sys.stdout, flush=True)


INTERRUPTED = {128 + signal.SIGINT: "SIGINT", 128 + signal.SIGTERM: "SIGTERM"}
STOP_WAIT_S = 60  # how long an interrupted batch gets to disconnect before it is killed


class Terminated(BaseException):
    """SIGTERM, raised in the rollout like KeyboardInterrupt is for SIGINT."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def call(command: list[str], cwd: Path) -> int:
    """Run one batch; on Ctrl-C or SIGTERM pass that signal on to it, wait for it to end
    (its hosts disconnect, their locks go) and raise again. Its own process group: a Ctrl-C
    at the terminal reaches the batch once, through here."""
    process = subprocess.Popen(command, cwd=cwd, process_group=0)
    try:
        return process.wait()
    except (KeyboardInterrupt, Terminated) as stop:
        passed = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
        process.send_signal(passed)
        try:
            process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


def _run_batch(run: Runner, command: list[str]) -> int:
    """One batch's exit code; an interrupt ends it with 130 (Ctrl-C) or 143 (SIGTERM)."""
    try:
        return run(command, cwd=ROOT)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Terminated:
        return 128 + signal.SIGTERM


def _interrupted(number: int, count: int, batch: list[str], code: int, untouched: list[str]):
    """Say which batch an interrupt stopped and which hosts the rollout never reached."""
    _say(
        f"interrupted ({INTERRUPTED[code]}) during batch {number}/{count} "
        f"({', '.join(batch)}): its hosts may be part-way through the change; "
        "run the rollout again to finish",
        error=True,
    )
    if untouched:
        _say(f"not touched, still on the previous version: {', '.join(untouched)}", error=True)


def _stopped(
    number: int, count: int, batch: list[str], code: int, untouched: list[str], stop: bool = True
) -> None:
    """Say which batch failed (and, with ``stop``, which hosts the rollout never reached)."""
    why = f"pyinfra exited {code}" if code else "its servers did not answer ready"
    _say(
        f"batch {number}/{count} ({', '.join(batch)}) failed: {why}; "
        "its output above names the failing host(s), whose servers may be down",
        error=True,
    )
    if stop:
        _untouched(untouched)


def _untouched(untouched: list[str]) -> None:
    """Say which hosts the rollout never reached (or that none is left)."""
    if untouched:
        _say(f"not touched, still on the previous version: {', '.join(untouched)}", error=True)
    else:
        _say("no host is left untouched: this was the last batch", error=True)


@dataclass
class Plan:
    """How a rollout goes beyond plain batches: a canary batch first, how many hosts may
    fail (in batches rolled back) before it stops, and the serving side (``membership``:
    targets taken out and put back, servers drained and waited for; None: none of it, as
    for a fleet without vLLM)."""

    canary: int = 0
    max_failed: int = 0
    membership: Membership | None = None
    drain_timeout: float = 120.0
    drain_settle: float = 2.0
    ready_timeout: float = 120.0
    probe: Probe = http_probe
    sleep: Callable[[float], None] = time.sleep


def plan_batches(hosts: Sequence[str], batch: int, canary: int = 0) -> list[list[str]]:
    """The canary's hosts (the first ``canary``) as a batch of their own, then the rest
    ``batch`` at a time, in the given order."""
    head = [list(hosts[:canary])] if canary else []
    return head + batches(hosts[canary:], batch)


def previous_extra(extra: Sequence[str]) -> list[str]:
    """The extra pyinfra arguments without their ``--data`` overrides: the deploy of the
    inventory's own spec, to which a failed batch goes back."""
    kept, skip = [], False
    for arg in extra:
        if skip:
            skip = False
        elif arg == "--data":
            skip = True
        elif not arg.startswith("--data="):
            kept.append(arg)
    return kept


class Batch:
    """One batch's run: its hosts taken out of the targets and drained, the deploy, and its
    hosts put back once ready (or rolled back to the previous spec when it failed)."""

    def __init__(self, number: int, count: int, hosts: list[str], plan: Plan, run: Runner):
        self.number, self.count, self.hosts = number, count, hosts
        self.plan, self.run = plan, run
        served = plan.membership.targets(hosts) if plan.membership else {}
        self.servers = served

    def say(self, message: str, error: bool = False) -> None:
        """A progress line: "batch i of n: host a, b — ..."."""
        _say(f"batch {self.number} of {self.count}: {', '.join(self.hosts)} — {message}", error)

    def drain(self) -> None:
        """Take the batch out of the targets, then wait (bounded) until its servers run and
        queue nothing; a drain that times out is said, and the batch goes on."""
        membership = self.plan.membership
        if membership is None or not self.servers:
            return
        for problem in membership.take_out(self.hosts):
            self.say(f"warning: {problem}", error=True)
        self.say(f"out of the targets ({membership.where()})")
        self.plan.sleep(self.plan.drain_settle)  # readers re-read the file: no new request
        plan = self.plan
        left = wait_drained(
            self.servers, plan.drain_timeout, self.say, plan.probe, sleep=plan.sleep
        )
        for host, why in left.items():
            self.say(
                f"warning: {host} still busy after {self.plan.drain_timeout:g}s ({why}): "
                "going on, its requests may be cut",
                error=True,
            )

    def deploy(self, inventory: str, extra: Sequence[str]) -> int:
        """The batch's pyinfra run; its exit code as the shell says it (128+N on signal N)."""
        code = _run_batch(self.run, deploy_command(inventory, self.hosts, extra))
        return 128 - code if code < 0 else code

    def restore(self) -> bool:
        """Put the batch back in the targets once every server answers ready; False (they
        stay out, said) when one does not within the ready timeout."""
        membership = self.plan.membership
        if membership is None or not self.servers:
            return True
        plan = self.plan
        left = wait_ready(self.servers, plan.ready_timeout, self.say, plan.probe, sleep=plan.sleep)
        if left:
            self.say(f"left out of the targets, not ready: {', '.join(left)}", error=True)
            return False
        for problem in membership.put_back(self.hosts):
            self.say(f"warning: {problem}", error=True)
        self.say("back in the targets")
        return True

    def roll_back(self, inventory: str, extra: Sequence[str]) -> int:
        """Deploy the batch's hosts on the inventory's own spec again (no --data override)
        and put them back once ready; the rollback run's exit code."""
        self.say("rolling back to the previous spec (the inventory's, without --data)", True)
        code = self.deploy(inventory, previous_extra(extra))
        if code == 0 and self.restore():
            self.say("rolled back: on the previous spec and serving again", error=True)
        else:
            self.say(f"rollback failed (pyinfra exited {code}): check these hosts", error=True)
        return code


def roll(
    inventory: str,
    hosts: Sequence[str],
    batch: int,
    extra: Sequence[str] = (),
    run: Runner = call,
    plan: Plan | None = None,
) -> int:
    """Deploy to ``hosts``: the canary batch, then ``batch`` at a time, each batch drained
    before and put back after (``plan``); 0 when every batch succeeded, 1 when the rollout
    stopped (the canary failed, or more hosts failed than ``plan.max_failed``: a failed
    batch is rolled back when ``extra`` holds a --data change, later batches never run),
    130 or 143 when interrupted (the batch's run ended by SIGINT or SIGTERM, or exiting so)."""
    plan = plan or Plan()
    started = time.monotonic()
    groups = plan_batches(hosts, batch, plan.canary)
    failed: list[str] = []
    for number, group in enumerate(groups, start=1):
        one = Batch(number, len(groups), group, plan, run)
        _say(f"batch {number}/{len(groups)}: {', '.join(group)}")
        took = time.monotonic()
        one.drain()
        code = one.deploy(inventory, extra)
        untouched = [h for g in groups[number:] for h in g]
        if code in INTERRUPTED:
            _interrupted(number, len(groups), group, code, untouched)
            return code
        if code == 0 and one.restore():
            one.say(f"done in {time.monotonic() - took:.0f}s")
            continue
        failed += group
        _stopped(number, len(groups), group, code, untouched, stop=False)
        if previous_extra(extra) != list(extra):
            one.roll_back(inventory, extra)
        else:
            one.say("no --data change given: nothing to roll back to", error=True)
        canary = plan.canary and number == 1
        if canary or len(failed) > plan.max_failed:
            why = "the canary failed" if canary else f"{len(failed)} host(s) failed"
            _say(f"stopping: {why} (at most {plan.max_failed} may)", error=True)
            _untouched(untouched)
            return 1
    seconds = time.monotonic() - started
    if failed:
        _say(f"done with failures: rolled back {', '.join(failed)}", error=True)
        return 1
    _say(f"done: {len(hosts)} host(s) in {len(groups)} batch(es) in {seconds:.0f}s")
    return 0


def _positive(text: str) -> int:
    """argparse type of --batch: a whole number of hosts, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _count_or_percent(text: str) -> str:
    """argparse type of --canary and --max-failed-hosts: N hosts or P% of those selected."""
    digits = text.removesuffix("%")
    if not digits.isdigit() or (text.endswith("%") and int(digits) > 100):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hosts N or a percent P%")
    return text


def hosts_of(setting: str, selected: int, at_least_one: bool) -> int:
    """``setting`` (N or P%) as a number of the ``selected`` hosts: a percent rounds down
    (but a non-zero one gives 1 when ``at_least_one``), and never more than are selected."""
    if setting.endswith("%"):
        percent = int(setting[:-1])
        count = selected * percent // 100
        count = max(count, 1) if at_least_one and percent else count
    else:
        count = int(setting)
    return min(count, selected)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m operations.cli.rollout",
        description="Deploy to the fleet in drained, readiness-gated batches, a canary first; "
        "a failed batch goes back to the previous spec.",
        epilog="Arguments after -- are passed to every pyinfra run (e.g. -- --data key=value).",
    )
    parser.add_argument("inventory", help="pyinfra inventory, e.g. inventory/prod.py")
    parser.add_argument(
        "--batch", type=_positive, metavar="N",
        help="hosts per batch after the canary (default: vllm_max_unavailable of the first host)",
    )  # fmt: skip
    parser.add_argument(
        "--canary", type=_count_or_percent, default="1", metavar="N|P%",
        help="hosts in the first batch, alone (default: 1; 0: no canary)",
    )  # fmt: skip
    parser.add_argument(
        "--max-failed-hosts", type=_count_or_percent, default="0", metavar="N|P%",
        help="hosts (of failed, rolled-back batches) after the canary that may fail before the "
        "rollout stops (default: 0, stop at the first)",
    )  # fmt: skip
    parser.add_argument(
        "--targets-file", type=Path, metavar="PATH",
        help="a file_sd targets file on the controller (a load balancer's, a Prometheus of "
        "your own) to take drained hosts out of; the monitoring hosts' is always kept",
    )  # fmt: skip
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, metavar="S",
        help="seconds to wait for a host's servers to finish their requests (default: 120)",
    )  # fmt: skip
    parser.add_argument(
        "--ready-timeout", type=float, default=120.0, metavar="S",
        help="seconds for a deployed host's servers to answer /health (default: 120)",
    )  # fmt: skip
    add_limit_option(parser)
    return parser


def _split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our arguments and the pyinfra ones after the first ``--``."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def _fleet(inventory: str, selected: Any) -> dict[str, tuple[Any, Any]]:
    """Data and config of every host of the inventory (the targets list the whole fleet);
    the selected hosts alone when another host's config does not load."""
    try:
        whole = select(inventory)
        configs = whole.configs()
    except PyinfraError as error:
        _say(f"warning: targets of the selected hosts only: {error}", error=True)
        whole, configs = selected, selected.configs()
    return {name: (data, configs[name]) for name, data in whole.hosts.items()}


def _plan(args: argparse.Namespace, inventory: str, selection: Any, run: Runner,
          probe: Probe, sleep: Callable[[float], None]) -> tuple[int, Plan]:  # fmt: skip
    """The batch size and the Plan the command line and the config give."""
    configs = selection.configs()
    count = len(selection.hosts)
    first = configs[next(iter(selection.hosts))]
    batch = args.batch or slot_count(str(first.vllm.max_unavailable), count)
    fleet = _fleet(inventory, selection)
    membership = Membership(fleet, args.targets_file, inventory, run)
    if probe is http_probe:  # servers behind a TLS gateway verify against its certificate
        probe = trusting(gateway_cert_files(fleet))
    plan = Plan(
        canary=hosts_of(args.canary, count, at_least_one=True),
        max_failed=hosts_of(args.max_failed_hosts, count, at_least_one=False),
        membership=membership,
        drain_timeout=args.drain_timeout,
        ready_timeout=args.ready_timeout,
        probe=probe,
        sleep=sleep,
    )
    return batch, plan


def main(
    argv: Sequence[str] | None = None,
    run: Runner = call,
    probe: Probe = http_probe,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Validate, then roll; 0 done, 1 a batch failed, 2 refused before anything ran, 130 or
    143 interrupted."""
    signal.signal(signal.SIGTERM, _terminated)
    own, extra = _split_extra(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    args = parser.parse_args(own)
    if any(arg.split("=", 1)[0] in _RESERVED for arg in extra):
        parser.error("--limit and --exclude go before --: the rollout sets each batch's limit")
    path = Path(args.inventory)
    inventory = str(path.resolve()) if path.exists() else args.inventory
    try:
        selection = validated(args.inventory, args.limit, extra, args.exclude)
        batch, plan = _plan(args, inventory, selection, run, probe, sleep)
    except PyinfraError as error:  # ConfigError, InventoryError: one line per problem
        _say(str(error), error=True)
        return 2
    return roll(inventory, list(selection.hosts), batch, extra, run, plan)


if __name__ == "__main__":
    sys.exit(main())
