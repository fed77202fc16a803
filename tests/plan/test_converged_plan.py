"""Plan tests of what a converged host costs: facts read once, nothing planned for what the
host already has (operations.kit.converged), and pyinfra's operation where it differs."""

from __future__ import annotations

import hashlib

from operations.config.model import DeployConfig
from operations.docker import PIN_FILE
from operations.kit.converged import MARK
from operations.kit.packages import APT_LOCK_CONF, APT_PROXY_CONF, pin_text
from tests.plan.harness import FakeFleet
from tests.plan.test_docker_plan import OURS, OWNED, by_name, daemon_files, dpkg, profile

KEYRING = "/etc/apt/keyrings/docker.gpg"
SOURCE = (
    f"deb [arch=amd64 signed-by={KEYRING}] https://download.docker.com/linux/debian bookworm stable"
)
ENGINE = [f"{name} 5:27.5.1-1~debian.12~bookworm" for name in (
    "docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
    "docker-compose-plugin")]  # fmt: skip
PIN = pin_text("keep Docker Engine at its configured version.", ("docker-ce", "docker-ce-cli"),
               "5:27.5.1[-+~.]*")  # fmt: skip


def path_line(path: str, kind: str, owner: str = "", text: str | None = None) -> str:
    sha1 = hashlib.sha1(text.encode()).hexdigest() if text is not None else ""  # noqa: S324
    return f"{MARK}\tpath\t{path}\t{kind}\t{owner}\t{sha1}"


def unit_lines(sub: str = "running", enabled: str = "enabled") -> list[str]:
    return [f"{MARK}\tunit\tId=docker.service", f"{MARK}\tunit\tSubState={sub}",
            f"{MARK}\tunit\tUnitFileState={enabled}"]  # fmt: skip


def converged_fleet(tmp_path, pin: str = "644 root root", pin_text_now: str = PIN, units=None):
    """A Debian host with the Docker layer converged, as its facts tell it."""
    tmp_path.mkdir(exist_ok=True)
    units = unit_lines() if units is None else units
    lock = f'DPkg::Lock::Timeout "{DeployConfig().lock_timeout_s}";\n'
    state = [
        path_line(APT_LOCK_CONF, "file", "644 root root", lock),
        path_line(APT_PROXY_CONF, "absent"),
        path_line(PIN_FILE, "file", pin, pin_text_now),
        *units,
    ]
    host = {
        "fake_responses": {
            MARK: state,
            "os-release": profile(),
            "daemon.json.last-good": daemon_files(OURS, OWNED, OURS),
            "/etc/apt/keyrings/*.gpg": [f"{KEYRING} 9DC858229FC7DD38854AE2D88D81803C0EBFCD88"],
            "sources.list.d/*.sources": [
                "@@gpufleet-file@@ /etc/apt/sources.list.d/docker.list",
                SOURCE,
            ],
            "dpkg -l": dpkg(*ENGINE),
        },
        "deploy_layers": "docker",
        "docker_version": "27.5.1",
    }
    return FakeFleet(tmp_path, {"h": host})


def test_a_converged_host_is_planned_nothing_and_reads_each_fact_once(tmp_path):
    fleet = converged_fleet(tmp_path)
    commands = by_name(fleet.plan()["h"])
    assert commands == {
        "Update apt lists for Docker's repository [if changed]": ["apt-get update"],
        "Merge the Docker daemon.json keys": [],
    }
    sent = fleet.sent()["h"]
    for fact in ("os-release", "dpkg -l", MARK, "/etc/apt/keyrings/*.gpg", "*.sources"):
        assert sum(fact in command for command in sent) == 1, fact
    # and daemon.json, read by the merge operation each time it is evaluated (here: change
    # detection, then the harness generating its commands)
    assert sum("daemon.json.last-good" in command for command in sent) == 2
    # and the deploy lock (operations.kit.lock), taken once per run: its one command; releasing
    # it costs none (it goes with the connection)
    assert sum(command.startswith("sh -c ") and "gpufleet-lock" in command for command in sent) == 1
    assert len(sent) == 8


def test_a_file_that_differs_in_content_or_mode_is_put_again(tmp_path):
    edited = by_name(converged_fleet(tmp_path / "a", pin_text_now=PIN + "# edited\n").plan()["h"])
    assert any(PIN in c for c in edited["Pin the Docker Engine version"])
    loose = by_name(converged_fleet(tmp_path / "b", pin="666 root root").plan()["h"])
    assert (
        "chmod 644 /etc/apt/preferences.d/gpufleet-docker" in loose["Pin the Docker Engine version"]
    )


def test_a_stopped_or_disabled_service_is_started_and_enabled(tmp_path):
    stopped = converged_fleet(tmp_path / "a", units=unit_lines(sub="dead"))
    assert "systemctl start docker.service" in by_name(stopped.plan()["h"])["docker"]
    disabled = converged_fleet(tmp_path / "b", units=unit_lines(enabled="disabled"))
    assert "systemctl enable docker.service" in by_name(disabled.plan()["h"])["docker"]


def test_a_state_the_host_did_not_report_plans_pyinfras_operations(tmp_path):
    """No answer for a path or unit (another shell, a failed read): nothing is skipped."""
    commands = by_name(converged_fleet(tmp_path, units=[]).plan()["h"])
    assert "docker" in commands
