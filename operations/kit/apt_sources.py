"""The host's own apt sources, edited in place: components added, nothing else rewritten.

Used where a layer needs an archive area the host has not enabled (Debian's ``contrib
non-free non-free-firmware`` for the NVIDIA driver). Only the ``Components:`` field of a
deb822 stanza, or the component list of a one-line ``deb`` entry, of the entries for the
host's own release (``bookworm``, ``bookworm-updates``, ``bookworm-security``…) is touched.
"""

from __future__ import annotations

import re

from pyinfra.api import FactBase

from operations.kit import files

SOURCE_FILES = (
    "/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources"
)


class AptSourceFiles(FactBase):
    """{path: text} of sources.list and every sources.list.d/*.list|*.sources, one command."""

    def command(self) -> str:
        return files.cat_command(SOURCE_FILES)

    def process(self, output: list[str]) -> dict[str, str]:
        return {path: "\n".join(lines) + "\n" for path, lines in files.split(output).items()}


def _ours(suites: list[str], codename: str) -> bool:
    return any(suite == codename or suite.startswith(f"{codename}-") for suite in suites)


def _add(existing: list[str], wanted: tuple[str, ...]) -> list[str]:
    return existing + [c for c in wanted if c not in existing]


def _one_line(text: str, codename: str, wanted: tuple[str, ...]) -> str:
    out = []
    for line in text.splitlines():
        match = re.match(
            r"^(\s*deb(?:-src)?\s+(?:\[[^]]*\]\s+)?\S+\s+)(\S+)((?:\s+\S+)*)\s*$", line
        )
        if match and _ours([match.group(2)], codename):
            head, suite, comps = match.groups()
            line = f"{head}{suite} {' '.join(_add(comps.split(), wanted))}"
        out.append(line)
    return "\n".join(out) + "\n"


def _deb822(text: str, codename: str, wanted: tuple[str, ...]) -> str:
    stanzas = re.split(r"\n(?=\s*\n)", text)
    return "\n".join(_deb822_stanza(stanza, codename, wanted) for stanza in stanzas)


_FALSE = ("no", "false", "without", "off", "disable")
_TRUE = ("yes", "true", "with", "on", "enable")


def apt_bool(value: str | None, default: bool = True) -> bool:
    """A boolean option as apt reads it (StringToBool: yes/true/with/on/enable, their
    opposites, or a number; any case); ``default`` when absent or unreadable. The deploy and
    the lab read ``Enabled:`` with this one rule."""
    word = (value or "").strip().lower()
    if word in _FALSE or word in _TRUE:
        return word in _TRUE
    try:
        return int(word) != 0
    except ValueError:
        return default


def deb822_fields(paragraph: str) -> dict[str, str]:
    """The fields of one deb822 paragraph, keys lower-cased; comment lines skipped and
    continuation lines (an inline Signed-By key) joined to their field."""
    fields: dict[str, str] = {}
    last = None
    for raw in paragraph.splitlines():
        if raw.startswith("#") or not raw.strip():
            continue
        if raw[0] in " \t":
            if last is not None:
                fields[last] += "\n" + raw.strip()
        elif ":" in raw:
            key, _, value = raw.partition(":")
            last = key.strip().lower()
            fields[last] = value.strip()
    return fields


def _deb822_stanza(stanza: str, codename: str, wanted: tuple[str, ...]) -> str:
    fields = deb822_fields(stanza)
    if "deb" not in fields.get("types", "").split() or not apt_bool(fields.get("enabled")):
        return stanza
    if not _ours(fields.get("suites", "").split(), codename):
        return stanza

    def components(match: re.Match) -> str:
        return f"{match.group(1)}{' '.join(_add(match.group(2).split(), wanted))}"

    return re.sub(r"(?mi)^(Components:\s*)(.*)$", components, stanza, count=1)


def with_components(text: str, path: str, codename: str, wanted: tuple[str, ...]) -> str:
    """The file's text with ``wanted`` components on every entry of release ``codename``."""
    if path.endswith(".sources"):
        return _deb822(text, codename, wanted)
    return _one_line(text, codename, wanted)
