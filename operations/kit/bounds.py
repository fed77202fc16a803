"""How long a run waits on a host: one home for every bound, so a host that stops answering
fails alone, within a bound, while the others go on.

A host can stop answering rather than refuse: a frozen VM, a network path that drops packets
(``docker pause`` of a lab host), or a daemon that never returns (a frozen dockerd makes every
``docker`` command hang). The kernel of a paused host still ACKs TCP, so neither a socket
timeout nor paramiko's keepalive (it sends, it never waits for a reply) notices. pyinfra's
``_timeout`` bounds only the reading of a command's output: opening the channel and starting
the command wait without a bound (paramiko's ``open_session`` waits an hour, ``exec_command``
forever). So ``install(state, host, config)`` (deploy.py, once per host) wraps the host's connector:

- every command and file transfer runs under a wall-clock bound chosen by what it does
  (``timeout_for``): a fact read is short, a package install or an image transfer long; the
  layers give the waits with a deadline of their own theirs as ``_timeout``: the vLLM
  readiness wait ``vllm_ready_timeout_s`` + margin (``readiness_s``), a daemon.json apply
  twice ``docker_restart_timeout_s`` + margin (``restart_s``: a restart and its rollback);
- while a command runs, a keepalive that needs a reply (OpenSSH's ``ServerAliveInterval``:
  ``keepalive@openssh.com``, want-reply) goes every ``deploy_keepalive_interval_s``; no reply
  for ``deploy_keepalive_count`` of them and the host stopped answering;
- a host that stopped answering is logged once with the reason, its connection is closed (so
  nothing waits on it: the readers end, the remote command gets a hang-up), and every later
  command on it fails at once; a fact that could not be read stops that host's planning
  (``HostStopped``, caught in deploy.py) or its operation (at execution), never the run;
- a connection lost mid-command (paramiko's EOFError, which pyinfra does not handle:
  pyinfra-dev/pyinfra#1220) fails that command, not the whole run.

Connecting is bounded by pyinfra itself: ``CONNECT_TIMEOUT`` (10 s) for TCP, paramiko's banner
(15 s) and auth (30 s) timeouts. The verify suite reads the same settings (tests/verify/fleet).

The bounds are settings of the config model (``deploy_*_timeout_s``, ``deploy_keepalive_*``).
"""

from __future__ import annotations

import re
from typing import Any
from weakref import WeakKeyDictionary

import gevent
from gevent import GreenletExit
from paramiko import SSHException
from pyinfra import logger
from pyinfra.api import Host, State
from pyinfra.connectors.util import CommandOutput, OutputLine

from operations.config.model import FleetConfig

GRACE_S = 2  # the hard bound is pyinfra's own _timeout (it bounds reading output) plus this

# Commands that install or fetch, by their text (pyinfra's apt/dnf/docker operations build
# them): they get deploy_install_timeout_s. The waits with a deadline of their own (readiness,
# Docker restart) are given theirs by the layer that runs them (``_timeout``).
_INSTALL = re.compile(
    r"\b(?:apt-get|apt|dnf|yum|dpkg|rpm|dkms|curl|wget)\b|\bdocker\s+(?:pull|load)\b"
)


class HostStopped(Exception):
    """This host failed while its deploy was planned (a fact could not be read): stop
    planning it. Raised by the host's get_fact, caught by deploy.py."""


def readiness_s(config: FleetConfig) -> int:
    """Bound of a vLLM readiness wait: its own deadline plus the margin."""
    return config.vllm.ready_timeout_s + config.deploy.timeout_margin_s


def restart_s(config: FleetConfig) -> int:
    """Bound of a daemon.json apply: a Docker restart and a rollback's restart, plus margin."""
    return 2 * config.docker.restart_timeout_s + config.deploy.timeout_margin_s


def keepalive_s(config: FleetConfig) -> tuple[int, int]:
    """(interval, count) of the reply-wanted keepalive."""
    return config.deploy.keepalive_interval_s, config.deploy.keepalive_count


def timeout_for(
    command: str,
    config: FleetConfig,
    reading_fact: bool,
    explicit: int | None = None,
    transfer: bool = False,
) -> tuple[int, str]:
    """(seconds, the setting behind them) for one command (or, ``transfer``, one file upload
    or download: an image archive can take long) of a host with ``config``."""
    if explicit:
        return int(explicit), "the operation's _timeout"
    if reading_fact and not transfer:
        return config.deploy.fact_timeout_s, "deploy_fact_timeout_s"
    if transfer or _INSTALL.search(command):
        return config.deploy.install_timeout_s, "deploy_install_timeout_s"
    return config.deploy.command_timeout_s, "deploy_command_timeout_s"


def _head(command: Any) -> str:
    """The start of a command, for a message (masked: no secret in it)."""
    text = command.get_masked_value() if hasattr(command, "get_masked_value") else str(command)
    line = " ".join(text.split())
    return line if len(line) <= 60 else line[:57] + "..."


