"""Roll a change (a new vLLM image or model, a driver update) through the fleet in batches.

    python -m operations.cli.rollout inventory/prod.py                    # one host at a time
    python -m operations.cli.rollout inventory/prod.py --batch 2 --limit gpu
    python -m operations.cli.rollout inventory/prod.py -- --data vllm_image=vllm/vllm-openai:v0.11.1

Why batches: pyinfra runs each operation on every targeted host before the next operation
(``--parallel`` only caps how many hosts run it at once). A plain run bounds how many vLLM
servers it replaces at once (``vllm_max_unavailable``, operations.kit.throttle), but it still
applies every other layer's change to every host, and takes no canary first. ``--serial``
goes host by host but has no batch size, and stops at a failure only with
``--fail-percent``. This command instead runs ``pyinfra -y INVENTORY deploy.py`` on N hosts at
a time, in inventory order (or the order of the ``--limit`` patterns: a canary group first),
and starts a batch only when the one before succeeded. The deploy waits for every vLLM server
to be ready and fails the host otherwise, so pyinfra's exit code is the batch's health gate.

On a failing batch the rollout stops at once and lists the hosts it never touched: they still
serve the previous version. Interrupted (Ctrl-C, SIGTERM), it passes the signal on to the
batch's pyinfra run once (each run has its own process group, so a Ctrl-C reaches it through
the rollout alone), waits for that run to disconnect, names the batch's hosts and those it
never touched, and exits 130 (143 for SIGTERM).

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
from pathlib import Path
from typing import Any

from pyinfra.api.exceptions import PyinfraError
from pyinfra_cli.util import parse_cli_arg

from operations.guard import check_data_args
from operations.inventory import ROOT, add_limit_option, select

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


def validate(
    inventory: str, limit: Sequence[str], extra: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[str]:
    """The selected hosts, in order, once every one's config is valid (raises ConfigError,
    or InventoryError when the inventory cannot be read or no host is selected)."""
    selection = select(inventory, limit, exclude, data_overrides(extra))
    for line in selection.warnings:
        _say(f"warning: {line}", error=True)
    selection.configs()
    return list(selection.hosts)


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


def _stopped(number: int, count: int, batch: list[str], code: int, untouched: list[str]) -> None:
    """Say which batch failed and which hosts the rollout never reached."""
    _say(
        f"batch {number}/{count} ({', '.join(batch)}) failed: pyinfra exited {code}; "
        "its output above names the failing host(s), whose servers may be down",
        error=True,
    )
    if untouched:
        _say(f"not touched, still on the previous version: {', '.join(untouched)}", error=True)
    else:
        _say("no host is left untouched: this was the last batch", error=True)


def roll(
    inventory: str,
    hosts: Sequence[str],
    batch: int,
    extra: Sequence[str] = (),
    run: Runner = call,
) -> int:
    """Deploy to ``hosts`` ``batch`` at a time, each batch only after the previous succeeded;
    0 when every batch succeeded, 1 at the first failing one (later batches never run), 130
    or 143 when interrupted (the batch's run ended by SIGINT or SIGTERM, or exiting so)."""
    started = time.monotonic()
    groups = batches(hosts, batch)
    for number, group in enumerate(groups, start=1):
        _say(f"batch {number}/{len(groups)}: {', '.join(group)}")
        code = _run_batch(run, deploy_command(inventory, group, extra))
        code = 128 - code if code < 0 else code  # killed by a signal: as the shell says it
        untouched = [h for g in groups[number:] for h in g]
        if code in INTERRUPTED:
            _interrupted(number, len(groups), group, code, untouched)
            return code
        if code != 0:
            _stopped(number, len(groups), group, code, untouched)
            return 1
    seconds = time.monotonic() - started
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m operations.cli.rollout",
        description="Deploy to the fleet N hosts at a time, stopping at the first failed batch.",
        epilog="Arguments after -- are passed to every pyinfra run (e.g. -- --data key=value).",
    )
    parser.add_argument("inventory", help="pyinfra inventory, e.g. inventory/prod.py")
    parser.add_argument(
        "--batch", type=_positive, default=1, metavar="N", help="hosts per batch (default: 1)"
    )
    add_limit_option(parser)
    return parser


def _split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our arguments and the pyinfra ones after the first ``--``."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None, run: Runner = call) -> int:
    """Validate, then roll; 0 done, 1 a batch failed, 2 refused before anything ran, 130 or
    143 interrupted."""
    signal.signal(signal.SIGTERM, _terminated)
    own, extra = _split_extra(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    args = parser.parse_args(own)
    if any(arg.split("=", 1)[0] in _RESERVED for arg in extra):
        parser.error("--limit and --exclude go before --: the rollout sets each batch's limit")
    try:
        hosts = validate(args.inventory, args.limit, extra, args.exclude)
    except PyinfraError as error:  # ConfigError, InventoryError: one line per problem
        _say(str(error), error=True)
        return 2
    inventory = str(Path(args.inventory).resolve()) if Path(args.inventory).exists() else None
    return roll(inventory or args.inventory, hosts, args.batch, extra, run)


if __name__ == "__main__":
    sys.exit(main())
