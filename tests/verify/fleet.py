"""The hosts the verify suite checks: read from a pyinfra inventory, reached like pyinfra does.

The inventory file and group_data are loaded by pyinfra's own loader, so verify sees exactly
the hosts, groups and effective data a deploy sees. Each host's config is validated with the
same model as the deploy. testinfra reaches a host over OpenSSH with an ssh_config rendered
from the host's pyinfra ``ssh_*`` data (same address, port, user, key and host-key policy);
``ControlPersist`` keeps one connection per host for the whole run. ``@local`` is checked in
place (``local://``), e.g. on a GPU machine itself.

Every command is bounded like a deploy's fact read (operations.kit.bounds): the connection sends
reply-wanted keepalives (``ServerAliveInterval``/``ServerAliveCountMax``: a paused host still
ACKs TCP, only an unanswered keepalive shows it is gone) and each command gets
``deploy_fact_timeout_s``. A host that stops answering fails its checks with the reason,
at once after the first, while the other hosts' checks go on.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import testinfra
from pyinfra.api import FactBase
from testinfra.backend.base import CommandResult

from operations.config.model import FleetConfig
from operations.kit import bounds

ROOT = Path(__file__).resolve().parents[2]


BATCH_MARK = "@@gpufleet-batch@@"  # ends each script's output in a prefetch: rc, index


def split_batch(stdout: str, count: int) -> dict[int, list[str]]:
    """{index: output lines} of the scripts of a batch that exited 0. Each end marker follows
    a newline of its own, so one empty line before it is the batch's, not the script's."""
    outputs: dict[int, list[str]] = {}
    lines: list[str] = []
    for line in stdout.splitlines():
        fields = line.split(" ")
        if len(fields) == 3 and fields[0] == BATCH_MARK and fields[2].isdigit():
            if lines and lines[-1] == "":
                lines.pop()
            if fields[1] == "0" and int(fields[2]) < count:
                outputs[int(fields[2])] = lines
            lines = []
        else:
            lines.append(line)
    return outputs


@dataclass(frozen=True, eq=False)
class FactSpec:
    """One fact the checks read: a name for messages, its script (made from the host's
    config) and how its output is parsed. Compared by identity: each is one module-level
    constant, declared in ``FACTS`` by every check module that reads it."""

    name: str
    script: Callable[[FleetConfig], str]
    parse: Callable[[list[str]], Any]

    def __repr__(self) -> str:
        return self.name


def deploy_fact(fact: type[FactBase], **arguments: Callable[[FleetConfig], Any]) -> FactSpec:
    """The deploy's fact class read as the deploy reads it: its own ``command`` with the
    arguments the deploy's ``get_fact`` passes (each taken from the host's config), its own
    ``process``."""

    def script(config: FleetConfig) -> str:
        return fact().command(**{name: value(config) for name, value in arguments.items()})

    return FactSpec(fact.__name__, script, lambda lines: fact().process(lines))


class UndeclaredFact(Exception):
    """A check read a fact its module does not declare in ``FACTS``."""


_DECLARED: ContextVar[frozenset[FactSpec] | None] = ContextVar("declared", default=None)


@contextlib.contextmanager
def declared(specs: Iterable[FactSpec]) -> Iterator[None]:
    """While a check runs: the facts its module declares, the only ones it may read."""
    token = _DECLARED.set(frozenset(specs))
    try:
        yield
    finally:
        _DECLARED.reset(token)


def declared_facts(modules: Iterable[ModuleType]) -> list[FactSpec]:
    """The union of the ``FACTS`` the modules declare, each fact once, in declaration order
    (a module without ``FACTS`` reads none)."""
    return list(dict.fromkeys(spec for module in modules for spec in getattr(module, "FACTS", ())))


class Unreachable(Exception):
    """The host did not answer over SSH."""


class Result(CommandResult):
    """testinfra's CommandResult, shown as what ran and how it ended, on one line. A check's
    assertion message (pytest shows the objects an assertion used) and testinfra's own
    ``RuntimeError(result)`` of an ssh failure would otherwise print the dataclass: its
    backend object, raw bytes and all."""

    def __repr__(self) -> str:
        command = self.command
        text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
        text = " ".join(text.split())
        text = text if len(text) <= 60 else text[:57] + "..."
        said = self.stderr.strip().splitlines()
        return f"`{text}` exited {self.rc}" + (f": {said[-1].strip()}" if said else "")

    __str__ = __repr__


@dataclass
class FleetHost:
    """One inventory host as the checks see it: name, validated config and a testinfra Host."""

    name: str
    config: FleetConfig
    data: dict[str, Any]
    ssh_config: Path | None = None
    _facts: dict[FactSpec, Any] = field(default_factory=dict, repr=False)

    def read(self, spec: FactSpec) -> Any:
        """A fact's value: from the prefetch, or read now (once per run) and parsed the way
        the deploy parses it. Inside a check, a fact its module does not declare in ``FACTS``
        is an error (UndeclaredFact): the declarations are what the plugin prefetches, so a
        missing one would read hosts one by one, unnoticed."""
        declared = _DECLARED.get()
        if declared is not None and spec not in declared:
            raise UndeclaredFact(f"{spec.name} is read but not declared in the module's FACTS")
        if spec not in self._facts:
            result = self.host.run(spec.script(self.config))
            assert result.rc == 0, f"fact script failed (rc {result.rc}): {result.stderr}"
            self._facts[spec] = spec.parse(result.stdout.splitlines())
        return self._facts[spec]

    def prefetch(self, specs: list[FactSpec]) -> None:
        """Run the scripts of ``specs`` not yet read in one round trip (each in its own
        subshell) and keep each output parsed as if run alone. A script that fails is not
        kept: its check runs it again and reports the failure."""
        pending = [spec for spec in dict.fromkeys(specs) if spec not in self._facts]
        if not pending:
            return
        script = "\n".join(
            f"( {spec.script(self.config)}\n); printf '\\n{BATCH_MARK} %s {i}\\n' $?"
            for i, spec in enumerate(pending)
        )
        outputs = split_batch(self.host.run(script).stdout, len(pending))
        for i, spec in enumerate(pending):
            if i in outputs:
                self._facts[spec] = spec.parse(outputs[i])

    stopped: str | None = field(default=None, repr=False)  # why it stopped answering
    _probing: bool = field(default=False, repr=False)  # the first command: connecting

    @functools.cached_property
    def host(self) -> testinfra.host.Host:
        """testinfra Host, after one reachability probe; raises Unreachable when it fails,
        then and for every later use, without trying again: a host is found unreachable
        once per run (each try would cost ssh's ConnectTimeout), not once per check."""
        if self.stopped:
            raise Unreachable(self.stopped)
        if self.name == "@local":
            host = testinfra.get_host("local://", sudo=bool(self.data.get("_sudo")))
        else:
            host = testinfra.get_host(
                f"ssh://{self.name}",
                ssh_config=str(self.ssh_config),
                sudo=bool(self.data.get("_sudo")),
            )
        host.backend.run_local = functools.partial(self.run_bounded, host.backend)
        self._probing = True
        try:
            result = host.run("true")
        except Unreachable:
            raise
        except Exception as error:  # testinfra raises plain RuntimeError/OSError on ssh failure
            self.stopped = f"{self.name}: {error}"
            raise Unreachable(self.stopped) from None
        finally:
            self._probing = False
        if result.rc != 0:
            self.stopped = f"{self.name}: ssh exited {result.rc}: {result.stderr.strip()}"
            raise Unreachable(self.stopped)
        return host

    def run_bounded(self, backend, command: str, *args: str):
        """testinfra's ``run_local`` (one ssh process per command) within the host's fact
        bound; Unreachable, for this and every later command, once the host stopped
        answering: the command did not end in time, or ssh lost the connection (exit 255:
        no reply to the keepalives)."""
        if self.stopped:
            raise Unreachable(self.stopped)
        seconds = self.config.deploy.fact_timeout_s
        cmd = backend.encode(backend.quote(command, *args))
        proc = subprocess.Popen(
            cmd, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        _RUNNING.add(proc)
        try:
            stdout, stderr = proc.communicate(timeout=seconds)
        except subprocess.TimeoutExpired:
            self._abandon(proc)
            self.stopped = (
                f"{self.name} stopped answering: no result within {seconds} s "
                "(deploy_fact_timeout_s)"
            )
            raise Unreachable(self.stopped) from None
        finally:
            _RUNNING.discard(proc)
        if proc.returncode == 255 and self.name != "@local":
            said = stderr.decode(errors="replace").strip().splitlines()
            how = "cannot be reached over SSH" if self._probing else (
                "stopped answering: ssh lost the connection"
            )  # fmt: skip
            self.stopped = f"{self.name} {how}" + (f" ({said[-1].strip()})" if said else "")
            raise Unreachable(self.stopped)
        return Result(backend, proc.returncode, cmd, stdout, stderr)

    def _abandon(self, proc: subprocess.Popen) -> None:
        """Give up on a command that did not end: kill its ssh and stop the host's master
        connection. An ssh mux client hands its stdio to the master, which holds them (and
        the remote command) while the command runs: only then does its output end."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if self.ssh_config is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    ["ssh", "-F", str(self.ssh_config), "-O", "exit", self.name],
                    capture_output=True, check=False, timeout=10,
                )  # fmt: skip
        with contextlib.suppress(subprocess.TimeoutExpired):  # a master that would not stop
            proc.communicate(timeout=5)


def _ssh_block(name: str, data: dict[str, Any], config: FleetConfig) -> str:
    """An ssh_config ``Host`` block mirroring pyinfra's ssh_* data for one host."""
    interval, count = bounds.keepalive_s(config)
    options = {
        "HostName": data.get("ssh_hostname") or name,
        "Port": data.get("ssh_port"),
        "User": data.get("ssh_user"),
        "IdentityFile": data.get("ssh_key"),
        "IdentitiesOnly": "yes" if data.get("ssh_key") else None,
        "UserKnownHostsFile": data.get("ssh_known_hosts_file"),
        # pyinfra's own default policy is accept-new; mirror what the data says.
        "StrictHostKeyChecking": data.get("ssh_strict_host_key_checking") or "accept-new",
        "BatchMode": "yes",
        "ConnectTimeout": 10,
        # a paused host ACKs TCP: only a keepalive that wants a reply notices it is gone
        "ServerAliveInterval": interval,
        "ServerAliveCountMax": count,
        # one connection per host for the whole run (testinfra asks for a master, but
        # without a ControlPath ssh opens a new connection for every command)
        "ControlMaster": "auto",
        "ControlPersist": "30s",
    }
    lines = [f"Host {ssh_config_value(name)}"] + [
        f"  {k} {ssh_config_value(v)}" for k, v in options.items() if v not in (None, "")
    ]
    return "\n".join(lines)


# What an ssh_config value may hold: printable, no quote, backslash, '%' (ssh's own tokens)
# or '#'. Anything else (a newline above all: it would start a line such as ProxyCommand of
# the inventory's choosing) is refused, never written. No leading '-' either: the host name
# also reaches ssh's command line (testinfra runs `ssh ... NAME COMMAND`), where
# '-oProxyCommand=…' would be an option.
_SSH_CONFIG_VALUE = re.compile(r"[A-Za-z0-9_.,:@/+=~\[\]][A-Za-z0-9_.,:@/+=~\[\] -]*")


class UnsafeSshValue(ValueError):
    """An inventory value that cannot be written into an ssh_config line as one value."""


def ssh_config_value(value: Any) -> str:
    """``value`` as one ssh_config argument: double-quoted when it has a blank; refused
    (UnsafeSshValue) when it holds anything that could end the value or the line, or when it
    starts with '-' (an option on ssh's command line)."""
    text = str(value)
    if not _SSH_CONFIG_VALUE.fullmatch(text) or text != text.strip():
        raise UnsafeSshValue(f"{text!r} cannot be written into an ssh_config line")
    return f'"{text}"' if " " in text else text


def write_ssh_config(hosts: dict[str, dict[str, Any]], configs: dict[str, FleetConfig]) -> Path:
    """One ssh_config file for all hosts (plus any ssh_config_file the data names), in a
    private directory that also holds the connection sockets; both go when the run ends."""
    includes = sorted(
        {ssh_config_value(d["ssh_config_file"]) for d in hosts.values() if d.get("ssh_config_file")}
    )
    work = Path(tempfile.mkdtemp(prefix="gpufleet-ssh-", dir=_socket_parent()))  # 0700
    blocks = [
        _ssh_block(name, data, configs[name]) + f"\n  ControlPath {work}/%C"
        for name, data in hosts.items()
    ]
    text = "\n\n".join(blocks) + "\n" + "".join(f"\nInclude {path}" for path in includes)
    config = work / "config"
    config.write_text(text)
    if not _RUN_DIRS:
        atexit.register(close_connections)
    _RUN_DIRS.append((config, list(hosts)))
    return config


_RUN_DIRS: list[tuple[Path, list[str]]] = []  # each ssh_config written, with its hosts
_RUNNING: set[subprocess.Popen] = set()  # ssh commands in flight


def close_connections() -> None:
    """End the run's ssh commands still in flight, stop its master connections and remove
    their directories. Idempotent: atexit, the plugin's unconfigure and its SIGTERM handler
    (atexit does not run on a signal) may each call it."""
    kill_running()
    while _RUN_DIRS:
        config, hosts = _RUN_DIRS.pop()
        _close_connections(config, hosts)


SOCKET_PATH_MAX = 104  # a unix socket path's limit, the smallest of Linux's and macOS's


def kill_running() -> None:
    """Kill the ssh commands in flight (each in its own process group), without waiting: safe
    in a signal handler, where gevent (pyinfra's) allows no blocking call."""
    for proc in list(_RUNNING):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _socket_parent() -> str:
    """Where the run's directory goes: the temporary directory, or /tmp where that is too
    long for ssh's ControlPath (the directory, '/' and the 40 hex digits of %C: ssh refuses a
    longer one, and every host would fail as unreachable)."""
    parent = tempfile.gettempdir()
    fits = len(os.fsencode(parent)) + len("/gpufleet-ssh-12345678/") + 40 < SOCKET_PATH_MAX
    return parent if fits else "/tmp"


def _close_connections(config: Path, hosts: list[str]) -> None:
    """Stop the master connections of one ssh_config and remove its directory."""
    for name in hosts:
        try:
            subprocess.run(
                ["ssh", "-F", str(config), "-O", "exit", name],
                capture_output=True, check=False, timeout=10,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            continue
    shutil.rmtree(config.parent, ignore_errors=True)


def prefetch(hosts: list[FleetHost], specs: list[FactSpec], workers: int = 32) -> None:
    """Connect to every host and read ``specs``, all of a host's scripts in one round trip
    and hosts in parallel (one thread each: testinfra runs ssh processes). Failures are left
    to the checks, which report them (an unreachable host fails its row)."""

    def warm(host: FleetHost) -> None:
        try:
            host.prefetch(specs)
        except Exception:  # noqa: BLE001 - the check reading it again reports it
            return

    if hosts and specs:
        with ThreadPoolExecutor(max_workers=min(workers, len(hosts))) as pool:
            list(pool.map(warm, hosts))
