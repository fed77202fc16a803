"""The inventory helpers the controller-side commands share (rollout, targets, verify): the
selected hosts of an inventory, loaded by pyinfra's own loader outside a deploy, with each
host's effective data and where each value came from, and the ``--limit``/``--exclude``
options matched as pyinfra matches them. The refusals (nothing targeted, files that do not
load) are operations.guard's."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from operations import guard
from operations.config.load import load_fleet
from operations.config.model import FleetConfig
from operations.guard import host_sources

ROOT = Path(__file__).resolve().parent.parent


def _patterns(patterns: Iterable[str]) -> list[str]:
    """--limit/--exclude values, each repeatable or comma-separated (a,b)."""
    return [p for pattern in patterns for p in pattern.split(",") if p]


@dataclass
class Selection:
    """The hosts a controller-side command targets: each one's effective data (group_data,
    inventory and ``--data`` merged the way a deploy merges them) in target order, where each
    value came from, and what loading noticed that is no reason to stop."""

    hosts: dict[str, dict[str, Any]]
    sources: dict[str, dict[str, str]]
    warnings: list[str]

    def configs(self) -> dict[str, FleetConfig]:
        """Every host's validated config (ConfigError naming host, key, value and file)."""
        return load_fleet(self.hosts.items(), self.sources)


def select(
    inventory_path: str,
    limit: Iterable[str] = (),
    exclude: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> Selection:
    """The selected hosts of an inventory, loaded by pyinfra's own loader outside a deploy,
    like pyinfra's --limit/--exclude; InventoryError (one line) for a mistake in the
    inventory or group_data, or when no host is left."""
    limit, exclude = _patterns(limit), _patterns(exclude)
    inventory, hosts = guard.load(inventory_path, limit, exclude, overrides, str(ROOT))
    warnings = [
        *guard.warnings_of(inventory),
        *guard.unmatched(inventory, limit, "--limit"),
        *guard.unmatched(inventory, exclude, "--exclude"),
    ]
    return Selection(
        {host.name: host.data.dict() for host in hosts},
        {host.name: host_sources(host) for host in hosts},
        warnings,
    )


def inventory_data(
    inventory_path: str, limit: Iterable[str] = (), exclude: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """Effective data of the selected hosts of an inventory, in target order (see select)."""
    return select(inventory_path, limit, exclude).hosts


def add_limit_option(parser: argparse.ArgumentParser) -> None:
    """``--limit`` and ``--exclude HOST_OR_GROUP`` (repeatable, or a,b) for the
    controller-side commands, matched like pyinfra's (a group, else a host name pattern)."""
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="HOST_OR_GROUP",
        help="only these hosts or groups, like pyinfra's --limit (repeatable, or a,b)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="HOST_OR_GROUP",
        help="not these hosts or groups, like pyinfra's --exclude (repeatable, or a,b)",
    )
