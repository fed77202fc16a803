"""One quoting rule per place a value lands on a host: used by every layer, never improvised.

The config model refuses nonsense first; these rules make what it lets through safe in each
context anyway (inventories may come from cloud tags: not trusted text). Each rule either
returns the value written so the context reads it back as exactly that value, or, where the
context has no way to say it, refuses it with the usual one-line error (host, key, value,
what is allowed) while the deploy is planned, before anything runs on any host:

- ``shell``: one shell word, single-quoted (``shlex.quote``), for ``sh -c`` on the host.
  Only NUL is refused (no command line can carry it). ``shell_say`` prints a message whose
  parts are such words; ``printf``, never ``echo`` (dash's echo reads backslashes).
- ``apt_conf_string``: a ``"value"`` of apt.conf(5). Its strings have no escapes ("Values must
  not include backslashes or extra quotation marks"), so ``"``, ``\\`` and control characters
  are refused; ``apt_conf_name``: a part of an option name (a host in
  ``Acquire::http::Proxy::<host>``): host-name characters only, ``::`` would open a scope.
- ``apt_field``: the one-word value of an apt preferences field (``Pin: version GLOB``): no
  blanks, control characters or ``#``; ``apt_source_word``: one word of a sources line (``deb
  [options] URI SUITE``): that, and no ``"`` or brackets but an IPv6 host's (apt groups words
  with quotes and brackets there).
- ``ini_value``: a value of a dnf ``.repo`` file: one line.
- ``package``: a package name (or ``name=version``, ``name-version*``) handed to pyinfra's
  apt/dnf operations, which put it on the command line unquoted: package-name characters only.
- ``container_value``: a ``docker run`` option value or positional (the argument list is joined
  with ``shell``): never starting with ``-`` (it would be read as an option), no NUL;
  ``volume_source``: a bind-mount source of ``--volume SRC:DST``, which has no escape for ``:``;
  ``image_reference``: an image name, which pyinfra's docker facts put on a command line unquoted.
- ``json_text``: daemon.json and other JSON files: ``json.dumps``, NaN and infinities refused
  (they are not JSON; dockerd would refuse the file).

The vLLM secrets file (operations/config/secrets.py) single-quotes values whose characters it
restricts to printable ASCII without quotes, blanks or backslashes.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from typing import Any

from pyinfra.context import ctx_host

from operations.config.load import ConfigError, Problem

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: whatever a reader
# of a line-based file (or a person reading a log) could take for the end of a line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_APT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~:=*-]*")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*")
_IPV6_HOST = re.compile(r"^[a-z][a-z0-9+.-]*://\[[0-9A-Fa-f:.]+\]")


class Unrepresentable(ConfigError):
    """A value that cannot be written into its context; raised while the deploy is planned."""

    def __init__(self, key: str, value: Any, allowed: str):
        host = ctx_host.get().name if ctx_host.isset() else "controller"
        super().__init__([Problem(host, key, value, allowed)])


def _refuse_if(bad: bool, key: str, value: Any, allowed: str, shown: Any = None) -> None:
    if bad:
        raise Unrepresentable(key, value if shown is None else shown, allowed)


def shell(value: Any, key: str = "value") -> str:
    """``value`` as one shell word that the shell reads back unchanged."""
    text = str(value)
    _refuse_if("\0" in text, key, value, "a NUL character cannot be part of a shell command")
    return shlex.quote(text)


def shell_join(args: Iterable[Any], key: str = "value") -> str:
    """A command line of ``args``, each one shell word."""
    return " ".join(shell(arg, key) for arg in args)


def shell_say(*parts: str) -> str:
    """Shell that prints one line on stderr made of ``parts``: shell words (``shell(...)``)
    or expansions written in double quotes (``"$((free / 1024))"``), concatenated."""
    return f"printf '%s\\n' {''.join(parts)} >&2"


def apt_conf_string(value: Any, key: str, shown: Any = None) -> str:
    """``"value"`` for apt.conf; refuses what apt.conf strings cannot hold."""
    text = str(value)
    _refuse_if(
        bool(_CONTROL.search(text)) or '"' in text or "\\" in text,
        key,
        value,
        'cannot be written in apt.conf: no ", backslash or control characters (apt.conf(5) '
        "strings have no escapes)",
        shown,
    )
    return f'"{text}"'


def apt_conf_name(value: Any, key: str) -> str:
    """``value`` as one part of an apt.conf option name (a host name in a per-host option)."""
    text = str(value)
    _refuse_if(
        not _APT_NAME.fullmatch(text),
        key,
        value,
        "must be a host name (letters, digits, '.', '-', '_', '+') to be an apt option name",
    )
    return text


def apt_field(value: Any, key: str) -> str:
    """``value`` as the one-word value of an apt preferences field (``Pin: version GLOB``)."""
    text = str(value)
    _refuse_if(
        text == "" or bool(_CONTROL.search(text)) or any(c.isspace() or c == "#" for c in text),
        key,
        value,
        "cannot be written in an apt preferences file: one word, no '#', blanks or control "
        "characters",
    )
    return text


def apt_source_word(value: Any, key: str) -> str:
    """``value`` as one word of a one-line apt source (``deb [options] URI SUITE``). apt reads
    ``"…"`` and ``[…]`` there as grouping (brackets are kept only around an IPv6 host) and
    ``#`` as a comment."""
    text = str(value)
    rest = _IPV6_HOST.sub("", text, count=1)
    _refuse_if(
        text == ""
        or bool(_CONTROL.search(text))
        or any(c.isspace() or c in '#"' for c in text)
        or any(c in "[]" for c in rest),
        key,
        value,
        "cannot be written in an apt source line: one word, no '#', '\"', brackets (but "
        "around an IPv6 host), blanks or control characters",
    )
    return text


