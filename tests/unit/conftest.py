"""Every test here starts without controller secrets in its environment; the injection
tests share one dash sandbox per module (tests/corpus/injection.py)."""

import pytest

from tests.corpus.injection import Sandbox
from tests.neutral_env import _no_controller_secrets  # noqa: F401  (an autouse fixture)


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox()
    yield box
    box.close()


@pytest.fixture
def box(sandbox):
    """The sandbox with no canary and no recorded calls."""
    sandbox.canary.unlink(missing_ok=True)
    sandbox.forget_calls()
    return sandbox
