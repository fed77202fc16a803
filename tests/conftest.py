"""What every test run shares: which tests use the lab.

A test that asks for the ``lab`` fixture, directly or through another, is marked ``lab`` as
the end-to-end modules are, so ``-m lab`` selects every test that touches the lab's hosts
and ``-m "not lab"`` the rest. ``./dev test`` runs the two side by side (the lab's tests in
order in one pytest, the unit and plan tests in another)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()) and item.get_closest_marker("lab") is None:
            item.add_marker(pytest.mark.lab)
