"""STAND-IN replay hosts: serve a simulated fleet, or record a real lab host's answers.

    python -m benchmarks.replay record [--host lab-2]   # lab lock held; no-change runs only
    python -m benchmarks.replay serve --dir DIR --names sim-0001,... --recording FILE

``record`` runs, through the replay server in proxy mode standing in for ``--host``, one
deploy with ``--dry`` (it gathers every fact a no-change deploy reads and changes nothing:
the lab's API key is not known here, so a real run would recreate the servers), one verify
and the targets file, limited to that host, with the STAND-IN key of
recording.STANDIN_ENV, and writes every command's normalised answer to
benchmarks/replay/recordings/<host>.json. It refuses to write a
recording that contains the lab's API key or a token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.replay import recording as rec
from benchmarks.replay import server
from benchmarks.replay.fleet import ROOT, start, write_inventory
from operations.config.model import LAYERS

RECORDINGS = Path(__file__).resolve().parent / "recordings"
SSH_KEYS = {"ssh_hostname", "ssh_port", "ssh_user", "ssh_key", "ssh_known_hosts_file",
            "ssh_strict_host_key_checking"}  # fmt: skip


def _serve(args: argparse.Namespace) -> int:
    work = Path(args.dir)
    server.raise_nofile(args.nofile)
    names = args.names.split(",")
    if args.recording:
        data = rec.load(Path(args.recording))
        sim = server.Simulator(work, data["commands"])
        identities = [rec.Identity(n, server.sim_address(i)) for i, n in enumerate(names, 1)]
    else:  # proxy: one host, forwarded to the real one
        proxy = json.loads(Path(args.proxy).read_text())
        sim = server.Simulator(work, {}, proxy=proxy)
        identities = [rec.Identity(names[0], proxy["address"])]
    server.ensure_keys(work)
    try:
        asyncio.run(server.serve(sim, identities, work / "ports.json"))
    finally:
        if sim.proxy is not None:
            rec.save(work / "recorded.json", {"commands": sim.commands})
        print(json.dumps({"answered": sim.answered, "misses": len(sim.misses)}), flush=True)
    return 0


def _lab_state(lab_dir: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from lab.state import load_state

    state = load_state(lab_dir.parent)
    if state is None:
        raise SystemExit(f"no lab state in {lab_dir}: the lab is not up")
    return state


def _secrets(lab_dir: Path) -> list[str]:
    """The lab's secrets that must never be recorded: the demo API key (and a token file)."""
    found = []
    for name in ("demo-api-key", "hf-token"):
        path = lab_dir / name
        if path.is_file():
            found.append(path.read_text().strip())
    return [s for s in found if s]


