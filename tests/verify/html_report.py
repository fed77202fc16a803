"""The fleet report as one self-contained HTML page, rendered from the report's JSON.

``render(report)`` takes the dict the verify plugin writes as ``fleet-report.json`` (older
reports without ``layers``/``gpus`` too) and returns one HTML document: inline CSS, no script,
no network, no external font. It shows a summary line that stays short at 500 hosts (counts
by status, the failing hosts named first, at most ``NAMED`` of them), the host × layer grid
coloured by status with the status also written in every cell (not colour alone), each GPU
host's GPUs (healthy or why not) and, one click away, every failing check with its message:
a ``<details>`` per host whose body has the id the grid links to (Chromium opens a closed
``<details>`` when a link targets an element inside it).

Every value from the report goes through ``html.escape``: host names can come from cloud tags
and messages from a check's output, either hostile. Nothing from the report reaches an id, a
URL or a script (ids are ``h-<row number>``), and a Content-Security-Policy allowing no script
backs that up. Hosts are ordered failing first, then unreachable, then the rest, each group in
inventory order (a stable sort).
"""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

NAMED = 20  # failing hosts named in the summary line; the rest counted
LAYER_ORDER = ("preflight", "driver", "docker", "toolkit", "vllm", "monitoring", "unmarked")
UNREACHABLE_PREFIX = "host unreachable: "