class Watch:
    """The bounds of one host's connection: its commands, its keepalive, why it stopped."""

    def __init__(self, state: State, host: Host, config: FleetConfig):
        self.state, self.host, self.config = state, host, config
        self.stopped: str | None = None  # why the host stopped answering
        self.in_flight = 0
        self.reading_fact = 0
        self.keepalive: gevent.Greenlet | None = None

    def stop(self, reason: str) -> None:
        """Record that the host stopped answering (once), and close its connection."""
        if self.stopped is None:
            self.stopped = reason
            logger.error(
                f"{self.host.print_prefix}stopped answering: {reason}; "
                "this host fails, the others go on"
            )
        client = getattr(self.host.connector, "client", None)
        if client is not None:
            client.close()  # the readers end, the remote command gets a hang-up

    def failure(self) -> tuple[bool, CommandOutput]:
        line = f"{self.host.name} stopped answering: {self.stopped}"
        return False, CommandOutput([OutputLine("stderr", line)])

    def call(self, method, command: Any, args: tuple, kwargs: dict, transfer: bool):
        """Run one connector call (a command or a transfer) under its bound."""
        if self.stopped is not None:
            return self.failure() if not transfer else False
        explicit = kwargs.get("_timeout")
        text = "" if transfer else _head_text(command)
        seconds, why = timeout_for(text, self.config, bool(self.reading_fact), explicit, transfer)
        if not transfer:
            kwargs["_timeout"] = seconds
        self.in_flight += 1
        self._keepalive()
        try:
            with gevent.Timeout(seconds + GRACE_S, TimeoutError):
                result = method(command, *args, **kwargs)
        except TimeoutError:
            self.stop(f"`{_head(command)}` gave no answer within {seconds} s ({why})")
            raise
        except (EOFError, SSHException, OSError) as error:
            if self.stopped is not None:  # closed by stop(): say why, not how it ended
                return self.failure() if not transfer else False
            if isinstance(error, EOFError):  # pyinfra does not handle it: the run would end
                raise ConnectionResetError("connection lost (EOF)") from None
            raise
        finally:
            self.in_flight -= 1
        if self.stopped is not None:  # the keepalive gave up while this command ran
            return self.failure() if not transfer else False
        return result

    def _keepalive(self) -> None:
        if getattr(self.host.connector, "client", None) is None:
            return  # not an SSH connection (@local, @docker, @fake)
        if self.keepalive is None or self.keepalive.dead:
            self.keepalive = gevent.spawn(self._keepalive_loop)

    def _keepalive_loop(self) -> None:
        """While a command is in flight, a keepalive that wants a reply; none for ``count``
        intervals: the host stopped answering. Ends when the host is idle."""
        interval, count = keepalive_s(self.config)
        while self.in_flight and self.stopped is None:
            gevent.sleep(interval)
            client = getattr(self.host.connector, "client", None)
            transport = client.get_transport() if client is not None else None
            if transport is None or not transport.is_active() or not self.in_flight:
                continue
            answered = False
            with gevent.Timeout(interval * count, False):
                transport.global_request("keepalive@openssh.com", wait=True)
                answered = True
            if not answered and self.in_flight and transport.is_active():
                self.stop(f"no reply to {count} SSH keepalives in {interval * count} s")


def _head_text(command: Any) -> str:
    return command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)


_WATCHES: WeakKeyDictionary[Host, Watch] = WeakKeyDictionary()


def watch(host: Host) -> Watch | None:
    return _WATCHES.get(host)


def install(state: State, host: Host, config: FleetConfig) -> Watch:
    """Bound every command, transfer and fact of ``host`` (once per host and run)."""
    if host in _WATCHES:
        return _WATCHES[host]
    bounds = _WATCHES[host] = Watch(state, host, config)
    connector = host.connector
    for name, transfer in (("run_shell_command", False), ("put_file", True), ("get_file", True)):
        method = getattr(connector, name)

        def bounded(command, *args, _method=method, _transfer=transfer, **kwargs):
            return bounds.call(_method, command, args, kwargs, _transfer)

        setattr(connector, name, bounded)
    get_fact = host.get_fact

    def read_fact(cls, *args, **kwargs):
        bounds.reading_fact += 1
        try:
            value = get_fact(cls, *args, **kwargs)
        finally:
            bounds.reading_fact -= 1
        if host in state.failed_hosts or bounds.stopped is not None:
            _host_cannot_go_on(state, host, bounds)
        return value

    host.get_fact = read_fact
    return bounds


def stopped_answering(host: Host) -> bool:
    """Whether the bounds gave up on this host (it stopped answering): a host fault, not a
    failure of what it was asked to do."""
    watch = _WATCHES.get(host)
    return watch is not None and watch.stopped is not None


def _host_cannot_go_on(state: State, host: Host, bounds: Watch) -> None:
    """A fact of this host could not be read: it is failed, and its deploy code must not go
    on with a missing fact. Planning: HostStopped (deploy.py ends that host's planning).
    Executing: GreenletExit ends that host's operation and nothing else (gevent counts it
    as the greenlet's result; pyinfra already counts the host failed)."""
    if host not in state.failed_hosts:
        state.fail_hosts({host})
    if state.is_executing:
        raise GreenletExit(f"{host.name}: {bounds.stopped or 'a fact could not be read'}")
    raise HostStopped(host.name)
