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


DRIVER, OLD_DRIVER = "580.159.04", "570.172.08"
AT_PIN = dpkg(*(f"{p} 1.17.8-1" for p in FOUR.split()))


def runs(driver: str | None) -> dict[str, list[str]]:
    """DriverState output (matched by a line only its script prints) of a host running
    ``driver``; None: no driver."""
    lines = [f"module_loaded={driver}", f"proc_version={driver}"] if driver else []
    return {"module_loaded=": lines}


def spec_names(driver: str) -> dict[str, list[str]]:
    """A CDI spec naming ``driver``: the CdiSpec script says current when asked about that
    version (stale otherwise: toolkit_plan's cdi)."""
    return {f"grep -qF -- {driver} /etc/cdi/nvidia.yaml": ["current"]}


def test_cdi_spec_naming_the_loaded_driver_is_only_regenerated_on_a_toolkit_change(tmp_path):
    facts = {**spec_names(DRIVER), **runs(DRIVER)}
    commands = toolkit_plan(tmp_path, cdi="stale", extra_responses=facts)  # nothing installed
    assert "Generate the CDI spec [if changed]" in commands
    converged = toolkit_plan(tmp_path / "converged", cdi="stale", extra_responses=facts,
                             installed=AT_PIN, toolkit_version="1.17.8")  # fmt: skip
    assert not [name for name in converged if "CDI" in name]  # nothing will change it


def test_a_changed_loaded_driver_regenerates_the_cdi_spec(tmp_path):
    """The spec names the driver the host ran before (a reboot loaded a new one since): it is
    regenerated, toolkit unchanged; the check asks about the loaded driver's version."""
    fleet_facts = {**spec_names(OLD_DRIVER), **runs(DRIVER)}
    planned = plan_of(tmp_path, cdi_state="stale", extra_responses=fleet_facts,
                      layers="toolkit", installed=AT_PIN, toolkit_version="1.17.8")  # fmt: skip
    commands = by_name(planned)
    assert commands["Generate the CDI spec"] == [
        "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"
    ]
    same = toolkit_plan(tmp_path / "same", cdi="stale", installed=AT_PIN, toolkit_version="1.17.8",
                        extra_responses={**spec_names(DRIVER), **runs(DRIVER)})  # fmt: skip
    assert not [name for name in same if "CDI" in name]


def test_no_loaded_driver_never_counts_as_current(tmp_path):
    """No driver read: the spec cannot be known to match, it is generated (as before)."""
    commands = toolkit_plan(tmp_path, cdi="stale", installed=AT_PIN, toolkit_version="1.17.8",
                            extra_responses={**spec_names(""), **runs(None)})  # fmt: skip
    assert "Generate the CDI spec" in commands


@pytest.mark.parametrize(
    ("spec", "driver", "expected"),
    [
        (None, DRIVER, "missing"),
        (f"- hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.{DRIVER}\n", DRIVER, "current"),
        (f"- hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.{OLD_DRIVER}\n", DRIVER, "stale"),
        (f"- hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.{DRIVER}\n", "", "stale"),
        ("- hostPath: /usr/lib/libcuda.so.1\n", "-v", "stale"),  # an option-like value
    ],
)
def test_the_cdi_spec_script_under_dash(tmp_path, spec, driver, expected):
    import shutil
    import subprocess

    from operations.toolkit.facts import CDI_SPEC, CdiSpec

    path = tmp_path / "nvidia.yaml"
    if spec is not None:
        path.write_text(spec)
    script = CdiSpec().command(driver=driver).replace(CDI_SPEC, str(path))
    shell = shutil.which("dash") or "sh"
    done = subprocess.run([shell, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert CdiSpec().process(done.stdout.splitlines()) == expected


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
