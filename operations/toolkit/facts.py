"""Facts of the NVIDIA Container Toolkit layer, and the paths and packages they read (the
Docker layer's facts read them too: a toolkit left behind by another install)."""

from __future__ import annotations

from typing import Any

from pyinfra.api import FactBase

from operations.kit.quoting import shell

PACKAGES = (
    "nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
    "libnvidia-container1",
)  # fmt: skip
CDI_SPEC = "/etc/cdi/nvidia.yaml"
UDEV_RULE = "/etc/udev/rules.d/71-nvidia-dev-char.rules"  # written by the layer (converged)


class CdiSpec(FactBase):
    """'current' when the CDI spec names ``driver``, 'stale' when it does not (or no driver
    is known), 'missing'. ``driver``: the version the host runs, as every layer reads it
    (operations.driver.facts.loaded_driver), so the spec is regenerated when the driver that
    is loaded changes, not when a library merely sits on disk. A spec nvidia-ctk generated
    names the driver's version in its libraries' paths (``libcuda.so.<version>``)."""

    def command(self, driver: str) -> str:
        version = shell(driver)
        return (
            f"if [ ! -f {CDI_SPEC} ]; then echo missing; "
            f"elif [ -n {version} ] && grep -qF -- {version} {CDI_SPEC}; then echo current; "
            "else echo stale; fi"
        )

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else "missing"


def toolkit_version(stack: dict[str, Any]) -> str | None:
    """The installed NVIDIA Container Toolkit as one string, from the ContainerStack fact
    (operations.docker.facts): each of its packages the package manager lists, with its
    version (they are pinned together, but a moved one counts); else the first line of
    ``nvidia-ctk --version`` (a toolkit no package manager installed); None where none is."""
    packages = stack.get("packages") or {}
    found = [f"{name}={packages[name]}" for name in PACKAGES if packages.get(name)]
    if found:
        return " ".join(found)
    return (stack.get("ctk_version") or "").strip() or None
