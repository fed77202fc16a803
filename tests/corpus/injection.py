"""The injection corpus: hostile values per context, and a sandbox that runs generated shell.

Every payload is written with ``@CANARY@`` where it names a file it would create if it ran
(``payload.at(path)`` fills it in): a test puts the payload wherever a value can go, runs or
parses what the code generated for that context, and asserts the canary does not exist and the
value arrived as data, unchanged. Contexts:

- ``SHELL``: command substitution, backticks, separators, pipes, redirections, both quotes,
  newlines, NUL, ``${IFS}``, backslashes and Unicode look-alikes, for anything run by ``sh -c``
  (also used for the paths, URLs and words of every other context);
- ``APT_CONF``: values and option names that would close an apt.conf string or scope and set
  another option (``APT::Injected``);
- ``JSON``: strings JSON must escape, and what JSON cannot say (NaN, infinities);
- ``CONTAINER``: values that docker or vllm would read as options or as extra mount fields;
- ``SSH``: values that would add an ssh_config line or option (``ProxyCommand``) on the
  controller.

``Sandbox`` runs generated shell as it runs on a host (``dash -c``) but as ``nobody``, with
every external command replaced by a stub that records its arguments, but ``touch`` (so a
payload that runs does create its canary) and the text tools scripts compute with: nothing
the command names is changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MARK = "@CANARY@"


@dataclass(frozen=True)
class Payload:
    id: str
    text: str  # with MARK where the canary path goes

    def at(self, canary: str | Path) -> str:
        return self.text.replace(MARK, str(canary))


def _p(*pairs: tuple[str, str]) -> tuple[Payload, ...]:
    return tuple(Payload(name, text) for name, text in pairs)


SHELL = _p(
    ("dollar-paren", f"$(touch {MARK})"),
    ("dollar-paren-ifs", f"$(touch${{IFS}}{MARK})"),
    ("dollar-paren-bare-ifs", f"$(touch$IFS{MARK})"),
    ("backticks", f"`touch {MARK}`"),
    ("backticks-ifs", f"`touch$IFS{MARK}`"),
    ("semicolon", f";touch {MARK};"),
    ("semicolon-spaced", f"; touch {MARK} ;"),
    ("semicolon-ifs", f";touch$IFS{MARK};"),
    ("and", f"&&touch {MARK}"),
    ("and-ifs", f"&&touch$IFS{MARK}"),
    ("or", f"||touch {MARK}"),
    ("pipe", f"|touch {MARK}"),
    ("background", f"&touch {MARK}&"),
    ("redirect", f">{MARK}"),
    ("append", f">>{MARK}"),
    ("close-double", f'";touch {MARK};"'),
    ("close-double-ifs", f'";touch${{IFS}}{MARK};"'),
    ("close-single", f"';touch {MARK};'"),
    ("close-single-ifs", f"';touch$IFS{MARK};'"),
    ("single-subst-ifs", f"'$(touch$IFS{MARK})'"),
    ("single-around-subst", f"'$(touch {MARK})'"),
    ("double-around-subst", f'"$(touch {MARK})"'),
    ("escaped-quote", f"\\';touch {MARK};\\'"),
    ("newline", f"\ntouch {MARK}\n"),
    ("carriage-return", f"\rtouch {MARK}\r"),
    ("backslash-newline", f"\\\ntouch {MARK}"),
    ("tab-subst", f"$(touch\t{MARK})"),
    ("arith-subst", f"$((0))$(touch {MARK})"),
    ("brace-group", f"{{ touch {MARK}; }}"),
    ("nul", f"\0;touch {MARK};"),
    ("unicode-line-separator", f"\u2028touch {MARK}\u2029"),
    ("unicode-next-line", f"\x85touch {MARK}"),
    ("unicode-fullwidth", f"\uff1btouch {MARK}\uff1b"),
    ("unicode-text", f"mod\u00e8le-\u6a21\u578b$(touch {MARK})"),
    ("zero-width", f"\u200b$(touch {MARK})\u200b"),
    ("option-like", f"--help;touch {MARK}"),
)

APT_CONF = _p(
    ("close-string", 'x";APT::Injected "1'),
    ("close-string-newline", 'x";\nAPT::Injected "1";\n'),
    ("newline", 'x\nAPT::Injected "1";'),
    ("backslash-quote", 'x\\";APT::Injected "1'),
    ("scope", 'x";APT{Injected "1";};X "'),
    ("comment-open", 'x"; /* '),
    ("include", 'x";\n#include /etc/passwd;\nX "'),
    ("clear", 'x";\n#clear Acquire;\nX "'),
    ("nul", 'x\0";APT::Injected "1'),
    ("unicode-separator", 'x\u2028APT::Injected "1";'),
)

APT_CONF_NAMES = _p(
    ("scope-separator", "mirror::APT::Injected"),
    ("value", 'mirror "DIRECT";APT::Injected "1";X'),
    ("space", "mirror APT::Injected"),
    ("brace", 'mirror{APT::Injected "1";}'),
    ("comment", "mirror//x"),
    ("newline", 'mirror\nAPT::Injected "1";'),
    ("quote", 'mirror"'),
    ("empty", ""),
)

JSON = _p(
    ("quote", 'a"b'),
    ("backslash", "a\\b"),
    ("close-object", '"}, "hosts": ["tcp://0.0.0.0:2375"], "x": {"'),
    ("newline", "a\nb"),
    ("nul", "a\0b"),
    ("unicode", "\u6a21\u578b\u2028\U0001f600"),
    ("shell", f"$(touch {MARK})"),
)
NOT_JSON = (float("nan"), float("inf"), float("-inf"), {1, 2}, b"bytes")

CONTAINER = _p(
    ("option", "--privileged"),
    ("option-value", "--volume=/:/host"),
    ("short-option", "-v/:/host"),
    ("mount-fields", "/var/lib/hf:/etc:rw"),
    ("mount-ro", "/srv/x:ro"),
    ("nul", "/srv/x\0--privileged"),
    ("space-option", "/srv/x --privileged"),
)

SSH = _p(
    ("newline-proxycommand", f"lab\nProxyCommand touch {MARK}"),
    ("carriage-return", f"lab\rProxyCommand touch {MARK}"),
    ("space-proxycommand", f"lab ProxyCommand=touch {MARK}"),
    ("equals", f"lab=ProxyCommand touch {MARK}"),
    ("option", f"-oProxyCommand=touch {MARK}"),
    ("quote", f'lab" ProxyCommand "touch {MARK}'),
    ("subst", f"$(touch {MARK})"),
    ("match-exec", f'lab\nMatch exec "touch {MARK}"'),
    ("nul", f"lab\0ProxyCommand touch {MARK}"),
    ("unicode-separator", f"lab\u2028ProxyCommand touch {MARK}"),
)

ALL = {
    "shell": SHELL,
    "apt.conf value": APT_CONF,
    "apt.conf name": APT_CONF_NAMES,
    "json": JSON,
    "container": CONTAINER,
    "ssh": SSH,
}

# --- the sandbox --------------------------------------------------------------------------

_STUB = """#!/bin/dash
# gpufleet test stub: records its arguments (NUL-separated), does nothing, succeeds
printf '%s\\0' "${0##*/}" "$@" > "$(/usr/bin/mktemp "$STUB_CALLS/call.XXXXXXXX")"
"""
# Real: what a payload uses to make its canary, and the text tools the generated scripts
# compute with (a stub dirname never reaches "/"); none of them changes anything by itself.
_REAL = (
    "touch", "dirname", "basename", "cat", "head", "tail", "cut", "tr", "sed", "awk", "grep",
    "sort", "uniq", "wc", "date", "expr", "seq", "env", "readlink", "od", "sha256sum", "sha1sum",
)  # fmt: skip
_NOBODY = 65534


class Sandbox:
    """A directory ``nobody`` may write (``canary`` lies in it), stubs for every command."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gpufleet-injection-", dir="/tmp"))
        self.root.chmod(0o777)
        self.bin = self.root / "bin"
        self.calls_dir = self.root / "calls"
        self.bin.mkdir()
        self.calls_dir.mkdir(mode=0o777)
        self.calls_dir.chmod(0o777)
        stub = self.root / "stub"
        stub.write_text(_STUB)
        stub.chmod(0o755)
        for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
            for name in os.listdir(directory) if os.path.isdir(directory) else ():
                link = self.bin / name
                if not link.exists() and "/" not in name:
                    link.symlink_to(shutil.which(name, path=directory) if name in _REAL else stub)
        self.canary = self.root / "canary"

    def run(self, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
        """``dash -c command`` as nobody, with only the stubs on PATH; its output as text, every
        byte kept (no newline translation)."""
        env = {"PATH": str(self.bin), "STUB_CALLS": str(self.calls_dir), "HOME": str(self.root)}
        done = subprocess.run(
            ["/usr/bin/setpriv", f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups",
             "/usr/bin/dash", "-c", command.encode("utf-8", "surrogateescape")],
            cwd=self.root, env=env, capture_output=True, timeout=timeout,
        )  # fmt: skip
        done.stdout = done.stdout.decode("utf-8", "surrogateescape")
        done.stderr = done.stderr.decode("utf-8", "surrogateescape")
        return done

    def calls(self) -> list[list[str]]:
        """Every stub call so far, as its argument list (command name first)."""
        found = []
        for path in sorted(self.calls_dir.iterdir()):
            found.append(path.read_bytes().decode("utf-8", "surrogateescape").split("\0")[:-1])
        return found

    def forget_calls(self) -> None:
        for path in self.calls_dir.iterdir():
            path.unlink()

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
