"""Plan tests of the Docker Engine layer: given a host's facts, exactly what is planned."""

from __future__ import annotations

import json

import pytest

from tests.plan.harness import FakeFleet

DOCKER = "https://download.docker.com"
LAST_GOOD = "/etc/gpufleet/daemon.json.last-good"
H100 = "pci=0000:1b:00.0 0x030200 0x2330"
OURS = {"live-restore": True, "log-driver": "json-file",
        "log-opts": {"max-file": "3", "max-size": "100m"}}  # fmt: skip
OWNED = {"docker": [["live-restore"], ["log-driver"], ["log-opts", "max-file"],
                    ["log-opts", "max-size"]]}  # fmt: skip


def profile(os_id="debian", version="12", codename="bookworm"):
    return [
        f"os_id={os_id}", f"os_version={version}", f"os_codename={codename}", "arch=x86_64",
        "kernel=6.1.0-28-amd64", H100, "secure_boot=disabled", f"disk_free_kib={200 * 1024**2}",
    ]  # fmt: skip


def daemon_files(current=None, owned=None, last_good=None) -> list[str]:
    """DaemonJson fact output: the files that exist, each after its marker line."""
    files = {
        "/etc/docker/daemon.json": current,
        "/etc/gpufleet/daemon.json.last-good": last_good,
        "/etc/gpufleet/daemon-json-owned.json": owned,
    }
    lines = []
    for path, text in files.items():
        if text is not None:
            text = text if isinstance(text, str) else json.dumps(text)
            lines += [f"@@gpufleet-file@@ {path}", *text.splitlines()]
    return lines


def dpkg(*packages: str) -> list[str]:
    """``dpkg -l`` lines for installed packages given as 'name version'."""
    return [f"ii  {p.split()[0]}  {p.split()[1]}  amd64  desc" for p in packages]


def plan_of(
    tmp_path, os_lines=None, installed=(), daemon=(), rpm=(), users=(), cdi_state="missing",
    layers="docker", extra_responses=None, **data,
):  # fmt: skip
    tmp_path.mkdir(exist_ok=True)
    host = {
        "fake_responses": {
            **(extra_responses or {}),
            "/etc/cdi/nvidia.yaml": [cdi_state],
            "/etc/passwd": list(users),
            "os-release": os_lines or profile(),
            "daemon.json.last-good": list(daemon),
            "dpkg -l": list(installed),
            "rpm --queryformat": list(rpm),
        },
        "deploy_layers": layers,
        **data,
    }
    return FakeFleet(tmp_path, {"h": host}).plan()["h"]


def by_name(planned) -> dict[str, list[str]]:
    return {name.split(" | ", 1)[1]: commands for name, commands in planned}


def uploaded_json(commands: list[str], dest: str = "/etc/gpufleet/daemon.json.staged") -> dict:
    (upload,) = [c for c in commands if c.startswith(f"upload {dest}: ")]
    return json.loads(upload.split(": ", 1)[1])


@pytest.mark.parametrize(
    ("os_id", "version", "codename"),
    [("ubuntu", "22.04", "jammy"), ("ubuntu", "24.04", "noble"), ("debian", "12", "bookworm")],
)
def test_docker_repo_key_checked_then_source_install_daemon_json_service(
    tmp_path, os_id, version, codename
):
    planned = plan_of(tmp_path, profile(os_id, version, codename))
    assert list(by_name(planned)) == [
        "Add the Docker repository key",
        "Check the Docker repository key's fingerprint [if changed]",
        "Add the Docker repository",
        "No Docker Engine version pin",
        "Update apt lists for Docker's repository [if changed]",
        "Install Docker Engine",
        "Merge the Docker daemon.json keys",
        "docker",
    ]
    commands = by_name(planned)
    assert f"{DOCKER}/linux/{os_id}/gpg" in " ".join(commands["Add the Docker repository key"])
    (check,) = commands["Check the Docker repository key's fingerprint [if changed]"]
    assert '[ "$fpr" = 9DC858229FC7DD38854AE2D88D81803C0EBFCD88 ]' in check
    source = (
        f"deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.gpg] {DOCKER}/linux/{os_id} "
        f"{codename} stable"
    )
    assert any(source in c for c in commands["Add the Docker repository"])
    (install,) = commands["Install Docker Engine"]
    assert install.endswith(
        "install --no-install-recommends docker-ce docker-ce-cli containerd.io "
        "docker-buildx-plugin docker-compose-plugin"
    )
    assert uploaded_json(commands["Merge the Docker daemon.json keys"]) == OURS
    assert "systemctl enable docker.service" in commands["docker"]


