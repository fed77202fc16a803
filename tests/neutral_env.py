"""A fixture for the unit and plan tests (not the verify suite, which needs the secrets)."""

import pytest


@pytest.fixture(autouse=True)
def _no_controller_secrets(monkeypatch):
    """Config validation reads the vLLM secrets from the controller's environment: tests
    start without them, whatever the shell running pytest holds (a test sets its own)."""
    for name in ("HF_TOKEN", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