# cell status -> (css class, words shown)
CELL = {
    "PASS": ("p", "PASS"),
    "FAIL": ("f", "FAIL"),
    "ERROR": ("e", "ERROR"),
    "UNREACHABLE": ("u", "UNREACHABLE"),
    "N/A": ("n", "N/A"),
    "SKIP": ("s", "SKIP"),
    "-": ("z", "not run"),
}
# host status -> rank in the sort (failing first)
HOST_RANK = {"failing": 0, "unreachable": 1, "not checked": 2, "passing": 3}
HOST_CSS = {"failing": "f", "unreachable": "u", "not checked": "z", "passing": "p"}

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em;color:#111}
h1{font-size:1.3em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .4em}
.sum{font-size:1.15em;font-weight:600;margin:.2em 0}.sum.bad{color:#a00}.sum.ok{color:#064}
table{border-collapse:collapse}th,td{border:1px solid #bbb;padding:1px 6px;text-align:left}
thead th{position:sticky;top:0;background:#f4f4f4}
tbody th{max-width:22em;overflow-wrap:anywhere;font-weight:600}.g{white-space:nowrap}
td a{color:inherit}.p{background:#cfeed8}.f{background:#f6b9b9;font-weight:700}
.e{background:#fbd5a5;font-weight:700}.u{background:#d9c8ef;font-weight:700}
.n{background:#ececec;color:#555}.s{background:#fbf1b8}.z{color:#777}
.g i{font-style:normal;display:inline-block;min-width:1.2em;margin:0 1px;text-align:center;
background:#cfeed8;border-radius:2px}.g i.x{background:#b00;color:#fff;font-weight:700}
details{margin:.3em 0;border:1px solid #ccc;padding:.2em .5em}summary{cursor:pointer}
pre{white-space:pre-wrap;word-break:break-word;margin:.2em 0 .5em;background:#f7f7f7;
padding:.3em}.legend span{padding:0 .4em;margin-right:.3em;border:1px solid #bbb}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'"


def esc(value: Any) -> str:
    """Any report value as HTML text (quotes escaped too: safe inside an attribute)."""
    return html.escape(str(value), quote=True)


def layers_of(report: dict) -> list[str]:
    """The report's layers in the deploy's order (``layers``, else read from the cells)."""
    if isinstance(report.get("layers"), list):
        return [str(layer) for layer in report["layers"]]
    seen = {layer for cells in report.get("hosts", {}).values() for layer in cells}
    known = [layer for layer in LAYER_ORDER if layer in seen]
    return known + sorted(seen - set(known))


def cell_status(cell: dict | None) -> str:
    """A cell's status for the page: the JSON's, told apart further where it failed, as
    UNREACHABLE (every failure is the host not answering) or ERROR (every failure is a
    check's setup or teardown erroring, not its assertion)."""
    if not cell:
        return "-"
    status = str(cell.get("status", "-"))
    failures = cell.get("failures") or []
    if status == "FAIL" and failures:
        if all(str(f.get("message", "")).startswith(UNREACHABLE_PREFIX) for f in failures):
            return "UNREACHABLE"
        if all(f.get("when", "call") != "call" for f in failures):
            return "ERROR"
    return status if status in CELL else "-"


def cell_words(status: str, cell: dict | None) -> str:
    """What a cell says: its status and counts, e.g. "FAIL 2/14", "PASS 5"."""
    words = CELL[status][1]
    if status in ("FAIL", "ERROR"):
        return f"{words} {cell['failed']}/{cell['failed'] + cell.get('passed', 0)}"
    if status == "PASS":
        return f"{words} {cell.get('passed', 0)}"
    return words


def host_status(report: dict, host: str) -> str:
    """failing, unreachable, passing or not checked (no check passed or failed)."""
    if host in report.get("unreachable", {}):
        return "unreachable"
    cells = report["hosts"][host].values()
    if any(cell.get("failed") for cell in cells):
        return "failing"
    return "passing" if any(cell.get("passed") for cell in cells) else "not checked"


def ordered_hosts(report: dict) -> list[tuple[int, str, str]]:
    """(row number, host, status) failing first, then unreachable, the rest after; inventory
    order within each group. The row number (inventory position) makes the host's id."""
    hosts = [(i, name, host_status(report, name)) for i, name in enumerate(report["hosts"])]
    return sorted(hosts, key=lambda row: HOST_RANK[row[2]])


def summary_line(rows: list[tuple[int, str, str]]) -> tuple[str, bool]:
    """("3 of 500 hosts failing: a, b, c", True), or ("All 32 hosts pass", False): the
    failing and unreachable hosts, at most NAMED of them named."""
    bad = [name for _, name, status in rows if status in ("failing", "unreachable")]
    if not rows:
        return "No host was verified", True
    if not bad:
        passing = sum(status == "passing" for _, _, status in rows)
        if passing == len(rows):
            return f"All {len(rows)} hosts pass", False
        return f"No host failing; {passing} of {len(rows)} hosts pass", False
    names = ", ".join(bad[:NAMED]) + (f" and {len(bad) - NAMED} more" if len(bad) > NAMED else "")
    return f"{len(bad)} of {len(rows)} hosts failing: {names}", True


def counts_line(report: dict, rows: list[tuple[int, str, str]], layers: list[str]) -> str:
    """Hosts by status, checks by outcome, failing hosts per layer, unhealthy GPUs."""
    by_status = Counter(status for _, _, status in rows)
    hosts = ", ".join(f"{by_status[s]} {s}" for s in HOST_RANK if by_status[s])
    checks: Counter = Counter()
    per_layer: Counter = Counter()
    for cells in report["hosts"].values():
        for layer, cell in cells.items():
            for key in ("failed", "passed", "not_applicable", "skipped"):
                checks[key] += int(cell.get(key, 0) or 0)
            per_layer[layer] += bool(cell.get("failed"))
    parts = [
        f"Hosts: {hosts or 'none'}.",
        f"Checks: {checks['failed']} failed, {checks['passed']} passed, "
        f"{checks['not_applicable']} not applicable, {checks['skipped']} skipped.",
    ]
    failing = [f"{layer} {per_layer[layer]}" for layer in layers if per_layer[layer]]
    if failing:
        parts.append(f"Failing hosts by layer: {', '.join(failing)}.")
    unhealthy = report.get("unhealthy_gpus") or {}
    gpus = {(h, g.get("gpu")) for h, found in unhealthy.items() for g in found}
    if unhealthy:
        parts.append(f"Unhealthy GPUs: {len(gpus)} on {len(unhealthy)} host(s).")
    return " ".join(parts)


def gpu_health(report: dict, host: str) -> tuple[list[dict], dict[Any, list[str]]] | None:
    """(the host's GPUs as read, {GPU index or None: why unhealthy}), or None for a host
    with no GPU in the report. GPUs known only from an unhealthy finding are listed too; a
    reason several checks give (the GPUs not read, say) is said once, naming them."""
    known = (report.get("gpus") or {}).get(host)
    unhealthy = (report.get("unhealthy_gpus") or {}).get(host) or []
    if known is None and not unhealthy:
        return None
    checks: dict[Any, dict[str, list[str]]] = {}  # GPU -> reason -> the checks saying it
    for finding in unhealthy:
        said = checks.setdefault(finding.get("gpu"), {})
        said.setdefault(str(finding.get("reason", "")), []).append(str(finding.get("check", "?")))
    reasons = {
        gpu: [f"{reason} — {', '.join(names)}" for reason, names in said.items()]
        for gpu, said in checks.items()
    }
    gpus = list(known or [])
    listed = {gpu.get("gpu") for gpu in gpus}
    gpus += [
        {"gpu": index, "pci_bus_id": next(
            (f.get("pci_bus_id", "") for f in unhealthy if f.get("gpu") == index), ""
        )}
        for index in reasons if index is not None and index not in listed
    ]  # fmt: skip
    return gpus, reasons


def gpu_cell(health: tuple[list[dict], dict] | None, link: str) -> str:
    """The grid's GPU cell: "7/8 ok" and one mark per GPU, an unhealthy one also marked ✗."""
    if health is None:
        return '<td class="z">none</td>'
    gpus, reasons = health
    if not gpus:
        return f'<td class="g f"><a href="#{link}">not read</a></td>'
    bad = sum(gpu.get("gpu") in reasons for gpu in gpus) + (None in reasons)
    marks = "".join(
        f'<i class="x">{esc(gpu.get("gpu"))}✗</i>' if gpu.get("gpu") in reasons
        else f"<i>{esc(gpu.get('gpu'))}</i>"
        for gpu in gpus
    )  # fmt: skip
    ok = len(gpus) - sum(gpu.get("gpu") in reasons for gpu in gpus)
    text = f"{ok}/{len(gpus)} ok"
    if bad:
        return f'<td class="g f"><a href="#{link}">{text}</a> {marks}</td>'
    return f'<td class="g">{text} {marks}</td>'


def has_details(report: dict, host: str, health) -> bool:
    """A host gets a section below the grid when it failed, or has GPU findings or notes."""
    failed = any(cell.get("failures") for cell in report["hosts"][host].values())
    notes = (report.get("gpu_notes") or {}).get(host)
    gpu_bad = health is not None and (bool(health[1]) or not health[0])
    return failed or gpu_bad or bool(notes) or host in report.get("unreachable", {})


def grid(report: dict, rows, layers: list[str], gpus: bool) -> str:
    """The host × layer table, one row per host, each cell's status written in it."""
    head = "".join(f'<th scope="col">{esc(layer)}</th>' for layer in layers)
    head += '<th scope="col">GPUs</th>' if gpus else ""
    lines = [f'<table id="grid"><thead><tr><th scope="col">host</th>{head}</tr></thead><tbody>']
    for number, host, status in rows:
        link = f"h-{number}"
        health = gpu_health(report, host)
        linked = has_details(report, host, health)
        name = esc(host)
        name = f'<a href="#{link}">{name}</a>' if linked else name
        cells = []
        for layer in layers:
            cell = report["hosts"][host].get(layer)
            state = cell_status(cell)
            words = esc(cell_words(state, cell))
            if state in ("FAIL", "ERROR", "UNREACHABLE"):
                words = f'<a href="#{link}">{words}</a>'
            cells.append(f'<td class="{CELL[state][0]}">{words}</td>')
        if gpus:
            cells.append(gpu_cell(health, link))
        row = f'<tr><th scope="row" class="{HOST_CSS[status]}">{name}</th>{"".join(cells)}</tr>'
        lines.append(row)
    lines.append("</tbody></table>")
    return "\n".join(lines)


def failures_html(report: dict, host: str, layers: list[str]) -> str:
    """Each failing check of a host: layer, check name and its message."""
    items = []
    for layer in layers:
        cell = report["hosts"][host].get(layer) or {}
        for failure in cell.get("failures") or []:
            kind = "" if failure.get("when", "call") == "call" else " (error)"
            items.append(
                f"<li>{esc(layer)}: <code>{esc(failure.get('check', '?'))}</code>{kind}"
                f"<pre>{esc(failure.get('message', ''))}</pre></li>"
            )
    return f"<h3>Failing checks</h3><ul>{''.join(items)}</ul>" if items else ""


def gpus_html(health) -> str:
    """A GPU host's GPUs, one row each: index, PCI bus id, model, healthy or why not."""
    if health is None:
        return ""
    gpus, reasons = health
    rows = []
    for gpu in gpus:
        why = reasons.get(gpu.get("gpu"))
        state = f"UNHEALTHY: {'; '.join(why)}" if why else "healthy"
        rows.append(
            f'<tr class="{"f" if why else "p"}"><td>{esc(gpu.get("gpu"))}</td>'
            f"<td>{esc(gpu.get('pci_bus_id', ''))}</td><td>{esc(gpu.get('name', ''))}</td>"
            f"<td>{esc(state)}</td></tr>"
        )
    host_wide = "".join(f"<li>{esc(why)}</li>" for why in reasons.get(None, []))
    table = (
        "<table><thead><tr><th>GPU</th><th>PCI bus id</th><th>model</th><th>health</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p>The GPUs could not be read.</p>"
    )
    return "<h3>GPUs</h3>" + table + (f"<ul>{host_wide}</ul>" if host_wide else "")


def host_section(report: dict, number: int, host: str, status: str, layers: list[str]) -> str:
    """One host's ``<details>``: its status and failing layers in the summary; the failing
    checks with their messages, its GPUs and notes inside (the body carries the id)."""
    cells = report["hosts"][host]
    failing = [f"{layer} {cells[layer]['failed']}" for layer in layers if cells.get(layer, {})
               .get("failed")]  # fmt: skip
    said = f"{status.upper()}: {esc(host)}" + (f" — failed: {esc(', '.join(failing))}"
                                                 if failing else "")  # fmt: skip
    why = report.get("unreachable", {}).get(host)
    body = f"<p>{esc(UNREACHABLE_PREFIX + str(why))}</p>" if why else ""
    body += failures_html(report, host, layers) + gpus_html(gpu_health(report, host))
    notes = (report.get("gpu_notes") or {}).get(host) or []
    if notes:
        body += "<h3>Notes</h3><ul>" + "".join(f"<li>{esc(note)}</li>" for note in notes) + "</ul>"
    return (
        f'<details class="host"><summary>{said}</summary>'
        f'<div id="h-{number}">{body}</div></details>'
    )


def render(report: dict) -> str:
    """The whole page for one fleet report (see the module docstring)."""
    layers = layers_of(report)
    rows = ordered_hosts(report)
    line, bad = summary_line(rows)
    gpus = bool(report.get("gpus") or report.get("unhealthy_gpus"))
    sections = [
        host_section(report, number, host, status, layers)
        for number, host, status in rows
        if has_details(report, host, gpu_health(report, host))
    ]
    legend = "".join(f'<span class="{css}">{esc(words)}</span>' for css, words in CELL.values())
    footer = " · ".join(
        esc(part) for part in (report.get("generated_at"), report.get("prefetched")) if part
    )
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gpufleet fleet report: {esc(line)}</title><style>{CSS}</style></head><body>",
        "<h1>gpufleet fleet report</h1>",
        f'<p id="summary" class="sum {"bad" if bad else "ok"}">{esc(line)}</p>',
        f'<p id="counts">{esc(counts_line(report, rows, layers))}</p>',
        f'<p class="legend">Cell status: {legend}</p>',
        grid(report, rows, layers, gpus),
        f'<h2>Hosts to look at ({len(sections)})</h2>' if sections else "",
        '<div id="hosts">', *sections, "</div>",
        f"<p><small>{footer}</small></p>" if footer else "",
        "</body></html>",
        "",
    ])  # fmt: skip
