"""Fleet benchmark on the lab: converge and verify time against the number of hosts.

    python -m benchmarks.fleet                       # N = 1, 4, 8, 16; 3 runs where cheap
    python -m benchmarks.fleet --hosts 1,4 --runs 5  # another selection

For each N it brings up N fresh lab hosts (`python -m lab down`, then `up`) and measures:

- fresh converge: `pyinfra -y inventory/lab.py deploy.py`, all layers, on fresh hosts with
  the lab's shared apt cache emptied first (once: it needs fresh hosts);
- no-change converge: the same again on the converged fleet (median of --runs);
- verify: `pytest tests/verify --inventory inventory/lab.py` (median of --runs);
- the controller's peak memory (max RSS of the pyinfra or pytest process, from getrusage);
- the tool's own time: the fresh converge's wall time minus the wall time of the operations
  that run the package manager (install, update, move a pin), from the deploy's per-operation
  timings (GPUFLEET_TIMINGS), also per host.

Writes every run's output under reports/benchmark/logs/, then results.json, results.md (a
Markdown table) and results.png (time against N), and names the machine. A benchmark, not a
test: CI does not run it. It takes the lab down and up, so nothing else may use the lab.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lab import aptcache

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reports" / "benchmark"
PACKAGE_OPS = ("Install", "Update apt", "Move ", "Finish the interrupted dpkg")
# Run a command (its output to stderr), then print its wall time and its peak RSS as JSON.
_MEASURE = (
    "import json, resource, subprocess, sys, time; t = time.monotonic(); "
    "rc = subprocess.call(sys.argv[1:], stdout=sys.stderr); "
    "print(json.dumps({'rc': rc, 'seconds': time.monotonic() - t, "
    "'peak_rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
)
DEPLOY = [sys.executable, "-m", "pyinfra", "-y", "inventory/lab.py", "deploy.py"]
VERIFY = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/verify",
          "--inventory", "inventory/lab.py"]  # fmt: skip


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def measure(command: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``command`` in the checkout, its output to ``log``: {"rc", "seconds",
    "peak_rss_kib", "machine_busy"} (the share of the machine's CPUs busy meanwhile: the lab's
    hosts run on the same CPUs as the controller)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    busy_before, total_before = cpu_ticks()
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, *command], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=out, text=True, env={**os.environ, **(env or {})},
            check=True,
        )  # fmt: skip
    busy_after, total_after = cpu_ticks()
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["machine_busy"] = round((busy_after - busy_before) / (total_after - total_before), 2)
    return result


def lab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip


def package_seconds(timings: dict[str, float]) -> float:
    """Wall time of the operations that run the package manager."""
    return sum(s for name, s in timings.items() if any(w in name for w in PACKAGE_OPS))


def bench_size(count: int, runs: int, apt_cache: bool = True, log=print) -> dict:
    """Every figure for one fleet size (fresh hosts)."""
    lab("down")
    if apt_cache:
        aptcache.remove()  # a fresh converge starts with nothing cached (`up` makes a new cache)
    lab("up", "--hosts", str(count), "--apt-cache" if apt_cache else "--no-apt-cache")
    logs = OUT / "logs" / f"{count}-hosts"
    timings_file = logs / "fresh-timings.json"  # per operation: where the fresh time went
    timings_file.unlink(missing_ok=True)
    fresh = measure(DEPLOY, logs / "fresh.log", {"GPUFLEET_TIMINGS": str(timings_file)})
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    assert fresh["rc"] == 0, f"fresh converge of {count} host(s) failed: see {logs}"
    nochange = [measure(DEPLOY, logs / f"nochange-{i}.log") for i in range(runs)]
    verify = [measure(VERIFY, logs / f"verify-{i}.log") for i in range(runs)]
    assert all(r["rc"] == 0 for r in nochange + verify), f"a run failed: see {logs}"
    tool = fresh["seconds"] - package_seconds(timings)
    result = {
        "hosts": count,
        "fresh_s": round(fresh["seconds"], 1),
        "nochange_s": round(statistics.median(r["seconds"] for r in nochange), 2),
        "verify_s": round(statistics.median(r["seconds"] for r in verify), 2),
        "nochange_runs_s": [round(r["seconds"], 2) for r in nochange],
        "verify_runs_s": [round(r["seconds"], 2) for r in verify],
        "peak_rss_mib": round(max(r["peak_rss_kib"] for r in [fresh, *nochange, *verify]) / 1024),
        "cpu_busy": {
            "fresh": fresh["machine_busy"],
            "nochange": statistics.median(r["machine_busy"] for r in nochange),
            "verify": statistics.median(r["machine_busy"] for r in verify),
        },  # fmt: skip
        "package_manager_s": round(package_seconds(timings), 1),
        "tool_s": round(tool, 1),
        "tool_per_host_s": round(tool / count, 2),
    }
    log(json.dumps(result))
    return result


def machine() -> dict:
    memory = next(
        (int(line.split()[1]) // 1024**2 for line in Path("/proc/meminfo").read_text().splitlines()
         if line.startswith("MemTotal")), None,
    )  # fmt: skip
    return {"cpus": os.cpu_count(), "memory_gib": memory, "kernel": platform.release(),
            "python": platform.python_version()}  # fmt: skip


def targets(results: list[dict]) -> list[tuple[str, str, bool | None]]:
    """The issue's targets: (target, measured, met) — None where a size was not run."""
    by = {r["hosts"]: r for r in results}
    checks = []

    def add(what: str, measured: float | None, limit: float | None) -> None:
        if measured is None or limit is None:
            checks.append((what, "not run", None))
        else:
            checks.append((what, f"{measured:.2f} (limit {limit:.2f})", measured <= limit))

    get = lambda n, k: by[n][k] if n in by else None  # noqa: E731
    add("no-change converge, 8 hosts <= 10 s", get(8, "nochange_s"), 10)
    add("verify, 8 hosts <= 10 s", get(8, "verify_s"), 10)
    for key, what in (("nochange_s", "no-change converge"), ("verify_s", "verify")):
        four = get(4, key)
        add(f"{what}, 16 hosts <= 2 x 4 hosts", get(16, key), four * 2 if four else None)
    one = get(1, "fresh_s")
    add("fresh converge, 8 hosts <= 2.5 x 1 host", get(8, "fresh_s"), one * 2.5 if one else None)
    return checks


