"""Files rendered from the config model, so defaults, docs and schema never drift from it.

    python -m operations.cli.render            # rewrite all three files
    python -m operations.cli.render --check    # exit 1 if any is stale (CI)

The three outputs: ``group_data/all.py`` (every default with its comment),
``schema/gpufleet.schema.json`` (JSON Schema of the flat data keys, for editors) and the
config reference between the markers in ``README.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from operations.config.model import SECTIONS, SETTINGS, FleetConfig

ROOT = Path(__file__).resolve().parents[2]
GROUP_DATA_ALL = ROOT / "group_data" / "all.py"
SCHEMA = ROOT / "schema" / "gpufleet.schema.json"
README = ROOT / "README.md"
ALERTS_BEGIN, ALERTS_END = "<!-- alerts:begin -->", "<!-- alerts:end -->"
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def _default(section: str, field: str) -> Any:
    return getattr(getattr(FleetConfig(), section), field)


def _python_literal(value: Any) -> str:
    """A default as Python source in ruff's style (double quotes); URLs and addresses as str."""
    if isinstance(value, list):
        return "[" + ", ".join(_python_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_python_literal(k)}: {_python_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def render_group_data() -> str:
    """group_data/all.py: every setting, its default and its one-line doc."""
    lines = [
        '"""Defaults for every host: rendered by `python -m operations.cli.render`, do not edit.',
        "",
        "Override any key in group_data/<group>.py, in host data in the inventory, or with",
        "`--data key=value`. The README's config reference says what each key allows.",
        '"""',
    ]
    for section, model in SECTIONS.items():
        lines += ["", f"# --- {section}: {model.__doc__.strip()}"]
        for field, info in model.model_fields.items():
            lines.append(f"# {info.description}")
            lines.append(f"{section}_{field} = {_python_literal(_default(section, field))}")
    return "\n".join(lines) + "\n"


def render_schema() -> str:
    """JSON Schema of the flat data keys a group_data file or host data may set."""
    properties = {}
    for key, (section, field) in SETTINGS.items():
        schema = SECTIONS[section].model_json_schema()
        properties[key] = schema["properties"][field]
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gpufleet host data",
        "description": "Settings of one host, as pyinfra data keys <section>_<field>.",
        "type": "object",
        "properties": properties,
    }
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def _allowed_words(schema: dict) -> str:
    """A short 'allowed' column from a field's JSON Schema."""
    if "x-allowed" in schema:
        return schema["x-allowed"]
    if "anyOf" in schema:
        return " or ".join(_allowed_words(option) for option in schema["anyOf"])
    if "enum" in schema or "const" in schema:
        return ", ".join(f"`{v}`" for v in schema.get("enum", [schema.get("const")]))
    if schema.get("type") == "null":
        return "unset"
    if schema.get("type") == "array":
        return f"list of {_allowed_words(schema.get('items', {}))}"
    bounds = [f"{op} {schema[key]}" for key, op in _BOUNDS if key in schema]
    return " ".join([schema.get("format", schema.get("type", "any value")), *bounds])


_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


def render_reference() -> str:
    """The README's config reference: one table per section."""
    out = []
    for section, model in SECTIONS.items():
        schema = model.model_json_schema()
        out += [f"#### `{section}_*`: {model.__doc__.strip()}", ""]
        out += ["| key | default | allowed | what it does |", "|---|---|---|---|"]
        for field, info in model.model_fields.items():
            default = json.dumps(_default(section, field), default=str)
            allowed = _allowed_words(schema["properties"][field]).replace("|", "\\|")
            out.append(f"| `{section}_{field}` | `{default}` | {allowed} | {info.description} |")
        out.append("")
    return "\n".join(out)


def render_alerts() -> str:
    """The README's alert table: one row per rule of operations/monitoring/alerts.py."""
    from operations.monitoring.alerts import ALERTS

    out = ["| alert | severity | for | fires when | what to do |", "|---|---|---|---|---|"]
    for alert in ALERTS:
        cells = [f"`{alert.name}`", alert.severity, alert.for_, alert.summary, alert.runbook]
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(out) + "\n"


def _between(readme: str, begin: str, end: str, text: str) -> str:
    head, _, rest = readme.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{text}{end}{tail}" if rest else readme


def _readme_with_reference(readme: str) -> str:
    readme = _between(readme, ALERTS_BEGIN, ALERTS_END, render_alerts())
    return _between(readme, BEGIN, END, render_reference())


def outputs() -> dict[Path, str]:
    """Each rendered file and the text it must hold."""
    return {
        GROUP_DATA_ALL: render_group_data(),
        SCHEMA: render_schema(),
        README: _readme_with_reference(README.read_text()),
    }


def main(argv: list[str]) -> int:
    stale = [
        path for path, text in outputs().items() if not path.exists() or path.read_text() != text
    ]
    if "--check" in argv:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run: python -m operations.cli.render)")
        return 1 if stale else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"rendered {len(outputs())} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
