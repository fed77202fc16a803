"""Several small files of a host read in one command, each after a marker line: the one
reader behind the apt sources fact (kit.apt_sources) and the daemon.json fact
(kit.daemon_json). A path that is not a file (a glob that matched nothing) is left out, and
the command always succeeds: a missing file is an answer, not an error."""

from __future__ import annotations

MARK = "@@gpufleet-file@@ "


def cat_command(paths: str) -> str:
    """Shell that prints each of ``paths`` (shell words; globs allowed) after a marker."""
    return f'for f in {paths}; do [ -f "$f" ] && echo "{MARK}$f" && cat "$f"; done; true'


def split(output: list[str]) -> dict[str, list[str]]:
    """{path: its lines} from cat_command's output, in the order printed."""
    files: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output:
        if line.startswith(MARK):
            current = files.setdefault(line[len(MARK) :], [])
        elif current is not None:
            current.append(line)
    return files
