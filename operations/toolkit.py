"""Layer: NVIDIA Container Toolkit. Planned in issue #4; until then this layer only says so."""

from __future__ import annotations

from typing import Any

from pyinfra import host, logger
from pyinfra.api import deploy

from operations.config import FleetConfig


@deploy("NVIDIA Container Toolkit")
def apply(config: FleetConfig, profile: dict[str, Any]) -> None:
    """Not implemented yet: prints one line so a run shows the layer was reached."""
    logger.info(f"{host.print_prefix}toolkit: not implemented yet (issue #4)")
