"""The HTML fleet report (tests/verify/html_report.py): escaping of hostile host names and
messages, host order, the summary at 500 hosts, and the page as a real headless Chromium
(Debian's) loads it: the DOM after load, a screenshot taken (a PNG in tmp_path, never kept).
Without Chromium the browser tests skip, and fail when GPUFLEET_REQUIRE_LAB=1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.plan.harness import gateway_off_beside
from tests.verify import html_report
from tests.verify.html_report import render

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["preflight", "driver", "docker", "toolkit", "vllm", "monitoring"]
HOSTILE_NAME = '<script>document.body.dataset.pwned="name"</script>"onmouseover="x'
# what runs if it escapes sets a data attribute (alert() would hang a headless browser)
HOSTILE_MESSAGE = (
    'assert "onmouseover=document.body.dataset.pwned=3 <img src=x '
    'onerror="document.body.dataset.pwned=1"><script>document.body.dataset.pwned=2</script>'
)
CHROMIUM = os.environ.get("GPUFLEET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ECC_FINDING = {
    "gpu": 3, "pci_bus_id": "00000000:1B:00.0", "reason": "2 uncorrected ECC errors",
    "check": "test_ecc",
}  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cell(status: str, passed: int = 3, failures: list[dict] | None = None, **extra) -> dict:
    """One host × layer cell as the plugin writes it."""
    failures = failures or []
    return {
        "status": status, "passed": passed if status in ("PASS", "FAIL") else 0,
        "failed": len(failures), "not_applicable": int(status == "N/A"), "skipped": 0,
        "failures": failures,
    } | extra  # fmt: skip


def fleet(count: int, failing: dict[int, str] | None = None, gpu_every: int = 4) -> dict:
    """A synthetic report of ``count`` hosts (node-0000, ...): every ``gpu_every``-th host has
    8 GPUs; ``failing`` maps a host's index to the layer one of its checks fails in."""
    failing = failing or {}
    hosts, gpus, unhealthy = {}, {}, {}
    for i in range(count):
        name = f"node-{i:04d}"
        cells = {layer: cell("PASS") for layer in LAYERS}
        if i % gpu_every:
            cells["driver"] = cell("N/A")
        else:
            gpus[name] = [
                {"gpu": g, "pci_bus_id": f"00000000:{0x18 + g:02X}:00.0", "name": "NVIDIA H100"}
                for g in range(8)
            ]
        if i in failing:
            layer = failing[i]
            message = f"{name}: {layer} check failed: expected 1, found 0"
            cells[layer] = cell(
                "FAIL", failures=[{"check": f"test_{layer}_ok", "message": message}]
            )
            if layer == "driver" and name in gpus:
                unhealthy[name] = [ECC_FINDING]
        hosts[name] = cells
    return {
        "generated_at": "2025-01-01 00:00:00 +0000", "layers": LAYERS, "prefetched": None,
        "gpus": gpus, "unreachable": {}, "unhealthy_gpus": unhealthy, "gpu_notes": {},
        "hosts": hosts,
    }  # fmt: skip


def hostile() -> dict:
    """A 3-host report whose second host's name and failure message are hostile."""
    report = fleet(3, gpu_every=1)
    report["hosts"][HOSTILE_NAME] = report["hosts"].pop("node-0001")
    report["gpus"][HOSTILE_NAME] = report["gpus"].pop("node-0001")
    report["hosts"][HOSTILE_NAME]["vllm"] = cell(
        "FAIL", failures=[{"check": "test_<b>x</b>", "message": HOSTILE_MESSAGE}]
    )
    report["unhealthy_gpus"][HOSTILE_NAME] = [
        {"gpu": 0, "pci_bus_id": "<i>bus", "reason": HOSTILE_MESSAGE, "check": "test_ecc"}
    ]
    report["gpu_notes"][HOSTILE_NAME] = ['note "onmouseover=document.body.dataset.pwned=4 <b>']
    return report