def _run(command: list[str], log: Path) -> int:
    """Run a controller command with the STAND-IN API key (never a lab secret), output to log."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        env = {**os.environ, **rec.STANDIN_ENV}
        return subprocess.call(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)


def _deploy(host: str, inventory: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pyinfra", "--limit", host, *extra, str(inventory), "deploy.py"]


def _record_steps(host: str, inventory: Path, work: Path, log: Path) -> list[int]:
    """The recorded runs; SystemExit before the one real deploy when it would change the host.

    1. a dry deploy of every layer: every fact a no-change deploy reads (the vLLM layer plans
       a change here: the lab's API key is not the STAND-IN's; nothing runs);
    2. a dry deploy of every layer but vLLM, whose proposed changes must be none;
    3. that deploy for real: what only a real run sends (the deploy lock), changing nothing;
    4. one verify and 5. the targets file."""
    rest = "deploy_layers=" + ",".join(layer for layer in LAYERS if layer != "vllm")
    rcs = [_run(_deploy(host, inventory, "--dry"), log)]
    start_at = log.stat().st_size
    rcs.append(_run(_deploy(host, inventory, "--dry", "--data", rest), log))
    planned = log.read_text()[start_at:]
    if rcs[-1] != 0 or not _no_change(planned, host):
        raise SystemExit(f"{host} is not converged (a dry deploy plans changes besides the "
                         f"API key's): record it later; see {log}")  # fmt: skip
    py = sys.executable
    start_at = log.stat().st_size
    rcs.append(_run(_deploy(host, inventory, "-y", "--data", rest), log))
    if f"[{host}] Success" in log.read_text()[start_at:]:  # an operation ran: not a no-change run
        raise SystemExit(f"{host}: the no-change deploy ran an operation: no recording; see {log}")
    rcs += [
        _run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/verify", "--inventory",
              str(inventory), "--limit", host, "--fleet-report", str(work / "report.json")], log),
        _run([py, "-m", "operations.cli.targets", str(inventory), "--limit", host,
              "-o", str(work / "targets.json")], log),
    ]  # fmt: skip
    return rcs


def _no_change(output: str, host: str) -> bool:
    """Whether pyinfra's detected changes (a dry run without -y: per operation, the hosts it
    changes, ``1 (lab-2)``, or ``-``, then the hosts of its conditional change) show no change
    for ``host``. A conditional change (an ``_if`` on an earlier operation's change: the apt
    update after a new repository, the restart after new flags) cannot fire without one."""
    _, found, table = output.partition("--> Detected changes:")
    if not found:
        return False
    mine = re.compile(rf"^\d+ \(.*\b{re.escape(host)}\b")
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 3 and mine.match(cells[-2]):
            return False
    return True


def _record(args: argparse.Namespace) -> int:
    from lab.state import inventory_hosts

    lab_dir = Path(args.lab_dir)
    state = _lab_state(lab_dir)
    entries = inventory_hosts(state)
    target = next((h for h in state["hosts"] if h["name"] == args.host), None)
    if target is None:
        raise SystemExit(f"--host {args.host}: not a lab host (have: "
                         f"{', '.join(h['name'] for h in state['hosts'])})")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="gpufleet-replay-record-"))
    proxy = {"host": "127.0.0.1", "port": target["port"], "key": state["ssh_key"],
             "known_hosts": state["known_hosts"], "address": target.get("address", "")}  # fmt: skip
    (work / "proxy.json").write_text(json.dumps(proxy))
    server.ensure_keys(work)
    proc, ports = start(work, [args.host], None, proxy=work / "proxy.json")
    inventory = write_inventory(work, ports, entries, [entries[0][0]])
    log = work / "record.log"
    try:
        rcs = _record_steps(args.host, inventory, work, log)
    finally:
        proc.terminate()
        proc.wait(30)
    recorded = rec.load(work / "recorded.json")
    rec.replace_digests(recorded["commands"])
    return _finish(args, recorded, target, entries, rcs, log, lab_dir)


def _finish(args, recorded, target, entries, rcs, log, lab_dir) -> int:
    data = dict(next(d for n, d in entries if n == args.host))
    host_data = {k: v for k, v in data.items() if k not in SSH_KEYS}
    out = {"stand_in": rec.STAND_IN, "host": args.host, "address": target.get("address", ""),
           "host_data": host_data, "exit_statuses": rcs, **recorded}  # fmt: skip
    leaked = rec.secrets_in(out, _secrets(lab_dir))
    if leaked:
        raise SystemExit(f"refusing to write the recording: a lab secret is in {leaked}")
    path = RECORDINGS / f"{args.host}.json"
    rec.save(path, out)
    print(f"recorded {len(out['commands'])} command(s) of {args.host} (exit statuses {rcs}) "
          f"to {path}; log: {log}")  # fmt: skip
    return 0 if not any(rcs) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    serve = sub.add_parser("serve", help="serve simulated hosts (STAND-IN)")
    serve.add_argument("--dir", required=True)
    serve.add_argument("--names", required=True)
    serve.add_argument("--recording")
    serve.add_argument("--proxy")
    serve.add_argument("--nofile", type=int, default=0)
    record = sub.add_parser("record", help="record a real lab host's answers")
    record.add_argument("--host", default="lab-2")
    record.add_argument("--lab-dir", default=str(ROOT / ".lab"))
    args = parser.parse_args(argv)
    return _serve(args) if args.what == "serve" else _record(args)


if __name__ == "__main__":
    sys.exit(main())