def ini_value(value: Any, key: str) -> str:
    """``value`` as the value of one ``key=value`` line of a dnf .repo file."""
    text = str(value)
    _refuse_if(
        bool(_CONTROL.search(text)),
        key,
        value,
        "cannot be written in a dnf .repo file: one line, no control characters",
    )
    return text


def package(value: Any, key: str) -> str:
    """``value`` as a package name for pyinfra's apt/dnf operations (they do not quote it)."""
    text = str(value)
    _refuse_if(
        not _PACKAGE.fullmatch(text),
        key,
        value,
        "must make a package name (letters, digits and . _ + ~ : = * -)",
    )
    return text


def container_value(value: Any, key: str) -> str:
    """``value`` as a ``docker run`` option value or positional argument."""
    text = str(value)
    _refuse_if(
        text.startswith("-") or "\0" in text,
        key,
        value,
        "cannot be a container argument: it must not start with '-' (read as an option) or "
        "hold a NUL character",
    )
    return text


def volume_source(value: Any, key: str) -> str:
    """``value`` as the host side of ``--volume SRC:DST`` (no escape exists for ':')."""
    text = container_value(value, key)
    _refuse_if(
        ":" in text,
        key,
        value,
        "cannot be a bind-mount source: no ':' (docker's --volume has no escape for it)",
    )
    return text


def image_reference(value: Any, key: str) -> str:
    """``value`` as a container image reference (name[:tag][@digest])."""
    text = str(value)
    _refuse_if(
        not _IMAGE.fullmatch(text),
        key,
        value,
        "must be an image reference (letters, digits and . _ / : @ -)",
    )
    return text


def json_text(value: Any, key: str, **dumps: Any) -> str:
    """``value`` as JSON text; refuses what JSON cannot say (NaN, infinities, non-data)."""
    try:
        return json.dumps(value, allow_nan=False, **dumps)
    except (TypeError, ValueError) as error:
        raise Unrepresentable(key, value, f"cannot be written as JSON ({error})") from None