def test_hostile_host_names_and_messages_are_text_never_markup():
    report = hostile()
    report["hosts"]["node-0000"]["docker"] = cell(
        "FAIL", failures=[{"check": "test_z", "message": '<script>alert(1)</script>"onmouseover='}]
    )
    page = render(report)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;onmouseover=" in page
    assert (
        "<script" not in page and "<img" not in page and "<b>" not in page and "<i>bus" not in page
    )
    assert not re.search(r"<[^>]*\sonmouseover=", page) and not re.search(r"<[^>]*\sonerror=", page)
    assert "&lt;script&gt;document.body.dataset.pwned=&quot;name&quot;&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;document.body.dataset.pwned=1&quot;&gt;" in page
    # nothing from the report reaches an id or a link: those are made from row numbers
    assert set(re.findall(r'(?:id|href)="#?([^"]*)"', page)) <= {
        "summary",
        "counts",
        "grid",
        "hosts",
    } | {  # fmt: skip
        f"h-{i}" for i in range(3)
    }
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_no_network_no_script_one_file():
    page = render(fleet(32, {3: "vllm"}))
    assert not re.search(r"(?i)<(script|link|img|iframe|object)\b", page)
    assert not re.search(r"(?i)(https?:)?//[a-z]", page.replace("http-equiv", ""))
    assert "@import" not in page and "url(" not in page


def test_failing_hosts_first_then_unreachable_each_in_inventory_order():
    report = fleet(10, {7: "vllm", 2: "docker", 9: "driver"})
    report["unreachable"] = {"node-0005": "node-0005 cannot be reached over SSH"}
    report["hosts"]["node-0005"] = {
        layer: cell("FAIL", failures=[{"check": "test_x", "message": "host unreachable: gone"}])
        for layer in LAYERS
    }
    order = [name for _, name, _ in html_report.ordered_hosts(report)]
    assert order[:4] == ["node-0002", "node-0007", "node-0009", "node-0005"]
    assert order[4:] == [f"node-{i:04d}" for i in (0, 1, 3, 4, 6, 8)]
    page = render(report)
    rows = re.findall(r'<tr><th scope="row" class="\w+">(?:<a href="#h-\d+">)?([^<]+)', page)
    assert rows == order
    assert html_report.summary_line(html_report.ordered_hosts(report))[0] == (
        "4 of 10 hosts failing: node-0002, node-0007, node-0009, node-0005"
    )
    assert page.count(">UNREACHABLE</a></td>") == len(LAYERS)  # its cells say so, linked