def test_distro_source_removes_docker_ce_first_and_installs_docker_io(tmp_path):
    installed = dpkg("docker-ce 5:27.5.1-1~debian.12~bookworm", "containerd.io 1.7.25-1")
    commands = by_name(plan_of(tmp_path, installed=installed, docker_source="distro"))
    assert list(commands)[:2] == ["Remove packages that conflict", "No Docker Engine version pin"]
    (remove,) = commands["Remove packages that conflict"]
    assert remove.endswith("remove docker-ce containerd.io")
    (install,) = commands["Install Docker Engine"]
    assert install.endswith("install --no-install-recommends docker.io")
    assert not [name for name in commands if "repository" in name]


def test_version_pin_moves_an_installed_engine_deliberately(tmp_path):
    installed = dpkg("docker-ce 5:27.3.1-1~debian.12~bookworm", "docker-ce-cli 5:27.3.1-1")
    commands = by_name(plan_of(tmp_path, installed=installed, docker_version="27.5.1"))
    (_, upload, _) = commands["Pin the Docker Engine version"]
    assert "Package: docker-ce docker-ce-cli\nPin: version 5:27.5.1[-+~.]*\n" in upload
    (move,) = [c for name, c in commands.items() if name.startswith("Move Docker Engine")][0]
    assert "apt-get -y --allow-downgrades --no-install-recommends install docker-ce" in move


def test_version_already_matching_installs_nothing_more(tmp_path):
    installed = dpkg("docker-ce 5:27.5.1-1~debian.12~bookworm", "docker-ce-cli 5:27.5.1-1")
    commands = by_name(plan_of(tmp_path, installed=installed, docker_version="27.5"))
    assert "Install Docker Engine" in commands
    assert not [name for name in commands if name.startswith("Move")]


def test_mirror_url_and_own_fingerprint(tmp_path):
    commands = by_name(
        plan_of(tmp_path, docker_repo_url="https://mirror.internal/docker/",
                docker_repo_fingerprint="0123456789ABCDEF0123456789ABCDEF01234567")
    )  # fmt: skip
    key = " ".join(commands["Add the Docker repository key"])
    assert "https://mirror.internal/docker/linux/debian/gpg" in key
    (check,) = commands["Check the Docker repository key's fingerprint [if changed]"]
    assert "= 0123456789ABCDEF0123456789ABCDEF01234567 ]" in check


@pytest.mark.parametrize("os_id", ["rocky", "rhel"])
def test_el9_conflicts_key_repo_and_pinned_packages(tmp_path, os_id):
    commands = by_name(plan_of(tmp_path, profile(os_id, "9.4", ""), docker_version="27.5"))
    assert list(commands)[:4] == [
        "Remove packages that conflict",
        "Import the Docker repository key, fingerprint checked",
        "Add the Docker repository",
        "Install Docker Engine",
    ]
    fetch, check, trust = commands["Import the Docker repository key, fingerprint checked"]
    assert fetch.endswith(f"{DOCKER}/linux/rhel/gpg")
    assert "= 060A61C51B558A7F742B77AAC52FEB6B621E9F35 ]" in check and trust.startswith(
        "rpm --import"
    )
    repo = " ".join(commands["Add the Docker repository"])
    assert f"baseurl={DOCKER}/linux/rhel/$releasever/$basearch/stable" in repo
    (install,) = commands["Install Docker Engine"]
    assert "'docker-ce-27.5.*' 'docker-ce-cli-27.5.*' containerd.io" in install


def test_distro_docker_on_rocky_fails_that_host_with_the_reason(tmp_path):
    planned = plan_of(tmp_path, profile("rocky", "9.4", ""), docker_source="distro")
    ((name, (command,)),) = planned
    assert name == "Docker Engine | Docker failed"
    assert "rocky 9.4 has no Docker packages of its own: use docker_source = docker-repo" in command


