"""The Grafana provisioning files (operations/monitoring/grafana/*.yml) and dashboards
(operations/monitoring/dashboards/*.json): they load, every panel queries the provisioned
datasource by uid, every PromQL expression parses (a lightweight reader here; the real promtool
when it is there) and names only known functions, and every template variable used is defined.

The PromQL reader (``promql_metric_names``) also feeds tests/unit/test_metric_names.py, which
checks each metric a panel or an alert rule queries against the stand-ins' /metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "operations" / "monitoring"
DASHBOARDS = MONITORING / "dashboards"
GRAFANA = MONITORING / "grafana"
REQUIRED = os.environ.get("GPUFLEET_REQUIRE_LAB") == "1"
DATASOURCE_UID = "gpufleet-prometheus"
DASHBOARD_FOLDER = "/var/lib/grafana/dashboards/gpufleet"
PLACEHOLDERS = {"GPUFLEET_PROMETHEUS_URL", "GPUFLEET_SCRAPE_INTERVAL"}
EXPECTED = {  # file -> uid: the uids are what links and bookmarks use, so they stay put
    "fleet-overview.json": "gpufleet-fleet",
    "gpu-health.json": "gpufleet-gpu-health",
    "vllm-serving.json": "gpufleet-vllm",
}
MIN_SCHEMA_VERSION = 36  # Grafana 9.x; current Grafana migrates anything from here on

# --- PromQL, as Prometheus 2.42 (Debian 12's, the one the deploy installs) reads it -------

FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar",
    "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
})  # fmt: skip
AGGREGATIONS = frozenset({
    "avg", "bottomk", "count", "count_values", "group", "max", "min", "quantile", "stddev",
    "stdvar", "sum", "topk",
})  # fmt: skip
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = GROUPING | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
      | (?P<range>\[[0-9a-zA-Z:.]*\])
      | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
      | (?P<number>0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?[smhdwy]*)
      | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>=,(){}@])""",
    re.VERBOSE,
)
PAIRS = {"(": ")", "{": "}"}


class PromQLError(ValueError):
    """An expression this reader cannot accept (and Prometheus would not either)."""


def tokens(expr: str) -> list[tuple[str, str]]:
    """The expression as (kind, text) tokens, spaces dropped; PromQLError on a stray
    character or an unbalanced bracket."""
    found, position, stack = [], 0, []
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if match is None:
            raise PromQLError(f"unexpected {expr[position : position + 12]!r} in {expr!r}")
        position = match.end()
        kind, text = match.lastgroup, match.group()
        if kind == "space":
            continue
        if text in PAIRS:
            stack.append(PAIRS[text])
        elif text in (")", "}") and (not stack or stack.pop() != text):
            raise PromQLError(f"unbalanced {text!r} in {expr!r}")
        found.append((kind, text))
    if stack:
        raise PromQLError(f"{stack[-1]!r} missing in {expr!r}")
    return found


def _skip_group(found: list[tuple[str, str]], index: int) -> int:
    """The index after the bracketed group that opens at `index`."""
    closing, depth = PAIRS[found[index][1]], 0
    for position in range(index, len(found)):
        text = found[position][1]
        if text == found[index][1]:
            depth += 1
        elif text == closing:
            depth -= 1
            if depth == 0:
                return position + 1
    raise PromQLError("unbalanced brackets")  # tokens() already refused this


def promql_metric_names(expr: str) -> set[str]:
    """Every metric name the expression selects. Label matchers, grouping labels, strings
    and durations are skipped; a call to anything but a Prometheus function or aggregation is
    a PromQLError, and so is a `{__name__=...}` selector (dashboards name metrics plainly)."""
    found, names, index = tokens(expr), set(), 0
    while index < len(found):
        kind, text = found[index]
        following = found[index + 1][1] if index + 1 < len(found) else None
        if text == "{":
            if any(t == "__name__" for _, t in found[index : _skip_group(found, index)]):
                raise PromQLError(f"__name__ selector in {expr!r}")
            index = _skip_group(found, index)
            continue
        if kind == "name" and text in GROUPING and following == "(":
            index = _skip_group(found, index + 1)
            continue
        if kind == "name" and following == "(" and text not in FUNCTIONS | AGGREGATIONS | KEYWORDS:
            raise PromQLError(f"unknown function {text}() in {expr!r}")
        if kind == "name" and following != "(" and text not in AGGREGATIONS | KEYWORDS:
            names.add(text)
        index += 1
    return names


# --- Grafana's template syntax ------------------------------------------------------------

