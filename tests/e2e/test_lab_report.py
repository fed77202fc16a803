"""End to end: the lab's HTML fleet report, as a real headless Chromium (Debian's) loads it.

verify runs against the lab inventory (after a deploy: the lab as ``./dev lab`` leaves it) and
writes its JSON and HTML reports; the page's DOM after load must show each lab host as a row,
each layer of the JSON as a column and every cell with the status the JSON gives it. On a
STAND-IN GPU lab host with an injected fault, the page shows the faulty GPU marked in the grid,
its reason in the host's GPU table and the failing check's message inside the host's
``<details>``, which a link to it opens. A screenshot of each page is taken (into tmp_path,
never kept). Run under ``flock /tmp/gpufleet-lab.lock`` with GPUFLEET_REQUIRE_LAB=1 (Chromium
missing then fails the test, as a missing lab does).
"""

from __future__ import annotations

import html
import json
import re
import sys

import pytest

from tests.e2e import gpu_host
from tests.e2e.gpu_host import fault
from tests.e2e.helpers import deploy, run, verify
from tests.unit.test_report_html import Grid, chromium, screenshot

pytestmark = pytest.mark.lab
gpu_hosts = gpu_host.gpu_hosts  # the fixture, in this module
GPU_INVENTORY = "inventory/lab_gpu.py"
GPU_FAULT = ("ecc_uncorrected", "test_no_uncorrected_volatile_ecc_errors")


def expected_text(cell: dict | None) -> str:
    """What the page must write in a cell, from the JSON alone."""
    if not cell:
        return "not run"
    status = cell["status"]
    if status == "PASS":
        return f"PASS {cell['passed']}"
    if status == "FAIL":  # FAIL, ERROR or UNREACHABLE: the page tells them apart
        return f"{cell['failed']}/{cell['failed'] + cell['passed']}"
    return {"N/A": "N/A", "SKIP": "SKIP"}.get(status, "not run")


def assert_page_shows(dom: str, report: dict) -> dict[str, dict[str, str]]:
    """Every host a row, every layer a column, every cell as the JSON says; the cells."""
    grid = Grid(dom)
    layers = report["layers"]
    assert grid.columns[: len(layers) + 1] == ["host", *layers], grid.columns
    cells = grid.cells()
    assert sorted(cells) == sorted(report["hosts"])
    for host, row in report["hosts"].items():
        for layer in layers:
            want, shown = expected_text(row.get(layer)), cells[host][layer]
            if row.get(layer, {}).get("status") == "FAIL":
                assert shown.split()[0] in ("FAIL", "ERROR", "UNREACHABLE"), (host, layer, shown)
                assert shown.endswith(want) or shown == "UNREACHABLE", (host, layer, shown)
            else:
                assert shown == want, (host, layer, shown, row.get(layer))
    return cells


def test_the_lab_report_in_chromium_shows_every_host_and_layer_as_the_json_says(lab, tmp_path):
    done = deploy("-y")
    assert done.returncode == 0, done.output[-3000:]
    report_json, page = tmp_path / "fleet-report.json", tmp_path / "fleet-report.html"
    done = verify(f"--fleet-report={report_json}", f"--fleet-html={page}",
                  f"--junitxml={tmp_path / 'junit.xml'}")  # fmt: skip
    assert f"fleet report HTML: {page}" in done.output, done.output[-3000:]
    report = json.loads(report_json.read_text())
    dom, seconds = chromium(page, tmp_path, "--dump-dom")
    cells = assert_page_shows(dom, report)
    assert sorted(cells) == sorted(lab)
    failing = [host for host, row in report["hosts"].items()
               if any(cell["failed"] for cell in row.values())]  # fmt: skip
    summary = re.search(r'<p id="summary"[^>]*>([^<]*)</p>', dom).group(1)
    if failing:  # the lab as deployed passes; say which host failed, if one did
        assert summary.startswith(f"{len(failing)} of {len(lab)} hosts failing: "), summary
    else:
        assert summary == f"All {len(lab)} hosts pass", summary
    assert done.returncode == (1 if failing else 0), done.output[-3000:]
    screenshot(page, tmp_path)
    print(f"\nlab report: {page.stat().st_size} bytes, Chromium --dump-dom {seconds:.2f} s")


def test_a_gpu_fault_shows_on_its_gpu_with_the_message_a_click_away(gpu_hosts, tmp_path):
    host = gpu_hosts("hgx8")
    name, check = GPU_FAULT
    report_json, page = tmp_path / "fleet-report.json", tmp_path / "fleet-report.html"
    with fault(host, name):
        run(sys.executable, "-m", "pytest", "tests/verify", "--inventory", GPU_INVENTORY,
            "-p", "no:cacheprovider", "--limit", host.name, "-m", "driver",
            f"--fleet-report={report_json}", f"--fleet-html={page}",
            f"--junitxml={tmp_path / 'junit.xml'}")  # fmt: skip
    report = json.loads(report_json.read_text())
    unhealthy = [gpu for gpu in report["unhealthy_gpus"][host.name] if gpu["check"] == check]
    assert unhealthy and len(report["gpus"][host.name]) == 8, report["unhealthy_gpus"]
    number = list(report["hosts"]).index(host.name)
    dom, _ = chromium(page, tmp_path, "--dump-dom", fragment=f"#h-{number}")
    cells = assert_page_shows(dom, report)
    marks = cells[host.name]["GPUs"]
    bad = {gpu["gpu"] for gpu in report["unhealthy_gpus"][host.name]}
    assert marks.startswith(f"{8 - len(bad)}/8 ok "), marks
    for gpu in unhealthy:
        assert f"{gpu['gpu']}✗" in marks, marks
        row = re.search(rf"<tr class=\"f\"><td>{gpu['gpu']}</td><td>([^<]*)</td>.*?</tr>", dom)
        assert row and row.group(1) == gpu["pci_bus_id"], gpu
        assert html.escape(gpu["reason"], quote=False) in row.group(0), (gpu, row.group(0))
    (section,) = re.findall(r'<details class="host" open="">.*?</details>', dom, re.S)
    (message,) = [f["message"] for f in report["hosts"][host.name]["driver"]["failures"]
                  if f["check"] == check]  # fmt: skip
    assert f"<code>{check}</code>" in section and html.escape(message, quote=False) in section
    screenshot(page, tmp_path)