def test_summary_at_500_hosts_counts_by_status_and_names_at_most_twenty():
    failing = {i: LAYERS[i // 10 % len(LAYERS)] for i in range(0, 500, 10)}  # 50 failing hosts
    report = fleet(500, failing, gpu_every=2)
    rows = html_report.ordered_hosts(report)
    line, bad = html_report.summary_line(rows)
    assert bad and line.startswith("50 of 500 hosts failing: node-0000, node-0010, ")
    assert line.endswith("node-0190 and 30 more") and len(line) < 400
    counts = html_report.counts_line(report, rows, LAYERS)
    assert counts.startswith("Hosts: 50 failing, 450 passing. Checks: 50 failed, ")
    assert "Failing hosts by layer: preflight 9, driver 9, docker 8" in counts
    assert "Unhealthy GPUs: 9 on 9 host(s)." in counts  # driver failures on GPU hosts
    assert html_report.summary_line(html_report.ordered_hosts(fleet(32))) == (
        "All 32 hosts pass",
        False,
    )


def test_a_failing_check_is_inside_its_hosts_details_linked_from_the_grid():
    page = render(fleet(8, {4: "toolkit"}))
    section = re.search(r'<details class="host">(.*?)</details>', page, re.S).group(1)
    assert 'id="h-4"' in section and "test_toolkit_ok" in section
    assert "node-0004: toolkit check failed: expected 1, found 0" in section
    assert '<td class="f"><a href="#h-4">FAIL 1/4</a></td>' in page
    assert page.count("<details") == 1  # passing hosts get no section


def test_gpu_health_per_gpu_from_the_gpus_read_and_the_unhealthy_ones():
    page = render(fleet(4, {0: "driver"}))
    assert '<a href="#h-0">7/8 ok</a> <i>0</i><i>1</i><i>2</i><i class="x">3✗</i>' in page
    assert '<td class="g">8/8 ok <i>0</i>' not in page  # the only GPU host is node-0000
    assert "<td>3</td><td>00000000:1B:00.0</td><td>NVIDIA H100</td>" in page
    assert "UNHEALTHY: 2 uncorrected ECC errors — test_ecc" in page
    assert '<td class="z">none</td>' in page  # hosts without GPUs say so


def test_an_old_report_without_layers_or_gpus_still_renders():
    report = fleet(3, {1: "docker"})
    for key in ("layers", "gpus", "generated_at", "prefetched"):
        del report[key]
    page = render(report)
    assert re.findall(r'<th scope="col">(\w+)</th>', page)[1:] == LAYERS
    assert "GPUs" not in page and "1 of 3 hosts failing: node-0001" in page


def test_an_error_in_setup_is_error_not_fail():
    report = fleet(2)
    report["hosts"]["node-0001"]["docker"] = cell(
        "FAIL", failures=[{"check": "test_y", "message": "fixture broke", "when": "setup"}]
    )
    assert '<a href="#h-1">ERROR 1/4</a>' in render(report)


def test_size_at_32_and_500_hosts(capsys):
    sizes = {
        n: len(render(fleet(n, {i: "vllm" for i in range(0, n, 10)})).encode()) for n in (32, 500)
    }
    with capsys.disabled():
        print(f"\nHTML fleet report size: 32 hosts {sizes[32]} bytes, 500 hosts {sizes[500]} bytes")
    assert sizes[32] < 30_000 and sizes[500] < 300_000


# --- in a real headless Chromium ------------------------------------------------------------


class Grid(HTMLParser):
    """The grid table (id="grid") of a page or a browser's DOM: its column headers and, per
    row, the host and each cell's text."""

    def __init__(self, dom: str):
        super().__init__()
        self.columns: list[str] = []
        self.rows: list[list[str]] = []
        self._in_grid = self._in_head = False
        self._cell: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("id", "grid") in attrs:
            self._in_grid = True
        elif self._in_grid and tag == "thead":
            self._in_head = True
        elif self._in_grid and tag == "tr" and not self._in_head:
            self.rows.append([])
        elif self._in_grid and tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_grid = False
        elif tag == "thead":
            self._in_head = False
        elif self._in_grid and tag in ("th", "td") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            (self.columns if self._in_head else self.rows[-1]).append(text)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def cells(self) -> dict[str, dict[str, str]]:
        """{host: {column: the cell's text}}."""
        return {row[0]: dict(zip(self.columns[1:], row[1:], strict=True)) for row in self.rows}


def chromium_available() -> str:
    """The Chromium binary; skips without one, fails under GPUFLEET_REQUIRE_LAB=1."""
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    why = f"no Chromium at {CHROMIUM} (Debian's chromium package)"
    if os.environ.get("GPUFLEET_REQUIRE_LAB"):
        pytest.fail(why)
    pytest.skip(why)


def chromium(page: Path, work: Path, *flags: str, fragment: str = "") -> tuple[str, float]:
    """Load ``page`` in headless Chromium with ``flags`` (--dump-dom, --screenshot=...):
    (stdout, wall seconds). A fresh profile in ``work``; --no-sandbox to run as root."""
    binary = chromium_available()
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--mute-audio",
        f"--user-data-dir={work / 'profile'}", *flags, page.as_uri() + fragment,
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the browser and every process it started
        proc.communicate()
        pytest.fail(f"Chromium did not finish loading {page.name} within 120 s")
    seconds = time.monotonic() - started
    assert proc.returncode == 0, stderr[-2000:]
    return stdout, seconds


def screenshot(page: Path, work: Path) -> Path:
    """A 1280×2000 screenshot of the page, checked to be a PNG with content."""
    shot = work / "report.png"
    chromium(page, work, f"--screenshot={shot}", "--window-size=1280,2000")
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000, len(data)
    return shot


def test_chromium_renders_500_hosts_summary_grid_and_details(tmp_path, capsys):
    failing = {i: LAYERS[i % len(LAYERS)] for i in range(0, 500, 25)}  # 20 failing hosts
    report = fleet(500, failing)
    page = tmp_path / "fleet-report.html"
    page.write_text(render(report))
    dom, seconds = chromium(page, tmp_path, "--dump-dom")
    assert "20 of 500 hosts failing: node-0000, node-0025, node-0050" in dom
    grid = Grid(dom)
    assert grid.columns == ["host", *LAYERS, "GPUs"]
    assert len(grid.rows) == 500 and {len(row) for row in grid.rows} == {len(LAYERS) + 2}
    cells = grid.cells()
    assert [host for host, _ in zip(cells, range(20), strict=False)] == list(
        f"node-{i:04d}" for i in sorted(failing)
    )  # failing first
    assert cells["node-0025"]["driver"] == "FAIL 1/4" and cells["node-0024"]["GPUs"] == (
        "8/8 ok 01234567"  # one mark per GPU
    )
    assert sum(text.startswith("FAIL ") for row in cells.values() for text in row.values()) == 20
    details = re.findall(r'<details class="host">.*?</details>', dom, re.S)
    assert len(details) == 20
    assert any("node-0025: driver check failed: expected 1, found 0" in d for d in details)
    shot_started = time.monotonic()
    screenshot(page, tmp_path)
    shot_seconds = time.monotonic() - shot_started
    with capsys.disabled():
        print(
            f"\nChromium, 500 hosts ({page.stat().st_size} bytes): --dump-dom {seconds:.2f} s, "
            f"--screenshot {shot_seconds:.2f} s"
        )


def test_chromium_opens_the_linked_hosts_details(tmp_path):
    """Following a grid link (the host's id in the URL) opens its closed <details>: the
    failing check's message is one click away."""
    page = tmp_path / "fleet-report.html"
    page.write_text(render(fleet(12, {3: "docker", 8: "vllm"})))
    dom, _ = chromium(page, tmp_path, "--dump-dom", fragment="#h-8")
    opened = re.findall(r'<details class="host"( open="")?><summary>([^<]*)', dom)
    assert opened == [("", "FAILING: node-0003 — failed: docker 1"),
                      (' open=""', "FAILING: node-0008 — failed: vllm 1")]  # fmt: skip


def test_chromium_runs_no_script_from_hostile_input_even_without_the_csp(tmp_path):
    """The escaping alone keeps hostile names and messages inert: with the page's
    Content-Security-Policy taken out, no payload runs and none became an element."""
    page = tmp_path / "fleet-report.html"
    text = render(hostile())
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text)
    assert "Content-Security-Policy" not in text
    page.write_text(text)
    dom, _ = chromium(page, tmp_path, "--dump-dom")
    assert "pwned" in dom  # the payload is on the page, as text
    assert "data-pwned" not in dom and "<script" not in dom and "<img" not in dom
    assert not re.search(r"<[^>]*\son(mouseover|error)=", dom)
    assert 'pwned=1"&gt;&lt;script&gt;document.body.dataset.pwned=2&lt;/script&gt;' in dom
    screenshot(page, tmp_path)


# --- written by verify ----------------------------------------------------------------------


def run_verify(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """verify's preflight checks on @local, the JSON report in tmp_path/out."""
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        'hosts = [("@local", {"host_has_gpus": False, "preflight_min_free_disk_gib": 0})]'
    )
    gateway_off_beside(inventory)
    command = [
        sys.executable, "-m", "pytest", "tests/verify", "-p", "no:cacheprovider",
        f"--inventory={inventory}", f"--fleet-report={tmp_path / 'out' / 'report.json'}",
        f"--junitxml={tmp_path / 'junit.xml'}", "-m", "preflight", *args,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_verify_writes_the_page_beside_the_json_or_where_told_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    done = run_verify(tmp_path)
    page = out / "report.html"
    assert f"fleet report HTML: {page}" in done.stdout, done.stdout + done.stderr
    assert sorted(path.name for path in out.iterdir()) == ["report.html", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert page.read_text() == render(report)  # the same report, nothing left half-written
    assert Grid(page.read_text()).cells().keys() == {"@local"}

    chosen = tmp_path / "elsewhere" / "fleet.html"
    done = run_verify(tmp_path, f"--fleet-html={chosen}")
    assert chosen.is_file() and f"fleet report HTML: {chosen}" in done.stdout

    page.unlink()
    done = run_verify(tmp_path, "--no-fleet-html")
    assert "fleet report HTML" not in done.stdout and not page.exists()
    assert (out / "report.json").is_file()
