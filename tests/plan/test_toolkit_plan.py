"""Plan tests of the NVIDIA Container Toolkit layer: given a host's facts, what is planned."""

from __future__ import annotations

import pytest

from tests.plan.test_docker_plan import by_name, daemon_files, dpkg, plan_of, profile, uploaded_json

REPO = "https://nvidia.github.io/libnvidia-container"
FOUR = "nvidia-container-toolkit nvidia-container-toolkit-base libnvidia-container-tools "
FOUR += "libnvidia-container1"
RUNTIME = {"nvidia": {"path": "nvidia-container-runtime", "args": []}}


def toolkit_plan(tmp_path, os_lines=None, cdi="missing", **data):
    data.setdefault("layers", "toolkit")
    return by_name(plan_of(tmp_path, os_lines, cdi_state=cdi, **data))


@pytest.mark.parametrize(
    ("os_id", "version", "codename"),
    [("ubuntu", "22.04", "jammy"), ("ubuntu", "24.04", "noble"), ("debian", "12", "bookworm")],
)
def test_apt_key_checked_repo_pin_four_packages_runtime_udev_cdi(
    tmp_path, os_id, version, codename
):
    commands = toolkit_plan(tmp_path, profile(os_id, version, codename), toolkit_version="1.17.8-1")
    assert list(commands) == [
        "Add the NVIDIA Container Toolkit repository key",
        "Check the NVIDIA Container Toolkit repository key's fingerprint [if changed]",
        "Add the NVIDIA Container Toolkit repository",
        "Pin the NVIDIA Container Toolkit version",
        "Update apt lists for the toolkit's repository [if changed]",
        "Install NVIDIA Container Toolkit",
        "Register the nvidia runtime in daemon.json",
        "Install the /dev/char udev rule",
        "Create the /dev/char links [if changed]",
        "Generate the CDI spec",
    ]
    assert f"{REPO}/gpgkey" in " ".join(commands["Add the NVIDIA Container Toolkit repository key"])
    (check,) = commands[
        "Check the NVIDIA Container Toolkit repository key's fingerprint [if changed]"
    ]
    assert "= C95B321B61E88C1809C4F759DDCAE044F796ECB0 ]" in check
    source = (
        "deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.gpg] "
        f"{REPO}/stable/deb/$(ARCH) /"
    )
    assert any(source in c for c in commands["Add the NVIDIA Container Toolkit repository"])
    (_, pin, _) = commands["Pin the NVIDIA Container Toolkit version"]
    assert f"Package: {FOUR}\nPin: version 1.17.8-1\nPin-Priority: 1001" in pin
    (install,) = commands["Install NVIDIA Container Toolkit"]
    assert install.endswith(f"install --no-install-recommends {FOUR}")
    merged = uploaded_json(commands["Register the nvidia runtime in daemon.json"])
    assert merged == {"runtimes": RUNTIME}
    assert commands["Create the /dev/char links [if changed]"] == [
        "/usr/bin/nvidia-ctk system create-dev-char-symlinks --create-all"
    ]
    assert commands["Generate the CDI spec"] == [
        "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"
    ]


def test_gpu_less_host_gets_the_runtime_and_rule_but_no_links_or_cdi(tmp_path):
    no_gpu = [line for line in profile() if not line.startswith("pci=")]
    commands = toolkit_plan(tmp_path, no_gpu, host_has_gpus=False)
    assert "Install the /dev/char udev rule" in commands
    assert not [n for n in commands if "/dev/char links" in n or "CDI" in n]


def test_cdi_spec_naming_the_installed_driver_is_only_regenerated_on_a_toolkit_change(tmp_path):
    commands = toolkit_plan(tmp_path, cdi="current")
    assert "Generate the CDI spec [if changed]" in commands


def test_toolkit_older_than_cdi_support_generates_no_spec(tmp_path):
    commands = toolkit_plan(tmp_path, toolkit_version="1.11.0")
    assert not [n for n in commands if "CDI" in n]


