"""Scale benchmark of the controller on a STAND-IN fleet of simulated replay hosts (issue 19).

    python -m benchmarks.scale                    # N = 64, 256, 1024
    python -m benchmarks.scale --hosts 8,32       # another selection
    python -m benchmarks.scale --hosts 32 --smoke # under reports/scale/smoke, no plot

It exits 1 unless every step succeeded, every command had a recording and no host changed.

For each N it starts the replay server (benchmarks/replay: a STAND-IN, its own process, so its
CPU is counted apart), writes an inventory of N simulated hosts answering like the recorded
lab host, and measures, one after another:

- converge: the no-change ``pyinfra -y INV deploy.py`` (every host must report no change);
- verify: ``pytest tests/verify --inventory INV``;
- targets: ``python -m operations.cli.targets INV``;
- rollout plan: ``python -m benchmarks.replay.plan INV`` (a rollout's planning, no batch run).

Per step: wall seconds; the controller's CPU seconds (the command's process tree, from
getrusage(RUSAGE_CHILDREN); ssh masters that daemonise are sampled from /proc instead); the
simulator's CPU seconds (/proc/<pid>/stat); the controller's peak RSS (the tree's sum, sampled,
and the largest single process from wait4) and peak open fds (the tree's, sampled); the
commands that had no recording. The soft RLIMIT_NOFILE is raised to what N needs.

Writes reports/scale/results.json, results.md and results.png (logs under reports/scale/logs/).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.fleet import machine, pyplot
from benchmarks.replay import recording as rec
from benchmarks.replay.fleet import start, write_inventory
from benchmarks.replay.server import ensure_keys, raise_nofile, sim_address, sim_name

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reports" / "scale"
RECORDING = ROOT / "benchmarks" / "replay" / "recordings" / "lab-2.json"
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
GOALS = {"converge_1024_s": 90, "cpu_per_host_ms": 40, "rss_mib": 1536, "growth": 4.5,
         "verify_1024_s": 120}  # fmt: skip


def steps(inventory: Path, work: Path) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "converge": [py, "-m", "pyinfra", "-y", str(inventory), "deploy.py"],
        "verify": [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/verify",
                   "--inventory", str(inventory), "--fleet-report", str(work / "report.json"),
                   "--junitxml", str(work / "junit.xml")],
        "targets": [py, "-m", "operations.cli.targets", str(inventory),
                    "-o", str(work / "targets.json")],
        "rollout_plan": [py, "-m", "benchmarks.replay.plan", str(inventory)],
    }  # fmt: skip


def _children() -> dict[int, list[int]]:
    """{ppid: [pid]} of every process now."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree(root: int) -> list[int]:
    kids, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, []))
    return found


def _sample(pids: list[int]) -> tuple[int, int]:
    """(RSS KiB, open fds) summed over ``pids``."""
    rss = fds = 0
    for pid in pids:
        try:
            rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return rss, fds


def cpu_of(pid: int) -> float:
    """utime + stime seconds of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measure(command: list[str], log: Path, sim_pid: int) -> dict:
    """Run ``command`` (output to ``log``), sampling its process tree every 0.2 s."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sim_before, start_t = cpu_of(sim_pid), time.monotonic()
    env = {**os.environ, **rec.STANDIN_ENV}
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        peak_rss = peak_fds = 0
        try:
            while proc.poll() is None:
                rss, fds = _sample(_tree(proc.pid))
                peak_rss, peak_fds = max(peak_rss, rss), max(peak_fds, fds)
                time.sleep(0.2)
        finally:  # stopped (SIGTERM, Ctrl-C): the step goes with the benchmark
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    wall = time.monotonic() - start_t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "rc": proc.returncode, "wall_s": round(wall, 2), "controller_cpu_s": round(cpu, 2),
        "simulator_cpu_s": round(cpu_of(sim_pid) - sim_before, 2),
        "peak_rss_mib": round(peak_rss / 1024), "largest_rss_mib": round(after.ru_maxrss / 1024),
        "peak_fds": peak_fds,
    }  # fmt: skip


