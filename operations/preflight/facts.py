"""Facts of the preflight layer, gathered in one round trip per host.

``HostProfile`` runs one POSIX shell script that prints ``key=value`` lines: OS release, CPU
architecture, kernel, the NVIDIA devices on the PCI bus (read from /sys, so it needs neither
lspci nor a driver), the Secure Boot state (from the EFI variable, so it needs no mokutil),
the free space on a path and whether a dpkg run was left unfinished. The verify checks run
the same script through testinfra, so deploy and verify read the host the same way.
"""

from __future__ import annotations

from typing import Any

from pyinfra.api import FactBase

from operations.kit import scripts

NVIDIA_PCI_VENDOR = "0x10de"
# PCI class codes (first four hex digits of /sys/.../class) of NVIDIA devices we care about.
GPU_CLASSES = ("0x0300", "0x0302")  # VGA controller, 3D controller
NVSWITCH_CLASS = "0x0680"  # bridge: NVSwitch on HGX/DGX baseboards


def profile_command(path: str = "/") -> str:
    """The shell script behind HostProfile, for the given disk path
    (operations/kit/scripts/host_profile.sh)."""
    return scripts.render(
        "host_profile",
        VENDOR=NVIDIA_PCI_VENDOR,
        PATH=path,
        keys={"PATH": "preflight_disk_path"},
    ).strip()


# What every profile must hold; a host whose script printed less could not be read.
REQUIRED = ("os_id", "os_version", "arch", "kernel")


def parse_profile(lines: list[str]) -> dict[str, Any]:
    """Turn the script's ``key=value`` lines into the profile dict. A line that is not what
    the script prints (garbled output, a shell's banner) is left out, never a crash: what is
    then missing is reported by ``missing``."""
    profile: dict[str, Any] = {"nvidia_gpus": [], "nvswitches": []}
    for line in lines:
        key, _, value = line.partition("=")
        if key == "pci":
            fields = value.split()
            if len(fields) != 3:
                continue
            slot, pci_class, device = fields
            kind = (
                "nvidia_gpus"
                if pci_class.startswith(GPU_CLASSES)
                else ("nvswitches" if pci_class.startswith(NVSWITCH_CLASS) else None)
            )
            if kind:
                profile[kind].append({"slot": slot, "class": pci_class, "device": device})
        elif key == "disk_free_kib":
            if value.strip().isdigit():
                profile["disk_free_gib"] = round(int(value) / 1024**2, 1)
        elif key:
            profile[key] = value
    return profile


def missing(profile: dict[str, Any] | None) -> list[str]:
    """The REQUIRED keys a profile lacks (all of them for no profile: nothing was printed)."""
    if not isinstance(profile, dict):
        return list(REQUIRED)
    return [key for key in REQUIRED if not profile.get(key)]


class HostProfile(FactBase):
    """OS, arch, kernel, NVIDIA PCI devices, Secure Boot state and free disk of a host.

    Returns a dict: os_id, os_version, os_like, os_codename, arch, kernel, nvidia_gpus and
    nvswitches (lists of {slot, class, device}), secure_boot (enabled, disabled, not-efi or
    unknown) and disk_free_gib (of ``path`` or its nearest existing parent).
    """

    def command(self, path: str = "/") -> str:
        return profile_command(path)

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_profile(output)
