"""The lab fixture, shared by every end-to-end module (one lab per session)."""

from tests.e2e.helpers import lab  # noqa: F401  (a fixture)
