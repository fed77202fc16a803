"""Facts of the NVIDIA Container Toolkit layer, and the paths and packages they read (the
Docker layer's facts read them too: a toolkit left behind by another install)."""

from __future__ import annotations

from pyinfra.api import FactBase

from operations.driver.facts import INSTALLED_VERSION_SH

PACKAGES = (
    "nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
    "libnvidia-container1",
)  # fmt: skip
CDI_SPEC = "/etc/cdi/nvidia.yaml"
UDEV_RULE = "/etc/udev/rules.d/71-nvidia-dev-char.rules"  # written by the layer (converged)


class CdiSpec(FactBase):
    """'current' when the CDI spec names the installed driver's version, 'stale', 'missing'."""

    def command(self) -> str:
        return (
            f"{INSTALLED_VERSION_SH}; if [ ! -f {CDI_SPEC} ]; then echo missing; "
            f'elif [ -n "$installed" ] && grep -qF "$installed" {CDI_SPEC}; then echo current; '
            "else echo stale; fi"
        )

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else "missing"
