"""Every test here starts without controller secrets in its environment."""

from tests.neutral_env import _no_controller_secrets  # noqa: F401  (an autouse fixture)
