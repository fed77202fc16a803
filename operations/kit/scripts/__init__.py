"""The shell scripts the deploy runs on hosts, one ``.sh`` file each, filled in one way.

A script holds ``@NAME@`` placeholders where a shell word goes (never inside quotes);
``render(name, NAME=value, ...)`` fills each with its value as one shell word
(``operations.kit.quoting.shell``: read back by the shell as exactly that value, NUL refused),
so no value, whatever it holds, can become shell code. ``raw_values`` fills placeholders with
text as it is: only for values that are deliberately shell code the project wrote (a fragment
shared between scripts, a list of words each already quoted), never a config value.

A placeholder the script holds that no value fills, or a value whose placeholder the script
lacks, raises ``ScriptError`` (a programming error, found by the first plan that renders it).

Lines of a file that are only for its readers and linters are left out of what is sent:
notes (lines starting with ``##``) and shellcheck directives (``# shellcheck ...``), so the
files can say why a finding is deliberate without changing the commands the deploy runs.
Every file passes ``shellcheck -s sh`` (tests/unit/test_scripts.py, ``./dev test``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from operations.kit.quoting import shell

DIRECTORY = Path(__file__).parent
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_FOR_READERS = re.compile(r"^[ \t]*(?:##.*|# shellcheck .*)\n", re.MULTILINE)


class ScriptError(LookupError):
    """A script rendered with a placeholder left unfilled or a value it has no place for."""


@functools.cache
def source(name: str) -> str:
    """The text of ``scripts/<name>.sh`` as sent to hosts (notes and directives left out),
    read once per process."""
    text = (DIRECTORY / f"{name}.sh").read_text(encoding="utf-8")
    return _FOR_READERS.sub("", text)


def placeholders(name: str) -> frozenset[str]:
    """The placeholder names script ``name`` holds."""
    return frozenset(PLACEHOLDER.findall(source(name)))


def render(
    name: str,
    /,
    *,
    raw_values: Mapping[str, str] | None = None,
    keys: Mapping[str, str] | None = None,
    **values: Any,
) -> str:
    """Script ``name`` with each ``@NAME@`` filled: ``values`` as shell words (``keys``
    names the setting a value came from, for the error a NUL gives), ``raw_values`` as
    the shell code they are."""
    raw = dict(raw_values or {})
    _check(name, set(values), set(raw))
    keys = keys or {}
    words = {key: shell(value, keys.get(key, key)) for key, value in values.items()}
    filled = {**words, **raw}
    return PLACEHOLDER.sub(lambda match: filled[match.group(1)], source(name))


def _check(name: str, quoted: set[str], raw: set[str]) -> None:
    both = quoted & raw
    if both:
        raise ScriptError(f"{name}.sh: {', '.join(sorted(both))} given both quoted and raw")
    wanted = placeholders(name)
    missing, unknown = wanted - quoted - raw, (quoted | raw) - wanted
    if missing:
        raise ScriptError(f"{name}.sh: no value for {', '.join(sorted(missing))}")
    if unknown:
        raise ScriptError(f"{name}.sh has no placeholder {', '.join(sorted(unknown))}")
