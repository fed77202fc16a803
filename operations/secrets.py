"""Secrets of the vLLM layer, read on the controller only: never from group_data.

The Hugging Face token and the vLLM API key come from an environment variable of the
controller (``vllm_hf_token_env``, ``vllm_api_key_env``) or a file on it (``*_file``, which
wins when set). Their values never enter the config model, pyinfra's output, a command line
or a container's configuration: the vLLM layer uploads them into a root-only file on the host
that the container reads at start (see operations/vllm.py). Problems are reported like any
bad setting (host, key, what is allowed), never with the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from operations.config import VllmConfig

# Printable ASCII without blanks, quotes or backslashes: safe in the env file (quoted anyway)
# and in the readiness probe's curl config, and what HF tokens and API keys look like.
_SAFE = re.compile(r"[!#-&(-\[\]-~]+")

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


def _one(vllm: VllmConfig, env_field: str, file_field: str, environ: Mapping[str, str]) -> str:
    """One secret's value ('' when none is given)."""
    path = getattr(vllm, file_field)
    if path:
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
