"""The host scripts (operations/kit/scripts/*.sh) and their one loader: every file passes
shellcheck, every value filled in is one shell word (a hostile one runs nothing), a
placeholder left unfilled or a value with no placeholder is refused, and the fact scripts,
run under dash against stub commands, print what their facts parse."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from operations.config.model import FleetConfig
from operations.docker.facts import STACK_PACKAGES, parse_stack, stack_command
from operations.driver.facts import driver_command, parse_driver_state
from operations.kit import scripts
from operations.kit.daemon_json import apply_script
from operations.kit.quoting import Unrepresentable, shell_join
from operations.monitoring.facts import MonitoringProbe
from operations.preflight.facts import missing, parse_profile, profile_command
from operations.vllm import key_to_curl, ready_script
from operations.vllm.facts import parse_state, state_command

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "x'; touch pwned; echo '$(id)"
REQUIRED = os.environ.get("GPUFLEET_REQUIRE_LAB") == "1" or bool(os.environ.get("CI"))
DASH = shutil.which("dash")
needs_dash = pytest.mark.skipif(DASH is None, reason="dash is not installed")


ENTRY_POINTS = (ROOT / "dev", ROOT / ".ci" / "run")  # the project's own bash commands


def _tracked_sh() -> list[Path]:
    """The project's own shell commands (./dev, .ci/run) and its tracked *.sh files outside
    operations/kit/scripts."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return list(ENTRY_POINTS)
    done = subprocess.run(
        ["git", "ls-files", "*.sh"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    paths = [ROOT / line for line in done.stdout.splitlines() if line]
    return [*ENTRY_POINTS, *(path for path in paths if path.parent != scripts.DIRECTORY)]


def _shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:
        if REQUIRED:
            pytest.fail("shellcheck is not installed (./dev installs Debian's shellcheck)")
        pytest.skip("shellcheck is not installed (needed in CI: GPUFLEET_REQUIRE_LAB=1)")
    return found


def test_every_script_passes_shellcheck():
    files = sorted(scripts.DIRECTORY.glob("*.sh"))
    assert {path.stem for path in files} >= {
        "lock", "driver_state", "host_profile", "container_stack", "vllm_state", "vllm_ready",
        "daemon_json_apply",
    }  # fmt: skip
    done = subprocess.run([_shellcheck(), "-s", "sh", *map(str, files)], capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_dev_ci_and_every_other_tracked_shell_file_pass_shellcheck():
    others = _tracked_sh()
    assert all(path.exists() for path in ENTRY_POINTS)
    done = subprocess.run([_shellcheck(), *map(str, others)], capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_what_is_sent_has_every_placeholder_filled_and_no_reader_notes():
    config = FleetConfig()
    probe = MonitoringProbe().command(
        ("a", "b"),
        "http://127.0.0.1:9100/metrics",
        "http://127.0.0.1:9400/metrics",
        "http://x:9090",
        "/c",
    )
    sent = [
        driver_command(), profile_command("/srv"), stack_command(), state_command(),
        apply_script(True, 90, True), ready_script(config, config.vllm.servers()[0]), probe,
        scripts.render("prometheus_apply", STAGED="/s", LIVE="/l", UNIT="prometheus"),
        scripts.render("dcgm_ready", NAME="n", URL="http://127.0.0.1:9400/metrics", TIMEOUT=60),
    ]  # fmt: skip
    for text in sent:
        assert scripts.PLACEHOLDER.search(text) is None, text
        assert "\n##" not in text and "# shellcheck " not in text and not text.startswith("##")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The loader reading scripts from ``tmp_path/scripts`` (its read-once cache emptied)."""
    directory = tmp_path / "scripts"
    directory.mkdir()
    monkeypatch.setattr(scripts, "DIRECTORY", directory)
    scripts.source.cache_clear()
    yield directory
    scripts.source.cache_clear()


def test_unknown_missing_and_doubly_given_placeholders_are_refused(scratch):
    (scratch / "t.sh").write_text("## note @NOT_A_PLACEHOLDER@\necho @A@ @B@\n")
    assert scripts.placeholders("t") == {"A", "B"}
    with pytest.raises(scripts.ScriptError, match="no value for B"):
        scripts.render("t", A=1)
    with pytest.raises(scripts.ScriptError, match="no placeholder C"):
        scripts.render("t", A=1, B=2, C=3)
    with pytest.raises(scripts.ScriptError, match="A given both quoted and raw"):
        scripts.render("t", A=1, B=2, raw_values={"A": "x"})
    assert scripts.render("t", A="a b", raw_values={"B": '"$HOME"'}) == "echo 'a b' \"$HOME\"\n"


def test_a_nul_is_refused_with_the_setting_it_came_from(scratch):
    (scratch / "t.sh").write_text("echo @A@\n")
    with pytest.raises(Unrepresentable, match="some_setting"):
        scripts.render("t", A="a\0b", keys={"A": "some_setting"})


def test_notes_and_shellcheck_directives_are_not_sent(scratch):
    (scratch / "t.sh").write_text(
        "## what it is\n# kept\n  # shellcheck disable=SC2086  # why\necho @A@ # @B@ too\n"
    )
    assert scripts.source("t") == "# kept\necho @A@ # @B@ too\n"


def _dash(script: str, cwd: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": path or os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    return subprocess.run([DASH, "-c", script], cwd=cwd, env=env, capture_output=True, text=True)


@needs_dash
def test_a_hostile_value_is_one_word_and_runs_nothing(scratch, tmp_path):
    (scratch / "t.sh").write_text('value=@VALUE@\nprintf "%s\\n" "$value" @VALUE@\n')
    done = _dash(scripts.render("t", VALUE=HOSTILE), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [HOSTILE, HOSTILE]
    assert not (tmp_path / "pwned").exists()


def _stubs(directory: Path, commands: dict[str, str]) -> str:
    """A PATH whose first directory holds ``commands`` (name -> sh body)."""
    directory.mkdir()
    for name, body in commands.items():
        stub = directory / name
        stub.write_text(f"#!/bin/sh\n{body}\n")
        stub.chmod(0o755)
    return f"{directory}:/usr/bin:/bin"


@needs_dash
def test_host_profile_with_a_hostile_disk_path_runs_nothing_and_parses(tmp_path):
    done = _dash(profile_command(HOSTILE), tmp_path)
    assert done.returncode == 0, done.stderr
    profile = parse_profile(done.stdout.splitlines())
    assert missing(profile) == [] and isinstance(profile["disk_free_gib"], float)
    assert profile["secure_boot"] in ("enabled", "disabled", "not-efi", "unknown")
    assert not (tmp_path / "pwned").exists()


@needs_dash
def test_driver_state_reads_packages_holds_and_units_from_the_host_tools(tmp_path):
    path = _stubs(
        tmp_path / "bin",
        {
            "dpkg-query": "printf '%s\\n' 'ii  nvidia-open-580 580.95.05-1' "
            "'ii  libnvidia-container1 1.17.8-1' 'un  nvidia-driver <none>'",
            "apt-mark": "echo nvidia-open-580",
            "modinfo": "echo 580.95.05",
            "systemctl": 'case "$1" in is-enabled) echo enabled;; is-active) echo active;; esac',
        },
    )
    booted = tmp_path / "systemd"  # sd_booted()'s directory, here where systemd is not PID 1
    booted.mkdir()
    done = _dash(driver_command().replace("/run/systemd/system", str(booted)), tmp_path, path)
    assert done.returncode == 0, done.stderr
    state = parse_driver_state(done.stdout.splitlines())
    assert state["init"] == "systemd"
    assert state["packages"] == {"nvidia-open-580": "580.95.05-1"}  # not the toolkit's
    assert state["held"] == ["nvidia-open-580"] and state["module_on_disk"] == "580.95.05"
    assert state["units"] == {
        unit: {"enabled": "enabled", "active": "active"}
        for unit in ("nvidia-persistenced", "nvidia-fabricmanager")
    }


@needs_dash
def test_container_stack_reads_docker_the_group_packages_and_files(tmp_path):
    path = _stubs(
        tmp_path / "bin",
        {
            "systemctl": 'case "$1" in is-enabled) echo enabled;; is-active) echo active;; esac',
            "docker": 'case "$1" in version) echo 27.3.1;; '
            'info) echo \'{"Runtimes": {"nvidia": {}}}\';; esac',
            "getent": "echo docker:x:999:ops,ci",
            "dpkg-query": "printf '%s\\n' 'ii  docker-ce 5:27.3.1-1' 'un  docker.io <none>'",
            "nvidia-ctk": "echo 'NVIDIA Container Toolkit CLI version 1.17.8'",
        },
    )
    rule = tmp_path / "udev rule's.rules"
    rule.write_text("")
    script = scripts.render(
        "container_stack",
        UDEV_RULE=rule,
        CDI_SPEC=tmp_path / "no cdi.yaml",
        raw_values={"PACKAGES": shell_join(STACK_PACKAGES)},
    )
    done = _dash(script, tmp_path, path)
    assert done.returncode == 0, done.stderr
    state = parse_stack(done.stdout.splitlines())
    assert state["active"] == "active" and state["server_version"] == "27.3.1"
    assert state["info"] == {"Runtimes": {"nvidia": {}}}
    assert state["docker_group"] == ["ops", "ci"]
    assert state["packages"] == {"docker-ce": "5:27.3.1-1"}
    assert state["ctk_version"] == "NVIDIA Container Toolkit CLI version 1.17.8"
    assert state["udev_rule"] is True and state["cdi_spec"] is False


@needs_dash
def test_vllm_state_globs_inside_a_quoted_directory(tmp_path):
    path = _stubs(tmp_path / "bin", {"docker": "exit 1"})  # no engine answers
    secrets = tmp_path / "it's a dir"
    secrets.mkdir()
    (secrets / "main.env").write_text("VLLM_API_KEY='k'\n")
    (secrets / "main.ready").write_text("0123456789abcdef\n")
    (secrets / "main.env.new").write_text("x")
    script = scripts.render("vllm_state", LABEL="gpufleet.vllm", SECRETS_DIR=secrets)
    done = _dash(script, tmp_path, path)
    assert done.returncode == 0, done.stderr
    state = parse_state(done.stdout.splitlines())
    assert state["docker"] is False and state["ready"] == {"main": "0123456789abcdef"}
    assert list(state["secrets"]) == [f"{secrets}/main.env"]
    assert state["strays"] == [f"{secrets}/main.env.new"] and state["not_files"] == []


@needs_dash
def test_vllm_state_names_a_secrets_path_that_is_a_directory(tmp_path):
    """What Docker's --volume leaves when the file was missing as a container started."""
    path = _stubs(tmp_path / "bin", {"docker": "exit 1"})
    secrets = tmp_path / "secrets"
    (secrets / "main.env").mkdir(parents=True)
    (secrets / "other.env").write_text("VLLM_API_KEY='k'\n")
    script = scripts.render("vllm_state", LABEL="gpufleet.vllm", SECRETS_DIR=secrets)
    state = parse_state(_dash(script, tmp_path, path).stdout.splitlines())
    assert state["not_files"] == [f"{secrets}/main.env"] and state["strays"] == []
    assert list(state["secrets"]) == [f"{secrets}/other.env"]


@needs_dash
def test_the_readiness_gate_with_a_hostile_name_passes_and_runs_nothing(tmp_path):
    path = _stubs(
        tmp_path / "bin",
        {
            "docker": 'echo "running 0"',
            "curl": 'case " $* " in *" -w "*) echo 200;; '
            '*) cat >/dev/null; echo \'{"data": [{"id": "Qwen/Qwen2.5-1.5B-Instruct"}]}\';; esac',
        },
    )
    secrets = tmp_path / "main.env"
    secrets.write_text("VLLM_API_KEY='k'\n")
    script = scripts.render(
        "vllm_ready",
        NAME=HOSTILE,
        URL="http://127.0.0.1:8000",
        SECRETS=secrets,
        SERVED="Qwen/Qwen2.5-1.5B-Instruct",
        TIMEOUT=5,
        LINES=30,
        raw_values={"KEY_TO_CURL": key_to_curl('"$secrets"')},
    )
    done = _dash(script, tmp_path, path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{HOSTILE}: ready, serving Qwen/Qwen2.5-1.5B-Instruct\n"
    assert not (tmp_path / "pwned").exists()