def markdown(results: list[dict], host: dict) -> str:
    head = (
        "| hosts | fresh converge s | no-change converge s | verify s | peak RSS MiB "
        "| package manager s | tool s (per host) | CPUs busy: fresh / no-change / verify |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        busy = r.get("cpu_busy") or {}
        shares = " / ".join(f"{busy[k]:.0%}" for k in ("fresh", "nochange", "verify") if k in busy)
        lines.append(
            f"| {r['hosts']} | {r['fresh_s']} | {r['nochange_s']} | {r['verify_s']} | "
            f"{r['peak_rss_mib']} | {r['package_manager_s']} | {r['tool_s']} "
            f"({r['tool_per_host_s']}) | {shares or '-'} |"
        )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for what, measured, met in targets(results):
        verdict = "-" if met is None else ("yes" if met else "NO")
        lines.append(f"| {what} | {measured} | {verdict} |")
    lines += ["", f"Machine: {host['cpus']} CPUs, {host['memory_gib']} GiB, kernel "
              f"{host['kernel']}, Python {host['python']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib's pyplot on the Agg backend; None, said on stderr, where it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: pip install -e '.[bench]' for the plot", file=sys.stderr)
        return None
    return plt


def plot(results: list[dict], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    sizes = [r["hosts"] for r in results]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for key, label in (("fresh_s", "fresh converge"), ("nochange_s", "no-change converge"),
                       ("verify_s", "verify")):  # fmt: skip
        axis.plot(sizes, [r[key] for r in results], marker="o", label=label)
    axis.set_xlabel("lab hosts")
    axis.set_ylabel("seconds")
    axis.set_xticks(sizes)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__)
    parser.add_argument("--hosts", default="1,4,8,16", help="fleet sizes (default 1,4,8,16)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each cheap measurement")
    parser.add_argument(
        "--apt-cache", action=argparse.BooleanOptionalAction, default=True,
        help="lab hosts fetch through the lab's shared apt-cacher-ng, emptied before each size "
        "(default; --no-apt-cache: each host from the mirror)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.hosts.split(",")]
    started = time.monotonic()
    results = []
    for count in sizes:  # written after each size: a size that fails keeps the ones before
        results.append(bench_size(count, args.runs, args.apt_cache))
        write(results, round(time.monotonic() - started))
    print(markdown(results, machine()))
    return 0


def write(results: list[dict], took_s: int) -> None:
    """results.json, results.md and results.png of the sizes measured so far."""
    host = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"machine": host, "results": results,
              "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(results)],
              "took_s": took_s}  # fmt: skip
    (OUT / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "results.md").write_text(markdown(results, host))
    plot(results, OUT / "results.png")


if __name__ == "__main__":
    sys.exit(main())