def fleet_hosts(count: int, recording: dict, work: Path) -> list[tuple[str, dict]]:
    """The simulated hosts' inventory entries: the recorded host's data, each its own name
    and address. An image archive (a controller path the lab rebuilds under a new name) becomes
    an empty STAND-IN file: a no-change deploy only checks that it exists (the host has the
    image); were it uploaded, the replay refuses SFTP and the run fails visibly."""
    data = dict(recording["host_data"])
    for key in ("vllm_image_archive", "monitoring_dcgm_image_archive"):
        if key in data:
            placeholder = work / f"STAND-IN-{key}.tar"
            placeholder.touch()
            data[key] = str(placeholder)
    return [(sim_name(i), {**data, "host_address": sim_address(i)}) for i in range(1, count + 1)]


def _misses(work: Path) -> list[str]:
    path = work / "misses.log"
    return path.read_text().splitlines() if path.exists() else []


def bench_size(count: int, recording_path: Path, out: Path = OUT, log=print) -> dict:
    """Every step's figures for ``count`` simulated hosts, files under ``out``."""
    work = out / "work" / f"{count}-hosts"
    logs = out / "logs" / f"{count}-hosts"
    logs.mkdir(parents=True, exist_ok=True)
    ensure_keys(work)
    nofile = raise_nofile(4 * count + 256)
    recording = rec.load(recording_path)
    hosts = fleet_hosts(count, recording, work)
    server, ports = start(work, [n for n, _ in hosts], recording_path, nofile=4 * count + 256)
    try:
        inventory = write_inventory(work, ports, hosts)
        result = {"hosts": count, "nofile_soft": nofile, "steps": {}}
        for name, command in steps(inventory, work).items():
            seen = len(_misses(work))
            figures = measure(command, logs / f"{name}.log", server.pid)
            figures["unrecorded"] = len(_misses(work)) - seen
            if name == "converge":
                text = (logs / "converge.log").read_text()
                changed = set(re.findall(r"^\s*\[([^\]]+)\] Success", text, re.M))
                figures["hosts_changed"] = len(changed)
            result["steps"][name] = figures
            log(f"{count} hosts, {name}: {json.dumps(figures)}")
    finally:
        server.terminate()
        server.wait(30)
    result["unrecorded_commands"] = sorted({json.loads(m)["command"][:200] for m in _misses(work)})
    return result


RERECORD = (
    "a command changed since the recording was made: record it again on the converged "
    "lab (python -m benchmarks.replay record --host lab-2, lab lock held)"
)


def failures(result: dict) -> list[str]:
    """What makes a size's run a failure: a step's exit status, an unrecorded command, a
    host that changed in the no-change converge."""
    count, found = result["hosts"], []
    for name, step in result["steps"].items():
        if step["rc"] != 0:
            found.append(f"{count} hosts: {name} exited {step['rc']}")
        if step["unrecorded"]:
            found.append(f"{count} hosts: {name} sent {step['unrecorded']} unrecorded command(s): "
                         f"{RERECORD}")  # fmt: skip
    changed = result["steps"].get("converge", {}).get("hosts_changed", 0)
    if changed:
        found.append(f"{count} hosts: {changed} host(s) changed in the no-change converge")
    return found


