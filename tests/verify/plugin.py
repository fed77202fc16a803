"""pytest plugin of the verify suite: hosts from a pyinfra inventory, a fleet report at the end.

    pytest tests/verify --inventory inventory/prod.py [--limit gpu] [--exclude host] [-m driver]

Every check in ``tests/verify/test_<layer>.py`` takes a ``fleet_host`` argument and carries its
layer's marker; it runs once per selected host. At the end a host × layer table is printed and
written as JSON (``--fleet-report``) beside JUnit XML (``--junitxml``, default
``reports/verify-junit.xml``) and as one self-contained HTML page (``--fleet-html``, default
beside the JSON with the suffix ``.html``; ``--no-fleet-html`` writes none; see
tests/verify/html_report.py). A check that does not apply to a host (a GPU check on a host
whose config says it has none) skips with a reason starting "not applicable", shown as N/A.
Without ``--inventory`` the verify modules are not collected, so the project's own test suite
runs them only through its lab end-to-end test.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api.exceptions import PyinfraError
from pyinfra_cli.util import parse_cli_arg

from operations.config.model import LAYERS
from operations.inventory import select
from tests.verify import html_report
from tests.verify.fleet import (
    ROOT,
    FactSpec,
    FleetHost,
    Unreachable,
    UnsafeSshValue,
    close_connections,
    declared,
    declared_facts,
    kill_running,
    prefetch,
    write_ssh_config,
)

VERIFY_DIR = Path(__file__).resolve().parent
NOT_APPLICABLE = "not applicable"
UNREACHABLE = "host unreachable"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fleet verify")
    group.addoption("--inventory", help="pyinfra inventory file whose hosts are verified")
    group.addoption(
        "--data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override data for every host, like pyinfra's --data (verify what a deploy with "
        "the same --data made)",
    )
    group.addoption(
        "--limit",
        action="append",
        default=[],
        help="only these hosts or groups (comma-separated or repeated), like pyinfra's --limit",
    )
    group.addoption(
        "--exclude",
        action="append",
        default=[],
        help="not these hosts or groups (comma-separated or repeated), like pyinfra's --exclude",
    )
    group.addoption(
        "--fleet-report",
        default=str(ROOT / "reports" / "fleet-report.json"),
        help="where the host × layer report is written as JSON",
    )
    group.addoption(
        "--fleet-html",
        help="where the report is written as one HTML page (default: beside --fleet-report, "
        "its name ending in .html)",
    )
    group.addoption(
        "--no-fleet-html",
        action="store_true",
        help="write no HTML fleet report",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("inventory"):
        return
    config.stash[SIGTERM_BEFORE] = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        hosts = fleet_hosts(
            config.getoption("inventory"), config.getoption("limit"), config.getoption("exclude"),
            override_data(config.getoption("data")),
        )  # fmt: skip
    except (PyinfraError, UnsafeSshValue) as error:  # bad settings, inventory or selection
        raise pytest.UsageError(str(error)) from None
    if not config.option.xmlpath:
        config.option.xmlpath = str(ROOT / "reports" / "verify-junit.xml")
    config.stash[HOSTS] = hosts
    json_path = Path(config.getoption("fleet_report"))
    report = FleetReport([host.name for host in hosts], json_path, html_path(config, json_path))
    report.fleet = hosts
    config.pluginmanager.register(report, "fleet-report")


def html_path(config: pytest.Config, json_path: Path) -> Path | None:
    """Where the HTML report goes: --fleet-html, else beside the JSON (so a run that puts
    its JSON elsewhere, a test's in its tmp_path, leaves reports/ alone); None when
    --no-fleet-html."""
    if config.getoption("no_fleet_html"):
        return None
    chosen = config.getoption("fleet_html")
    return Path(chosen) if chosen else json_path.with_suffix(".html")


def _on_sigterm(signum: int, _frame) -> None:
    """A verify ended by SIGTERM (a CI job cancelled, a `timeout`) leaves nothing behind:
    Python skips atexit on a signal. The handler kills the ssh commands in flight and stops
    pytest as Ctrl-C does (report written, then pytest_unconfigure closes the connections and
    removes their directory); the exit status is 128 + 15. Nothing here blocks: under gevent
    the handler may run inside its event loop, where a blocking call fails."""
    _TERMINATED.append(signum)
    kill_running()
    raise KeyboardInterrupt(f"verify stopped by {signal.Signals(signum).name}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _TERMINATED:
        sys.stderr.write(f"verify stopped by {signal.Signals(_TERMINATED[0]).name}\n")
        session.exitstatus = 128 + _TERMINATED[0]


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's ssh connections and directory go at its end, the SIGTERM handler with them."""
    if SIGTERM_BEFORE in config.stash:
        close_connections()
        signal.signal(signal.SIGTERM, config.stash[SIGTERM_BEFORE])


def override_data(items: list[str]) -> dict[str, Any]:
    """``--data KEY=VALUE`` options as pyinfra's CLI parses them (UsageError when malformed)."""
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise pytest.UsageError(f"--data {item!r}: expected KEY=VALUE")
        found[key] = parse_cli_arg(value)
    return found


def fleet_hosts(
    inventory: str, limit: list[str], exclude: list[str], data: dict[str, Any] | None = None
) -> list[FleetHost]:
    """The selected hosts with their validated config, reached through one ssh_config.
    Raises ConfigError or InventoryError (one line each, naming the file a value came from),
    InventoryError also when no host is selected; prints what loading warned about."""
    selection = select(inventory, limit, exclude, data)
    for line in selection.warnings:
        sys.stderr.write(f"warning: {line}\n")
    configs = selection.configs()
    ssh_config = write_ssh_config(selection.hosts, configs)
    return [
        FleetHost(name, configs[name], data, ssh_config) for name, data in selection.hosts.items()
    ]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if config.getoption("inventory") is None and collection_path.is_relative_to(VERIFY_DIR):
        return True
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fleet_host" in metafunc.fixturenames:
        hosts = metafunc.config.stash.get(HOSTS, [])
        metafunc.parametrize("fleet_host", hosts, ids=[host.name for host in hosts])


def _host_of(item: pytest.Item) -> FleetHost | None:
    """The host a fleet check runs on; None for any other test."""
    host = getattr(item, "callspec", None) and item.callspec.params.get("fleet_host")
    return host if isinstance(host, FleetHost) else None


def selected_facts(items: list[pytest.Item]) -> list[FactSpec]:
    """The union of the ``FACTS`` declared by the modules of the selected fleet checks:
    what those checks may read (``-m toolkit`` gets what toolkit's checks read)."""
    modules = dict.fromkeys(item.module for item in items if _host_of(item) and item.module)
    return declared_facts(modules)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Read every host at once (the facts the selected checks' modules declare) before
    the checks; how long it took goes under the fleet report."""
    hosts = session.config.stash.get(HOSTS, [])
    specs = selected_facts(session.items)
    started = time.monotonic()
    prefetch(hosts, specs)
    report = session.config.pluginmanager.get_plugin("fleet-report")
    if report is not None and hosts and specs:
        report.prefetched = (
            f"prefetched {', '.join(spec.name for spec in specs)} from {len(hosts)} host(s) "
            f"in {time.monotonic() - started:.1f} s"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A fleet check may read only the facts its module declares (fleet.UndeclaredFact)."""
    if _host_of(item) is None:
        yield
        return
    with declared(declared_facts([item.module])):
        yield


def _layer(item: pytest.Item) -> str | None:
    return next((m.name for m in item.iter_markers() if m.name in LAYERS), None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    host = _host_of(item)
    if host is not None:
        report.user_properties += [("fleet_host", host.name), ("fleet_layer", _layer(item))]
        if call.excinfo is not None and call.excinfo.errisinstance(Unreachable):
            report.longrepr = f"{UNREACHABLE}: {call.excinfo.value}"


class FleetReport:
    """Outcome of every check, by host and layer; a plugin object registered per run."""

    def __init__(self, hosts: list[str], path: Path, html: Path | None = None):
        self.hosts = hosts
        self.path = path
        self.html = html  # where the HTML page goes; None: none written
        self.fleet: list[FleetHost] = []  # the hosts themselves: their GPUs as read
        self.cells: dict[tuple[str, str], dict] = defaultdict(
            lambda: {"passed": 0, "failed": 0, "not_applicable": 0, "skipped": 0, "failures": []}
        )
        self.unreachable: dict[str, str] = {}  # host -> why, from its first failed check
        self.prefetched: str | None = None  # what was read before the checks, how fast
        self.unhealthy: dict[str, list[dict]] = defaultdict(list)  # host -> GPU, check, reason
        self.notes: dict[str, list[str]] = defaultdict(list)  # host -> reported, not failed

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "fleet_host" in props and (report.when == "call" or report.outcome != "passed"):
            self.add(props["fleet_host"], props["fleet_layer"] or "unmarked", report)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.section("fleet report")
        for line in self.table().splitlines():
            terminalreporter.write_line(line)
        for line in self.unreachable_lines():
            terminalreporter.write_line(line)
        if self.prefetched:
            terminalreporter.write_line(self.prefetched)
        data = self.as_dict()
        write_atomically(self.path, json.dumps(data, indent=2) + "\n")
        terminalreporter.write_line(f"fleet report: {self.path}")
        if self.html is not None:
            write_atomically(self.html, html_report.render(data))
            terminalreporter.write_line(f"fleet report HTML: {self.html}")

    def add(self, host: str, layer: str, report: pytest.TestReport) -> None:
        cell = self.cells[(host, layer)]
        check = report.nodeid.split("::")[-1].split("[")[0]
        props = dict(report.user_properties)
        self.notes[host] += props.get("gpu_notes", [])
        if report.failed:
            self.unhealthy[host] += [
                gpu | {"check": check} for gpu in props.get("unhealthy_gpus", [])
            ]
            cell["failed"] += 1
            message = _short(report)
            cell["failures"].append({"check": check, "message": message, "when": report.when})
            if message.startswith(f"{UNREACHABLE}: "):
                self.unreachable.setdefault(host, message.removeprefix(f"{UNREACHABLE}: "))
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            key = "not_applicable" if NOT_APPLICABLE in reason else "skipped"
            cell[key] += 1
        else:
            cell["passed"] += 1

    @staticmethod
    def status(cell: dict | None) -> str:
        if not cell:
            return "-"
        if cell["failed"]:
            return f"FAIL {cell['failed']}/{cell['failed'] + cell['passed']}"
        if cell["passed"]:
            return f"PASS {cell['passed']}"
        return "N/A" if cell["not_applicable"] else "SKIP"

    def unreachable_lines(self) -> list[str]:
        """One line per host found unreachable: why, and how many checks that failed."""
        lines = []
        for host, why in self.unreachable.items():
            cells = [cell for (name, _), cell in self.cells.items() if name == host]
            failed = sum(cell["failed"] for cell in cells)
            na = sum(cell["not_applicable"] for cell in cells)
            lines.append(
                f"{UNREACHABLE}: {why}: its {failed} check(s) failed unrun"
                + (f" ({na} not applicable by its config)" if na else "")
            )
        return lines

    def layers(self) -> list[str]:
        seen = {layer for _, layer in self.cells}
        return [layer for layer in (*LAYERS, "unmarked") if layer in seen]

    def table(self) -> str:
        layers = self.layers()
        rows = [["host", *layers]] + [
            [host, *(self.status(self.cells.get((host, layer))) for layer in layers)]
            for host in self.hosts
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def gpus(self) -> dict[str, list[dict]]:
        """{host: its GPUs as the driver state read them (index, PCI bus id, model)} for the
        hosts whose config says they have GPUs and whose driver state this run read (a run
        of ``-m vllm`` reads none); [] where it holds no GPU."""
        from tests.verify.facts import DRIVER  # the deploy's fact modules: only when used

        found = {}
        for host in self.fleet:
            state = host._facts.get(DRIVER)  # read by the prefetch or a check, once per run
            if not host.config.host.has_gpus or not isinstance(state, dict):
                continue
            gpus = state.get("gpus") if isinstance(state.get("gpus"), list) else []
            found[host.name] = [_gpu_entry(gpu) for gpu in gpus if isinstance(gpu, dict)]
        return found

    def as_dict(self) -> dict:
        return {
            "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "layers": self.layers(),
            "prefetched": self.prefetched,
            "gpus": self.gpus(),
            "unreachable": dict(self.unreachable),
            "unhealthy_gpus": {host: gpus for host, gpus in self.unhealthy.items() if gpus},
            "gpu_notes": {host: notes for host, notes in self.notes.items() if notes},
            "hosts": {
                host: {
                    layer: {"status": self.status(self.cells.get((host, layer))).split()[0]}
                    | dict(self.cells.get((host, layer), {}))
                    for layer in self.layers()
                }
                for host in self.hosts
            },
        }


def _gpu_entry(gpu: dict) -> dict:
    """One GPU for the report: index, PCI bus id and model, each only where it was read (a
    probe field that failed is a dict saying so)."""
    entry = {"gpu": gpu.get("index")}
    for key, name in (("pci_bus_id", "pci_bus_id"), ("name", "name")):
        if isinstance(gpu.get(key), str):
            entry[name] = gpu[key]
    return entry


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in its directory renamed over it:
    a reader (a browser reloading, a CI step) sees the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _short(report: pytest.TestReport) -> str:
    """The failure's own message (assertion text or error), on one line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return text.strip().splitlines()[0].removeprefix("AssertionError: ")


HOSTS = pytest.StashKey[list]()
SIGTERM_BEFORE = pytest.StashKey[object]()
_TERMINATED: list[int] = []  # the signal that stopped this run