BUILTIN_VARIABLES = {  # what a Prometheus panel may use without defining it; 5m stands in
    "__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__interval_ms": "60000",
    "__range_s": "3600", "__range_ms": "3600000",
}  # fmt: skip
VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.+),\s*)?(?P<label>\w+)\s*\)\s*$")
QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$")


def variables_used(text: str) -> set[str]:
    """The template variables a string refers to ($x, ${x}, ${x:format}, [[x]])."""
    return {next(g for g in match.groups() if g) for match in VARIABLE.finditer(text)}


def substitute(text: str) -> str:
    """The expression as Prometheus would receive it: built-in intervals as durations, any
    other variable as a regex-safe value (variables belong inside label matcher strings)."""

    def value(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        return BUILTIN_VARIABLES.get(name, "x")

    return VARIABLE.sub(value, text)


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard: where it is (for messages) and its text."""

    dashboard: str  # the file name
    title: str  # the dashboard's title
    panel: str  # panel title, or "variable NAME" / "annotation NAME"
    expr: str  # as written, Grafana variables and all

    def promql(self) -> str:
        """The expression Prometheus receives (variables substituted)."""
        return substitute(self.expr)

    def where(self) -> str:
        """`dashboard 'T' (file), panel 'P'`, for assertion messages."""
        return f"dashboard {self.title!r} ({self.dashboard}), panel {self.panel!r}"


def load_dashboards() -> dict[str, dict]:
    """{file name: dashboard JSON} for every dashboard file."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def load_provisioning(name: str) -> dict:
    """A provisioning YAML file. They are written as JSON after a comment header (YAML 1.2 is a
    superset of JSON), so the standard library reads them exactly as Grafana does."""
    lines = (GRAFANA / name).read_text().splitlines()
    return json.loads("\n".join(line for line in lines if not line.lstrip().startswith("#")))


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, those inside collapsed rows too; rows themselves included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panels(panel)


def variable_query(variable: dict) -> str | None:
    """The PromQL inside a query variable's label_values(...)/query_result(...), if any."""
    query = variable.get("query")
    text = query.get("query", "") if isinstance(query, dict) else (query or "")
    for pattern in (LABEL_VALUES, QUERY_RESULT):
        match = pattern.match(text)
        if match:
            return match.group("expr")
    return None


def queries(name: str, dashboard: dict) -> list[Query]:
    """Every expression the dashboard sends: panel targets, variable and annotation queries."""
    title = dashboard.get("title", name)
    found = [
        Query(name, title, panel.get("title", f"panel {panel.get('id')}"), target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        expr = variable_query(variable) if variable.get("type") == "query" else None
        if expr:
            found.append(Query(name, title, f"variable {variable['name']}", expr))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            found.append(Query(name, title, f"annotation {annotation['name']}", annotation["expr"]))
    return found


def all_queries() -> list[Query]:
    """Every expression of every dashboard."""
    return [query for name, board in load_dashboards().items() for query in queries(name, board)]


# --- the PromQL reader itself -------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (job) (up{gpufleet_host=~"a|b", job!="x"})', {"up"}),
        (
            "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket"
            "[5m])))",
            {"vllm:time_to_first_token_seconds_bucket"},
        ),
        (
            "DCGM_FI_DEV_FB_USED / on (gpufleet_host, gpu) group_left (modelName) "
            "(DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) * 100",
            {"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"},
        ),
        ('count(ALERTS{alertstate="firing"}) or vector(0)', {"ALERTS"}),
        (
            "sum without (cpu, mode) (rate(node_cpu_seconds_total[5m] offset 1h)) > bool 1e3",
            {"node_cpu_seconds_total"},
        ),
        ('label_replace(up, "host", "$1", "instance", "(.*):.*")', {"up"}),
        ("topk(3, node_load1)", {"node_load1"}),
        ("a and (b or on (x) c) unless d", {"a", "b", "c", "d"}),
        ("max_over_time((x == 79 or x == 48)[1h:1m])", {"x"}),
    ],
)
def test_reader_finds_metric_names(expr, names):
    assert promql_metric_names(expr) == names


@pytest.mark.parametrize(
    ("expr", "error"),
    [
        ("sum(rate(up[5m])", "')' missing"),
        ("sum(up))", "unbalanced ')'"),
        ('up{job="node"', "'}' missing"),
        ("rates(up[5m])", "unknown function rates()"),
        ('{__name__="up"}', "__name__ selector"),
        ("up ; down", "unexpected ';"),
    ],
)
def test_reader_refuses_bad_expressions(expr, error):
    with pytest.raises(PromQLError, match=re.escape(error)):
        promql_metric_names(expr)


def test_substitute_gives_prometheus_an_expression():
    expr = 'rate(x_total{gpufleet_host=~"$host", gpu=~"${gpu}"}[$__rate_interval])'
    assert substitute(expr) == 'rate(x_total{gpufleet_host=~"x", gpu=~"x"}[5m])'
    assert variables_used(expr) == {"host", "gpu", "__rate_interval"}


# --- provisioning -------------------------------------------------------------------------


def test_datasource_is_the_gpufleet_prometheus():
    config = load_provisioning("datasource.yml")
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["name"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["url"] == "${GPUFLEET_PROMETHEUS_URL}"
    assert source["jsonData"]["timeInterval"] == "${GPUFLEET_SCRAPE_INTERVAL}"
    assert [d["name"] for d in config["deleteDatasources"]] == [DATASOURCE_UID]


def test_provisioning_placeholders_are_the_documented_ones():
    """The deploy substitutes exactly these (or Grafana reads them from its environment): a
    new ${...} here would reach Grafana unset."""
    text = json.dumps([load_provisioning(n) for n in ("datasource.yml", "dashboards.yml")])
    assert set(re.findall(r"\$\{(\w+)\}", text)) == PLACEHOLDERS
    assert not re.search(r"\$(?!\{)", text), "only ${NAME} placeholders, no bare $NAME"


def test_dashboards_provider_points_at_the_json_folder():
    config = load_provisioning("dashboards.yml")
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARD_FOLDER
    assert provider["folder"] == "gpufleet"
    assert provider["allowUiUpdates"] is False  # the deploy's files are the source
    header = (GRAFANA / "dashboards.yml").read_text().split("{", 1)[0]
    for path in (
        "/etc/grafana/provisioning/datasources/",
        "/etc/grafana/provisioning/dashboards/",
        DASHBOARD_FOLDER,
    ):
        assert path in header, f"the header comment should say where files go: {path}"


# --- dashboards ---------------------------------------------------------------------------


def test_the_three_dashboards_are_there_with_stable_uids():
    boards = load_dashboards()
    assert {name: board["uid"] for name, board in boards.items()} == EXPECTED
    for name, board in boards.items():
        assert isinstance(board["schemaVersion"], int), name
        assert board["schemaVersion"] >= MIN_SCHEMA_VERSION, name
        assert board["id"] is None, f"{name}: provisioned dashboards carry no database id"
        assert "gpufleet" in board["tags"], name
        assert board["title"].startswith("gpufleet / "), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panel_ids_are_unique(name):
    ids = [panel["id"] for panel in panels(load_dashboards()[name])]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {sorted(ids)}"
    assert all(isinstance(i, int) and i > 0 for i in ids), name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_do_not_overlap(name):
    """Grafana pushes overlapping panels down; overlap means a gridPos typo."""
    taken: dict[tuple[int, int], dict] = {}
    for panel in panels(load_dashboards()[name]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']!r} is wider than the grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = taken.setdefault((x, y), panel)
                assert other is panel, f"{name}: {panel['title']!r} overlaps {other['title']!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panel_titles_are_unique(name):
    """Messages (and people) name a panel by its title."""
    titles = [panel["title"] for panel in panels(load_dashboards()[name])]
    assert len(titles) == len(set(titles)), f"{name}: a title twice in {titles}"


def _datasource_problems(name: str, board: dict) -> list[str]:
    """Panels, targets, variables and annotations that do not name the provisioned
    datasource by uid."""
    wanted = {"type": "prometheus", "uid": DATASOURCE_UID}
    problems = []
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        owners = [(f"panel {panel['title']!r}", panel)]
        owners += [(f"panel {panel['title']!r} target", t) for t in panel.get("targets", [])]
        problems += [f"{name}: {what}" for what, o in owners if o.get("datasource") != wanted]
        if not panel.get("targets"):
            problems.append(f"{name}: panel {panel['title']!r} has no query")
    for variable in board.get("templating", {}).get("list", []):
        if variable["type"] == "query" and variable.get("datasource") != wanted:
            problems.append(f"{name}: variable {variable['name']}")
    for annotation in board.get("annotations", {}).get("list", []):
        if annotation.get("datasource") != wanted:
            problems.append(f"{name}: annotation {annotation.get('name')!r}")
    return problems


def test_every_query_uses_the_provisioned_datasource_by_uid():
    problems = [
        p for name, board in load_dashboards().items() for p in _datasource_problems(name, board)
    ]
    assert not problems, "not the gpufleet-prometheus datasource by uid:\n" + "\n".join(problems)


def test_every_expression_parses():
    problems, count = [], 0
    for query in all_queries():
        try:
            count += bool(promql_metric_names(query.promql()))
        except PromQLError as exc:
            problems.append(f"{query.where()}: {exc}")
    assert not problems, "\n".join(problems)
    assert count >= 40, f"only {count} expressions select a metric"


def _promtool() -> str:
    """The real promtool (./dev unpacks Debian's into .tools/bin): fail without it in CI."""
    found = ROOT / ".tools" / "bin" / "promtool"
    if found.is_file():
        return str(found)
    found = shutil.which("promtool")
    if found:
        return found
    if REQUIRED:
        pytest.fail("promtool is missing (./dev unpacks it into .tools/bin)")
    pytest.skip("promtool is missing (./dev unpacks it into .tools/bin; CI requires it)")


def test_every_expression_passes_the_real_promql_parser(tmp_path):
    """promtool cannot check a lone expression, but `check rules` parses each rule's expr
    with Prometheus's own parser: one recording rule per dashboard expression."""
    promtool = _promtool()
    found = all_queries()
    rules = [
        {"record": f"gpufleet:dashboard_check:{index}", "expr": query.promql()}
        for index, query in enumerate(found)
    ]
    path = tmp_path / "dashboards.rules.yml"  # JSON is YAML: no YAML library needed
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    output = done.stdout + done.stderr
    for index in map(int, re.findall(r"gpufleet:dashboard_check:(\d+)", output)):
        output += f"\n  = {found[index].where()}: {found[index].expr}"
    assert done.returncode == 0, output
    assert f"SUCCESS: {len(rules)} rules found" in output, output


def test_promtool_check_can_fail(tmp_path):
    """The check above would see a bad expression (Prometheus 2.42 has no histogram_avg)."""
    promtool = _promtool()
    path = tmp_path / "bad.rules.yml"
    rule = {"record": "gpufleet:bad", "expr": "histogram_avg(rate(x[5m]))"}
    path.write_text(json.dumps({"groups": [{"name": "bad", "rules": [rule]}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "histogram_avg" in done.stdout + done.stderr


def _used_variables(board: dict) -> set[str]:
    """Variables referred to by queries, legends, titles and links of the dashboard."""
    texts = [q.expr for q in queries("", board)]
    for panel in panels(board):
        texts.append(panel.get("title", ""))
        texts += [t.get("legendFormat", "") for t in panel.get("targets", [])]
        texts += [link.get("url", "") for link in panel.get("links", [])]
        links = panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
        texts += [link.get("url", "") for link in links]
    return set().union(*(variables_used(t) for t in texts))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_variables_used_are_defined(name):
    board = load_dashboards()[name]
    defined = {v["name"] for v in board.get("templating", {}).get("list", [])}
    builtins = set(BUILTIN_VARIABLES) | {
        "__data",
        "__value",
        "__field",
        "__series",
        "__all",
        "__url_time_range",
    }
    undefined = _used_variables(board) - defined - builtins
    assert not undefined, f"{name}: variables used but not defined: {sorted(undefined)}"
    unused = defined - _used_variables(board)
    assert not unused, f"{name}: variables defined but never used: {sorted(unused)}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_host_variable_lists_gpufleet_hosts_from_up(name):
    board = load_dashboards()[name]
    (host,) = [v for v in board["templating"]["list"] if v["name"] == "host"]
    assert re.fullmatch(r"label_values\(up(\{[^}]*\})?, gpufleet_host\)", host["definition"])
    assert variable_query(host) is not None and host["definition"] == host["query"]["query"]


def test_links_point_at_existing_dashboards():
    uids = set(EXPECTED.values())
    for name, board in load_dashboards().items():
        urls = [
            link.get("url", "")
            for p in panels(board)
            for link in p.get("fieldConfig", {}).get("defaults", {}).get("links", [])
        ]
        for uid in re.findall(r"/d/([\w-]+)", " ".join(urls)):
            assert uid in uids, f"{name}: a link to dashboard uid {uid!r}, which is not ours"


def test_fatal_xid_panel_uses_the_configured_default_codes():
    """The dashboard counts the same fatal Xids as the alert and the verify check."""
    from operations.config.model import FATAL_XIDS

    board = load_dashboards()["gpu-health.json"]
    (panel,) = [p for p in panels(board) if p["title"] == "GPUs with a fatal Xid (1 h)"]
    codes = re.findall(r"DCGM_FI_DEV_XID_ERRORS\{[^}]*\} == (\d+)", panel["targets"][0]["expr"])
    assert sorted(map(int, codes)) == sorted(FATAL_XIDS)