def goals(results: list[dict]) -> list[tuple[str, str, bool | None]]:
    """The issue's goals: (goal, measured, met); None where a size was not run."""
    by = {r["hosts"]: r["steps"] for r in results}
    out: list[tuple[str, str, bool | None]] = []

    def wall(n: int, step: str) -> float | None:
        return by[n][step]["wall_s"] if n in by and step in by[n] else None

    def add(goal: str, value: float | None, ok: bool | None, unit: str = "") -> None:
        out.append((goal, "not run" if value is None else f"{value:g}{unit}", ok))

    c1024, v1024 = wall(1024, "converge"), wall(1024, "verify")
    add("no-change converge of 1,024 hosts <= 90 s", c1024, c1024 and c1024 <= 90, " s")
    add("verify of 1,024 hosts <= 120 s", v1024, v1024 and v1024 <= 120, " s")
    sizes = sorted(by)
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        for step in ("converge", "verify"):
            ms = 1000 * (by[hi][step]["controller_cpu_s"] - by[lo][step]["controller_cpu_s"])
            ms /= hi - lo
            add(f"{step}: controller's marginal CPU per host ({lo}->{hi}) <= 40 ms",
                round(ms, 1), ms <= GOALS["cpu_per_host_ms"], " ms")  # fmt: skip
    rss = max((s["peak_rss_mib"] for r in results for s in r["steps"].values()), default=None)
    add("controller's peak RSS <= 1.5 GiB", rss, rss is not None and rss <= 1536, " MiB")
    for step in ("converge", "verify"):
        a, b = wall(256, step), wall(1024, step)
        ratio = round(b / a, 2) if a and b else None
        add(f"{step}: 1,024 hosts <= 4.5x 256 hosts", ratio, ratio and ratio <= 4.5, "x")
    return out


def markdown(results: list[dict], host: dict) -> str:
    lines = [
        "# Scale benchmark (STAND-IN replay hosts)", "",
        f"Controller: {host['cpus']} CPUs, {host['memory_gib']} GiB, kernel {host['kernel']}, "
        f"Python {host['python']}. Simulated hosts: benchmarks/replay (STAND-IN), one process, "
        "its CPU counted apart.", "",
        "| hosts | step | wall s | controller CPU s | simulator CPU s | peak RSS MiB (tree) "
        "| largest process MiB | peak fds | unrecorded | rc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        for name, s in r["steps"].items():
            lines.append(
                f"| {r['hosts']} | {name} | {s['wall_s']} | {s['controller_cpu_s']} | "
                f"{s['simulator_cpu_s']} | {s['peak_rss_mib']} | {s['largest_rss_mib']} | "
                f"{s['peak_fds']} | {s['unrecorded']} | {s['rc']} |"
            )
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for goal, value, ok in goals(results):
        lines.append(f"| {goal} | {value} | {'n/a' if ok is None else 'yes' if ok else 'NO'} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    sizes = [r["hosts"] for r in results]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for step in ("converge", "verify", "targets", "rollout_plan"):
        axis.plot(sizes, [r["steps"][step]["wall_s"] for r in results], marker="o", label=step)
    axis.set_xlabel("simulated hosts (STAND-IN replay)")
    axis.set_ylabel("wall seconds")
    axis.set_xscale("log", base=2)
    axis.set_xticks(sizes, [str(s) for s in sizes])
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--hosts", default="64,256,1024", help="comma-separated sizes")
    parser.add_argument("--recording", default=str(RECORDING))
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="files under reports/scale/smoke, no plot (./dev test's check)",
    )
    parser.add_argument("--out", help="where the files go (default reports/scale[/smoke])")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `finally` stops the server
    try:
        sizes = [int(n) for n in args.hosts.split(",")]
    except ValueError:
        parser.error(f"--hosts {args.hosts!r}: expected comma-separated host counts")
    out = Path(args.out) if args.out else OUT / "smoke" if args.smoke else OUT
    results = [bench_size(n, Path(args.recording), out) for n in sizes]
    problems = [p for r in results for p in failures(r)]
    out.mkdir(parents=True, exist_ok=True)
    host = machine()
    (out / "results.json").write_text(json.dumps(
        {"stand_in": "simulated replay hosts", "machine": host, "results": results,
         "goals": goals(results), "failures": problems}, indent=1))  # fmt: skip
    (out / "results.md").write_text(markdown(results, host))
    if not args.smoke:
        plot(results, out / "results.png")
    print(markdown(results, host))
    for problem in problems:
        print(f"FAILURE: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