def test_users_keys_are_kept_and_ours_merged_in(tmp_path):
    user = {"debug": True, "log-opts": {"labels": "team"}, "runtimes": {"crun": {"path": "c"}}}
    commands = by_name(plan_of(tmp_path, daemon=daemon_files(current=user)))
    merged = uploaded_json(commands["Merge the Docker daemon.json keys"])
    log_opts = {"labels": "team", "max-file": "3", "max-size": "100m"}
    assert merged == {**OURS, **user, "log-opts": log_opts}


def test_converged_daemon_json_plans_no_command(tmp_path):
    current = {**OURS, "debug": True}
    files = daemon_files(current=current, owned=OWNED, last_good=current)
    commands = by_name(plan_of(tmp_path, daemon=files))
    assert commands["Merge the Docker daemon.json keys"] == []


def test_a_hand_edited_valid_file_becomes_the_last_good_one(tmp_path):
    """The user's new keys must survive a later corruption: only a copy is planned."""
    current = {**OURS, "debug": True}
    files = daemon_files(current=current, owned=OWNED, last_good=OURS)
    commands = by_name(plan_of(tmp_path, daemon=files))
    (copy,) = commands["Merge the Docker daemon.json keys"]
    assert copy == "mkdir -p /etc/gpufleet && cp -p /etc/docker/daemon.json " + LAST_GOOD


def test_a_key_no_longer_configured_is_removed_and_the_users_stay(tmp_path):
    current = {**OURS, "registry-mirrors": ["https://m.internal/"], "debug": True}
    owned = {"docker": [*OWNED["docker"], ["registry-mirrors"]]}
    commands = by_name(plan_of(tmp_path, daemon=daemon_files(current=current, owned=owned)))
    assert uploaded_json(commands["Merge the Docker daemon.json keys"]) == {**OURS, "debug": True}


def test_corrupt_daemon_json_is_rebuilt_on_the_last_good_one_and_kept_aside(tmp_path):
    good = {**OURS, "debug": True}
    daemon = daemon_files(current='{"debug": true,', last_good=good, owned=OWNED)
    commands = by_name(plan_of(tmp_path, daemon=daemon))["Merge the Docker daemon.json keys"]
    assert uploaded_json(commands) == good
    assert "cp -p /etc/docker/daemon.json /etc/docker/daemon.json.corrupt-" in commands[-1]
    assert "[ yes = yes ]" in commands[-1]


def test_apply_validates_restarts_and_rolls_back(tmp_path):
    commands = by_name(plan_of(tmp_path))["Merge the Docker daemon.json keys"]
    script = commands[-1]
    assert "dockerd --validate --config-file /etc/gpufleet/daemon.json.staged" in script
    assert "systemctl restart docker.service" in script
    assert "mv -f /etc/gpufleet/daemon.json.prev /etc/docker/daemon.json" in script
    assert "[ $i -ge 90 ]" in script  # docker_restart_timeout_s


def test_toolkit_merge_starts_from_what_the_docker_merge_planned(tmp_path):
    planned = plan_of(tmp_path, layers="docker,toolkit", daemon=daemon_files(current={"a": 1}))
    toolkit = [
        c for name, c in planned if name.endswith("Register the nvidia runtime in daemon.json")
    ]
    merged = uploaded_json(toolkit[0])
    assert merged["a"] == 1 and merged["live-restore"] is True
    assert merged["runtimes"] == {"nvidia": {"path": "nvidia-container-runtime", "args": []}}
    owned = uploaded_json(toolkit[0], "/etc/gpufleet/daemon-json-owned.json.staged")
    assert owned["toolkit"] == [["runtimes", "nvidia"]] and len(owned["docker"]) == 4


def test_docker_group_users_only_when_configured_and_only_existing_ones(tmp_path):
    assert not [n for n in by_name(plan_of(tmp_path / "none")) if "docker group" in n]
    users = ["alice:x:1000:1000::/home/alice:/bin/bash|alice|alice||!"]  # not in docker
    commands = by_name(plan_of(tmp_path / "alice", docker_users="alice,bob", users=users))
    assert commands["Add alice to the docker group (root-equivalent)"] == [
        "usermod -aG docker alice"
    ]
    assert "docker_users names bob: no such user here" in commands["Docker failed"][0]
