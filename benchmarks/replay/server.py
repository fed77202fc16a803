"""The STAND-IN replay SSH server: many simulated hosts, one 127.0.0.1 port each, one process.

    python -m benchmarks.replay serve --dir DIR --hosts 64 --recording FILE

Each port is one simulated host (``sim-0001`` ...). A session's exec request is answered from
the recording (``recording.Identity`` normalises what differs per host); a command without a
recording exits 127 with ``STAND-IN replay: no recording for: <command>`` on stderr and is
appended to ``DIR/misses.log``. In proxy mode (``record``) the one simulated host forwards each
command to a real lab host over SSH and records its answer instead.

Trust is pinned both ways, as in the lab: one ed25519 host key (``DIR/host_key``) made once,
listed for every port in ``DIR/known_hosts``; only the client key ``DIR/client_key`` may log
in, as root. No shell, no pty, no SFTP: a client needing them fails visibly.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from benchmarks.replay.recording import Identity

NO_RECORDING = "STAND-IN replay: no recording for: "
LOOPBACK = "127.0.0.1"


def sim_name(index: int) -> str:
    return f"sim-{index:04d}"


def sim_address(index: int) -> str:
    """A documentation-free private address per simulated host (10.77.x.y), never routed."""
    return f"10.77.{index // 250}.{index % 250 + 1}"


def ensure_keys(work: Path) -> None:
    """The host key and client key in ``work`` (0700), made once and then reused."""
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o700)
    for name in ("host_key", "client_key"):
        path = work / name
        if not path.is_file():
            key = asyncssh.generate_private_key("ssh-ed25519", comment=f"gpufleet replay {name}")
            key.write_private_key(str(path))
            key.write_public_key(f"{path}.pub")
            os.chmod(path, 0o600)


@dataclass
class Simulator:
    """The state shared by every simulated host of one server process."""

    work: Path
    commands: dict[str, dict[str, Any]]
    proxy: dict[str, Any] | None = None  # {"host", "port", "key", "known_hosts"} in record mode
    misses: list[str] = field(default_factory=list)
    answered: int = 0
    _upstream: Any = None

    async def answer(self, identity: Identity, command: str) -> tuple[bytes, bytes, int]:
        key = identity.normalise(command)
        if self.proxy is not None:
            return await self._forward(identity, key, command)
        recorded = self.commands.get(key)
        if recorded is None:
            self.misses.append(key)
            with (self.work / "misses.log").open("a") as log:
                log.write(json.dumps({"host": identity.name, "command": key}) + "\n")
            return b"", f"{NO_RECORDING}{command}\n".encode(), 127
        self.answered += 1
        out, err = identity.localise(recorded["stdout"]), identity.localise(recorded["stderr"])
        return _raw(out), _raw(err), recorded["rc"]

    async def _forward(self, identity: Identity, key: str, command: str):
        """Record mode: run ``command`` on the real host, keep its normalised answer."""
        if self._upstream is None:
            p = self.proxy
            self._upstream = await asyncssh.connect(
                p["host"], port=p["port"], username="root", client_keys=[p["key"]],
                known_hosts=p["known_hosts"],
            )  # fmt: skip
        done = await self._upstream.run(command, check=False, encoding=None, stdin=asyncssh.DEVNULL)
        out, err = done.stdout or b"", done.stderr or b""
        rc = done.exit_status if done.exit_status is not None else 255
        self.commands[key] = {
            "stdout": identity.normalise(_text(out)),
            "stderr": identity.normalise(_text(err)),
            "rc": rc,
        }
        return out, err, rc


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _handler(sim: Simulator, identity: Identity):
    async def handle(process: asyncssh.SSHServerProcess) -> None:
        command = process.command
        if command is None:  # a shell: nothing is recorded for one
            process.stderr.write(f"{NO_RECORDING}<interactive shell>\n".encode())
            process.exit(127)
            return
        try:
            out, err, rc = await sim.answer(identity, command)
        except (OSError, asyncssh.Error) as error:  # record mode: the real host did not answer
            print(f"STAND-IN replay proxy: {identity.name}: {error}", flush=True)
            out, err, rc = b"", f"STAND-IN replay proxy: {error}\n".encode(), 255
        process.stdout.write(out)
        process.stderr.write(err)
        process.exit(rc)

    return handle


async def serve(sim: Simulator, identities: list[Identity], ready: Path) -> None:
    """Listen for every simulated host, write ``ready`` ({name: port}), serve until SIGTERM."""
    work = sim.work
    servers, ports = [], {}
    for identity in identities:
        server = await asyncssh.listen(
            LOOPBACK, 0, server_host_keys=[str(work / "host_key")],
            authorized_client_keys=str(work / "client_key.pub"),
            process_factory=_handler(sim, identity), encoding=None, sftp_factory=None,
            allow_scp=False, x11_forwarding=False, agent_forwarding=False,
            keepalive_interval=0, login_timeout=120,
        )  # fmt: skip
        servers.append(server)
        ports[identity.name] = server.sockets[0].getsockname()[1]
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    tmp.replace(ready)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def raise_nofile(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to ``needed`` (at most the hard limit); the new soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    return soft


def known_hosts(work: Path, ports: dict[str, int]) -> Path:
    """``DIR/known_hosts``: the one host key pinned for every simulated host's port."""
    keytype, blob = (work / "host_key.pub").read_text().split()[:2]
    path = work / "known_hosts"
    path.write_text("".join(f"[{LOOPBACK}]:{port} {keytype} {blob}\n" for port in ports.values()))
    return path
