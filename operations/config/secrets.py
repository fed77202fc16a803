"""Secrets of the vLLM layer, read on the controller only: never from group_data.

The Hugging Face token and the vLLM API key come from an environment variable of the
controller (``vllm_hf_token_env``, ``vllm_api_key_env``) or a file on it (``*_file``, which
wins when set). Their values never enter the config model, pyinfra's output, a command line
or a container's configuration: the vLLM layer uploads them into a root-only file on the host
that the container reads at start (see operations/vllm/__init__.py). Problems are reported like any
bad setting (host, key, what is allowed), never with the value.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # config.py uses looks_secret below: no import cycle at run time
    from operations.config.model import VllmConfig

# Printable ASCII without blanks, quotes or backslashes: safe in the env file (quoted anyway)
# and in the readiness probe's curl config, and what HF tokens and API keys look like.
_SAFE = re.compile(r"[!#-&(-\[\]-~]+")

# --- What looks like a secret VALUE (used to mask every message that shows a value) ---------
# Masking goes by the value, not by the key's name alone: a misspelt key (vllm_hf_tokn) must
# not print the token it holds, while a file path, an environment variable's name and True
# stay visible, so that an operator can act on the message.

# Prefixes of well-known credential formats, followed by enough token characters.
_KNOWN_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?:hf_[A-Za-z0-9]{16,}|api_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}"
    r"|sk_(?:live|test)_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|glpat-[A-Za-z0-9_-]{16,}|xox[abprs]-[A-Za-z0-9-]{10,}|nvapi-[A-Za-z0-9_-]{16,}"
    r"|A[KS]IA[A-Z0-9]{16}|AIza[A-Za-z0-9_-]{30,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_.-]+)"
)
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
# A run of token characters ('.' '/' ':' '@' end it, so paths, URLs and ids split up) ...
_TOKEN_RUN = re.compile(r"[A-Za-z0-9+_~-]{20,}={0,2}")
# ... and a long hex string (`openssl rand -hex 32`); a digest after sha256: is not a secret.
_HEX_RUN = re.compile(
    r"(?<![A-Za-z0-9:])(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{32,}"
)
_DIGEST = re.compile(r"sha(?:256|512):[0-9a-f]+")
# userinfo of a URL: scheme://user:PASSWORD@host: only the password is masked
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:)(?P<pw>[^/?#\s]*)@")
MASK = "***"
_PATH = re.compile(r"[/~][^\s]*")  # a file path: shown (only a known token format in it is not)


# A piece of a name: words (``Llama``, ``DeepSeek``, ``GPTQ``) with a version or size after
# them (``Qwen3``, ``49B``, ``v1``). Random tokens are made of pieces that are not.
_WORD_PIECE = re.compile(r"(?:[A-Z]+|[A-Z]?[a-z]+)+[0-9]*(?:[A-Za-z]{1,2})?|v?[0-9]+[A-Za-z]{0,3}")


def _random_looking(run: str) -> bool:
    """A run of token characters that is not built from words: at least 16 characters of it
    in pieces (between - _ = ~) that mix letters and digits and are not a word with a
    version (``HALFV822bUavw4Rpue4`` is random; ``DeepSeek-R1-Distill-Qwen-32B`` is not)."""
    pieces = re.split(r"[-_=~]", run)
    odd = [
        piece
        for piece in pieces
        if len(piece) >= 6
        and not _WORD_PIECE.fullmatch(piece)
        and re.search(r"[A-Za-z]", piece)
        and re.search(r"[0-9]", piece)
    ]
    return sum(map(len, odd)) >= 16


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """Where in ``text`` something looks like a credential (start, end)."""
    if _PRIVATE_KEY.search(text):
        return [(0, len(text))]
    plain = _DIGEST.sub(lambda m: "#" * len(m.group()), text)  # keep offsets, drop digests
    spans = [m.span() for m in _KNOWN_TOKEN.finditer(plain)]
    if not _PATH.fullmatch(text):  # a path's content hashes (`image-f3f0…5e.tar`) are names
        spans += [m.span() for m in _HEX_RUN.finditer(plain)]
        spans += [m.span() for m in _TOKEN_RUN.finditer(plain) if _random_looking(m.group())]
    spans += [m.span("pw") for m in _URL_PASSWORD.finditer(text) if m.group("pw")]
    return sorted(spans)


def looks_secret(text: str) -> bool:
    """True when ``text`` holds something shaped like a credential: a token of a known format
    (hf_…, sk-…, ghp_…), a private key, a long random-looking or hex string, or a URL's
    password. The one rule every message and check uses."""
    return isinstance(text, str) and bool(_secret_spans(text))


def _masked_text(text: str) -> str:
    out, last = [], 0
    for start, end in _secret_spans(text):  # sorted; overlapping spans are masked as one
        if end <= last:
            continue
        out += [text[last : max(start, last)], MASK] if start >= last else []
        last = end
    return "".join(out) + text[last:]


# Flags that take a secret (--api-key sk-…, --hf-token=…): their argument is masked too.
SECRET_FLAG = re.compile(
    r"^--?([a-z0-9]+[-_])*(api[-_]?key|token|secret|passw(or)?d|credentials?)([-_][a-z0-9]+)*$",
    re.IGNORECASE,
)
SECRET_ENGINE_FLAGS = ("--api-key", "--hf-token")  # vLLM's own; argparse takes --api-k too


def secret_flag(arg: str) -> bool:
    """``arg`` is a command-line flag that carries a secret (``--api-key``, ``--hf-token=…``,
    ``--API_KEY``, the abbreviation ``--api-k`` argparse accepts)."""
    if not isinstance(arg, str) or not arg.startswith("-"):
        return False
    name = arg.split("=", 1)[0].lower().replace("_", "-")
    abbreviates = len(name) >= 5 and any(flag.startswith(name) for flag in SECRET_ENGINE_FLAGS)
    return abbreviates or SECRET_FLAG.match(name) is not None


def mask(value: Any, secret_name: bool = False) -> Any:
    """``value`` with everything that looks like a secret replaced by ``'***'`` (in strings,
    lists, tuples and dict values). ``secret_name``: the key is named like a credential and
    is not one of our settings (``vllm_api_key``): a string in it is hidden whole, unless it
    is a path or an environment variable's name."""
    if isinstance(value, str):
        if secret_name and value and not re.fullmatch(r"[/~][^\s]*|[A-Z][A-Z0-9_]*", value):
            return MASK
        return _masked_text(value)
    if isinstance(value, Mapping):
        return {
            key: mask(item, secret_name or _SECRET_WORDS.search(str(key)) is not None)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        items, after_flag = [], False
        for item in value:
            flag = secret_flag(item)
            if isinstance(item, str) and flag and "=" in item:
                items.append(item.split("=", 1)[0] + "=" + MASK)
            else:
                items.append(
                    MASK if after_flag and isinstance(item, str) else mask(item, secret_name)
                )
            after_flag = bool(flag) and "=" not in item
        return type(value)(items)
    return value


# Key names that say "credential"; only for keys that are not our settings (see mask).
_SECRET_WORDS = re.compile(r"toke?n|secret|pass?w|pwd|api_?k|credential", re.IGNORECASE)


def secret_named(key: str) -> bool:
    """The key's name says it holds a credential (vllm_api_key, hf_tokn, proxy_password)."""
    return _SECRET_WORDS.search(key) is not None


# variable name in the container -> (config field naming the env var, field naming the file)
SECRETS = {
    "HF_TOKEN": ("hf_token_env", "hf_token_file"),
    "VLLM_API_KEY": ("api_key_env", "api_key_file"),
}


class SecretError(ValueError):
    """A secret that was named could not be used; the message names the key, not the value."""

    def __init__(self, key: str, value: str, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {value!r}: {allowed}")


def shared_mode(path: str) -> str | None:
    """The file's mode (``0644``) when group or others may read or write it, else None (also
    when it cannot be read: the reader says why). A key or a secret that other users can read
    is not secret any more; OpenSSH refuses such a private key for the same reason."""
    try:
        mode = stat.S_IMODE(Path(path).expanduser().stat().st_mode)
    except OSError:
        return None
    return f"{mode:04o}" if mode & 0o077 else None


def _one(vllm: VllmConfig, env_field: str, file_field: str, environ: Mapping[str, str]) -> str:
    """One secret's value ('' when none is given)."""
    path = getattr(vllm, file_field)
    if path:
        exposed = shared_mode(path)
        if exposed:
            raise SecretError(
                f"vllm_{file_field}",
                path,
                f"must be readable by its owner only (mode {exposed}): chmod 600 {path}",
            )
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or type(error).__name__
            raise SecretError(
                f"vllm_{file_field}", path, f"unreadable on the controller: {reason}"
            ) from None
        where = (f"vllm_{file_field}", path, f"the file at {path}")
    else:
        name = getattr(vllm, env_field)
        value = environ.get(name, "").strip()
        where = (f"vllm_{env_field}", name, f"the environment variable {name}")
    if value and not _SAFE.fullmatch(value):
        key, shown, source = where
        raise SecretError(
            key, shown, f"{source} must hold printable ASCII without blanks, quotes or backslashes"
        )
    return value


def vllm_secrets(vllm: VllmConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{container variable: value} for the secrets that are given (raises SecretError)."""
    environ = os.environ if environ is None else environ
    found = {name: _one(vllm, *fields, environ) for name, fields in SECRETS.items()}
    if vllm.require_api_key and not found["VLLM_API_KEY"]:
        source = vllm.api_key_file or f"${vllm.api_key_env}"
        raise SecretError(
            "vllm_require_api_key", True, f"no API key on the controller (looked in {source})"
        )
    return {name: value for name, value in found.items() if value}


class Sealed:
    """Text that must not be shown: its repr and str hide it (pyinfra may log operation
    arguments); ``reveal()`` gives it to the one place that writes it."""

    def __init__(self, text: str):
        self._text = text

    def reveal(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return "Sealed('***')"

    __str__ = __repr__


def env_file(secrets: Mapping[str, str]) -> Sealed:
    """The host's secrets file: shell assignments the container's start wrapper sources."""
    return Sealed("".join(f"{name}='{value}'\n" for name, value in sorted(secrets.items())))
