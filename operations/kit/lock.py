"""A per-host deploy lock: two deploys never change one host at the same time.

Two runs at once on one host collide (``Conflict. The container name "/vllm-main" is already
in use``, one temporary file uploaded by both, Docker restarted twice) and, with different
values, leave the fleet mixed. So a deploy takes a lock on each host before it plans any
change there (after preflight's read-only facts, before the package manager step) and holds
it until it disconnects from the host:

- the lock is ``flock`` on ``/run/gpufleet/deploy.lock``, held by a background process on
  the host that lives as long as the run's SSH connection (operations/kit/scripts/lock.sh). The
  connection closes at the end of the run, whatever ended it: success, a failed host,
  Ctrl-C, SIGTERM, a controller killed outright (its kernel closes the socket), a host the
  bounds gave up on (operations.kit.bounds closes its connection). The lock goes with it within
  a second, so a crashed run never leaves a lock that blocks: staleness is "the holder
  process is gone on the host", which the kernel itself tracks. (A controller that vanishes
  from the network leaves its connection half-open until sshd notices: its keepalive, or
  TCP's.) ``/run`` is emptied at boot.
- a second run waits for it up to ``deploy_lock_wait_s`` (one host's wait does not hold up
  the others' planning: pyinfra plans hosts in parallel), then fails that host alone with
  the holder's name: ``locked by ops@ctl-1 pid 1234 since 2026-12-01 12:03:04 UTC (pyinfra
  inventory/prod.py deploy.py)``. A run that got the lock after waiting says whom it waited
  for.
- it costs one command per host, the one that takes it; releasing costs none.

``--dry`` takes no lock (it changes nothing), nor does verify (it only reads). The owner line
names the controller's user and host, the process, its start and the command, without any
``--data`` value (a secret could be one); read back from a host it is shown as printable
text only (a host is not trusted to print anything else).
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
from pyinfra import host, logger
from pyinfra.api import FactBase
from pyinfra.connectors.fake import FakeConnector

from operations.config.model import FleetConfig
from operations.kit import scripts
from operations.kit.common import fail_host
from operations.kit.quoting import shell, shell_join

LOCK_DIR = "/run/gpufleet"
SCRIPT = scripts.render("lock")
MARK = "gpufleet-lock"
_STARTED = time.time()
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def fenced(script: str, directory: str = LOCK_DIR) -> str:
    """``script`` run as a fenced command: should the run's connection go while it runs (a
    controller killed, interrupted or given up on a hung host), the deploy lock's holder stops
    it before the lock is released (lock.sh), so that it never acts under the next run (a
    readiness wait that timed out later would roll back the next run's new server). It
    registers its process group and that process's start time (a reused number is not
    killed) in ``deploy.fenced``, removed when it ends."""
    path = shell(f"{directory}/deploy.fenced")
    register = (
        "pg=$(cut -d' ' -f5 /proc/$$/stat) && since=$(cut -d' ' -f22 /proc/\"$pg\"/stat) && "
        f'printf \'%s %s\\n\' "$pg" "$since" 2>/dev/null > {path}; '
        f"trap {shell(f'rm -f {path}')} EXIT"
    )
    return f"{register}\n{script}"


def printable(text: str, limit: int = 200) -> str:
    """One line of printable ASCII, at most ``limit`` characters (others become '?')."""
    text = _UNPRINTABLE.sub("?", " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Run:
    """The CLI run's command line and --dry, read once from click's context while config.py
    runs (in pyinfra's main greenlet): the hosts' planning greenlets have no click context."""

    command: str | None = None
    dry: bool = False


def remember_run() -> None:
    """Called from the project's config.py, inside pyinfra's CLI (see _Run)."""
    context = click.get_current_context(silent=True)
    params = context.params if context is not None else {}
    if "inventory" not in params:
        return
    words = ["pyinfra", str(params["inventory"]), *map(str, params.get("operations") or ())]
    for pattern in params.get("limit") or ():
        words += ["--limit", str(pattern)]
    _Run.command, _Run.dry = " ".join(words), bool(params.get("dry"))


def run_command_line() -> str:
    """The run's command as the owner line shows it: pyinfra, the inventory, the deploy
    files and the --limit patterns, never a --data value or another option's value."""
    return _Run.command or f"{Path(sys.argv[0]).name} (pyinfra API)"


def owner() -> str:
    """Who takes the lock: 'ops@ctl-1 pid 1234 since 2026-12-01 12:03:04 UTC (COMMAND)'."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        user = f"uid {os.getuid()}"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(_STARTED))
    where = f"{user}@{socket.gethostname()}"
    return printable(f"{where} pid {os.getpid()} since {since} ({run_command_line()})", 300)


@dataclass(frozen=True)
class Answer:
    """What the host's lock script said: ``status`` acquired, busy or error."""

    status: str
    detail: str = ""
    waited_s: int = 0


class DeployLock(FactBase):
    """Take the host's deploy lock (a fact: it runs while the deploy is planned, before any
    change is planned). Waits up to ``wait_s`` for another run's lock."""

    def command(self, directory: str, wait_s: int, holder: str) -> str:
        args = shell_join([MARK, directory, int(wait_s), holder], "deploy lock")
        return f"sh -c {shell(SCRIPT, 'deploy lock')} {args}"

    def process(self, output: list[str]) -> Answer:
        """The answer line; output without one: 'unreadable'. (No output at all or a failed
        command gives the fact's default, None.)"""
        return parse(output) or Answer("unreadable", printable(output[0] if output else ""))


def parse(lines: list[str]) -> Answer | None:
    """The script's answer line, or None when it printed none."""
    for line in lines:
        fields = line.split("\t")
        if fields[0] != MARK or len(fields) < 2:
            continue
        status = fields[1]
        if status == "acquired" and len(fields) >= 3 and fields[2].isdigit():
            held = printable(fields[3]) if len(fields) > 3 else ""
            return Answer("acquired", held, int(fields[2]))
        if status in ("busy", "error"):
            return Answer(status, printable("\t".join(fields[2:])))
    return None


def dry_run() -> bool:
    """Whether this is pyinfra's ``--dry`` (nothing will run: nothing to exclude)."""
    return _Run.dry


def take(config: FleetConfig) -> bool:
    """Take this host's deploy lock for the rest of the run; False (the host failed, the
    reason planned as its failing operation) when another run held it past
    ``deploy_lock_wait_s`` or the lock could not be taken."""
    if dry_run():
        return True
    wait = config.deploy.lock_wait_s
    answer = host.get_fact(
        DeployLock,
        directory=LOCK_DIR,
        wait_s=wait,
        holder=owner(),
        _timeout=wait + config.deploy.fact_timeout_s,
    )
    if answer is None and isinstance(host.connector, FakeConnector):
        return True  # @fake answers every unscripted command with nothing: no host to lock
    return _decide(answer, wait)


def _decide(answer: Answer | None, wait: int) -> bool:
    if answer is not None and answer.status == "acquired":
        if answer.waited_s:
            held = answer.detail or "another run"
            logger.warning(f"{host.print_prefix}deploy lock: waited {answer.waited_s}s for {held}")
        return True
    if answer is not None and answer.status == "busy":
        why = (
            f"deploy lock {LOCK_DIR}/deploy.lock: locked by {answer.detail}; waited {wait}s "
            "(deploy_lock_wait_s); nothing was changed on this host, run again when that "
            "run is done"
        )
    elif answer is not None and answer.status == "error":
        why = f"deploy lock {LOCK_DIR}/deploy.lock could not be taken: {answer.detail}"
    elif answer is not None:
        why = (
            f"deploy lock {LOCK_DIR}/deploy.lock: the lock script gave no answer "
            f"(it printed {answer.detail!r})"
        )
    else:
        why = f"deploy lock {LOCK_DIR}/deploy.lock: the lock script gave no answer"
    logger.error(f"{host.print_prefix}{why}")
    fail_host("Deploy lock", f"{host.name}: {why}")
    return False