def test_default_runtime_and_a_drifted_version_moved_to_the_pin(tmp_path):
    installed = dpkg(*(f"{p} 1.17.9-1" for p in FOUR.split()))
    commands = toolkit_plan(tmp_path, toolkit_default_runtime="nvidia", toolkit_version="1.17.8",
                            installed=installed)  # fmt: skip
    merged = uploaded_json(commands["Register the nvidia runtime in daemon.json"])
    assert merged == {"runtimes": RUNTIME, "default-runtime": "nvidia"}
    (move,) = [c for n, c in commands.items() if n.startswith("Move NVIDIA Container Toolkit")]
    assert move[0].endswith(f"--allow-downgrades --no-install-recommends install {FOUR}")


def test_mirror_with_its_own_key(tmp_path):
    commands = toolkit_plan(tmp_path, toolkit_repo_url="http://10.0.0.5:8080/",
                            toolkit_repo_fingerprint="AB" * 20)  # fmt: skip
    key = " ".join(commands["Add the NVIDIA Container Toolkit repository key"])
    assert "http://10.0.0.5:8080/gpgkey" in key
    (check,) = commands[
        "Check the NVIDIA Container Toolkit repository key's fingerprint [if changed]"
    ]
    assert f"= {'AB' * 20} ]" in check


@pytest.mark.parametrize("os_id", ["rocky", "rhel"])
def test_el9_key_imported_once_repo_and_versioned_packages(tmp_path, os_id):
    commands = toolkit_plan(tmp_path, profile(os_id, "9.4", ""), toolkit_version="1.17.8-1")
    assert list(commands)[:3] == [
        "Import the NVIDIA Container Toolkit repository key, fingerprint checked",
        "Add the NVIDIA Container Toolkit repository",
        "Install NVIDIA Container Toolkit",
    ]
    repo = " ".join(commands["Add the NVIDIA Container Toolkit repository"])
    assert f"baseurl={REPO}/stable/rpm/$basearch" in repo and "gpgcheck=1" in repo
    (install,) = commands["Install NVIDIA Container Toolkit"]
    assert install.endswith(
        "nvidia-container-toolkit-1.17.8-1 nvidia-container-toolkit-base-1.17.8-1 "
        "libnvidia-container-tools-1.17.8-1 libnvidia-container1-1.17.8-1"
    )
    imported = toolkit_plan(tmp_path / "again", profile(os_id, "9.4", ""),
                            rpm=["gpg-pubkey f796ecb0-5b1ac2b6"])  # fmt: skip
    assert "Import the NVIDIA Container Toolkit repository key, fingerprint checked" not in imported


def test_user_runtimes_survive_the_runtime_registration(tmp_path):
    current = {"runtimes": {"crun": {"path": "/usr/bin/crun"}}, "debug": True}
    commands = toolkit_plan(tmp_path, daemon=daemon_files(current=current))
    merged = uploaded_json(commands["Register the nvidia runtime in daemon.json"])
    assert merged == {"debug": True, "runtimes": {"crun": {"path": "/usr/bin/crun"}, **RUNTIME}}


def test_a_key_on_the_host_with_another_fingerprint_is_checked_again(tmp_path):
    keyrings = {"/etc/apt/keyrings/*.gpg": ["/etc/apt/keyrings/nvidia-container-toolkit.gpg AB"]}
    commands = toolkit_plan(tmp_path, extra_responses=keyrings)
    name = "Check the NVIDIA Container Toolkit repository key's fingerprint"
    assert name in commands  # unconditional: it removes the key and fails the host
    trusted = {"/etc/apt/keyrings/*.gpg": ["/etc/apt/keyrings/nvidia-container-toolkit.gpg "
                                           "C95B321B61E88C1809C4F759DDCAE044F796ECB0"]}  # fmt: skip
    again = toolkit_plan(tmp_path / "trusted", extra_responses=trusted)
    assert not [n for n in again if "repository key" in n]  # the expected key is there
