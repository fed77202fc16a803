"""Batched rollouts: order, gating on each batch's exit code, refusal before any run.

pyinfra is never started: a fake runner records the commands and answers exit codes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from operations.cli.rollout import batches, data_overrides, deploy_command, main, roll
from operations.inventory import ROOT
from tests.plan.harness import gateway_off_beside

IDLE = "vllm:num_requests_running 0.0\nvllm:num_requests_waiting 0.0\n"


def idle(url: str) -> tuple[int, str]:
    """Every server is idle (/metrics) and ready (/health)."""
    return 200, IDLE if url.endswith("/metrics") else ""


def main_(argv, run):
    """main with idle, ready servers and no waiting."""
    return main(argv, run=run, probe=idle, sleep=lambda _s: None)


INVENTORY = """\
gpu = [
    ("h1", {"ssh_hostname": "10.0.0.1"}),
    ("h2", {"vllm_instances": [
        {"name": "a", "gpus": [0], "port": 8001},
        {"name": "b", "gpus": [1], "port": 8002},
    ]}),
    ("h3", {}),
]
canary = [("h4", {}), ("h5", {})]
"""

HOSTS = ["h1", "h2", "h3", "h4", "h5"]


class Runner:
    """Stands in for subprocess.call: records each command, answers the next exit code."""

    def __init__(self, *codes: int):
        self.codes = list(codes)
        self.commands: list[list[str]] = []
        self.cwds: list[Path] = []

    def __call__(self, command: list[str], cwd: Path) -> int:
        self.commands.append(command)
        self.cwds.append(cwd)
        return self.codes.pop(0) if self.codes else 0

    @property
    def limits(self) -> list[list[str]]:
        """The hosts of each run, from its --limit arguments."""
        return [[c[i + 1] for i, arg in enumerate(c) if arg == "--limit"] for c in self.commands]


@pytest.fixture
def inventory(tmp_path: Path) -> str:
    path = tmp_path / "fleet.py"
    path.write_text(INVENTORY)
    gateway_off_beside(path)
    return str(path)


def test_batches_keep_order_and_size():
    assert batches(HOSTS, 2) == [["h1", "h2"], ["h3", "h4"], ["h5"]]
    assert batches(HOSTS, 1) == [[h] for h in HOSTS]
    assert batches(HOSTS, 9) == [HOSTS]


def test_deploy_command_runs_pyinfra_on_the_batch_with_one_limit_per_host():
    command = deploy_command("/inv.py", ["h1", "h2"], ["--data", "x=1"])
    assert command == [
        sys.executable, "-m", "pyinfra", "-y", "/inv.py", "deploy.py",
        "--limit", "h1", "--limit", "h2", "--data", "x=1",
    ]  # fmt: skip


def test_roll_runs_every_batch_in_order_from_the_repository_root(capsys):
    run = Runner()
    assert roll("/inv.py", HOSTS, 2, run=run) == 0
    assert run.limits == [["h1", "h2"], ["h3", "h4"], ["h5"]]
    assert run.cwds == [ROOT] * 3
    out = capsys.readouterr().out
    assert "rollout: batch 2/3: h3, h4" in out
    assert "rollout: done: 5 host(s) in 3 batch(es) in" in out


def test_failing_batch_stops_the_rollout_and_names_untouched_hosts(capsys):
    run = Runner(0, 1)
    assert roll("/inv.py", HOSTS, 2, run=run) == 1
    assert run.limits == [["h1", "h2"], ["h3", "h4"]]  # batch 3 never ran
    captured = capsys.readouterr()
    assert "batch 2/3 (h3, h4) failed: pyinfra exited 1" in captured.err
    assert "not touched, still on the previous version: h5" in captured.err
    assert "done:" not in captured.out


def test_failing_first_batch_leaves_every_other_host_untouched(capsys):
    run = Runner(2)
    assert roll("/inv.py", HOSTS, 1, run=run) == 1
    assert run.limits == [["h1"]]
    assert "still on the previous version: h2, h3, h4, h5" in capsys.readouterr().err


def test_failing_last_batch_says_no_host_is_left(capsys):
    assert roll("/inv.py", HOSTS, 3, run=Runner(0, 1)) == 1
    assert "no host is left untouched" in capsys.readouterr().err


def test_interrupt_stops_the_rollout_with_130_naming_the_batch(capsys):
    def interrupted(command, cwd):
        raise KeyboardInterrupt

    assert roll("/inv.py", HOSTS, 2, run=interrupted) == 130
    err = capsys.readouterr().err
    assert "interrupted (SIGINT) during batch 1/3 (h1, h2)" in err
    assert "h3, h4, h5" in err


def test_main_validates_then_rolls_the_inventory_with_extra_args(inventory):
    run = Runner()
    extra = ["--data", "vllm_image=vllm/vllm-openai:v0.11.1", "--parallel", "4"]
    assert main_([inventory, "--batch", "2", "--canary", "0", "--", *extra], run=run) == 0
    assert run.limits == [["h1", "h2"], ["h3", "h4"], ["h5"]]
    for command in run.commands:
        assert command[4] == str(Path(inventory).resolve())
        assert command[-4:] == extra


def test_main_limit_patterns_order_the_rollout(inventory):
    run = Runner()
    assert main_([inventory, "--limit", "canary", "--limit", "h1"], run=run) == 0
    assert run.limits == [["h4"], ["h5"], ["h1"]]


def test_bad_config_is_refused_before_any_run(tmp_path, capsys):
    path = tmp_path / "fleet.py"
    path.write_text('gpu = [("h1", {}), ("h2", {"vllm_port": -1})]')
    gateway_off_beside(path)
    run = Runner()
    assert main_([str(path)], run=run) == 2
    assert run.commands == []
    err = capsys.readouterr().err
    assert "h2: vllm_port = -1: Input should be greater than or equal to 1" in err
    assert "Traceback" not in err


def test_bad_data_override_is_refused_before_any_run(inventory, capsys):
    run = Runner()
    assert main_([inventory, "--", "--data", "vllm_image=vllm/vllm-openai:latest"], run=run) == 2
    assert run.commands == []
    assert "vllm_image = 'vllm/vllm-openai:latest'" in capsys.readouterr().err


def test_batch_below_one_is_a_usage_error(inventory, capsys):
    run = Runner()
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as exited:
            main_([inventory, "--batch", bad], run=run)
        assert exited.value.code == 2
        assert "--batch" in capsys.readouterr().err
    assert run.commands == []


def test_limit_among_extra_args_is_a_usage_error(inventory, capsys):
    run = Runner()
    with pytest.raises(SystemExit) as exited:
        main_([inventory, "--", "--limit=h9"], run=run)
    assert exited.value.code == 2
    assert "--limit and --exclude go before --" in capsys.readouterr().err
    assert run.commands == []


def test_no_selected_host_is_refused(inventory, capsys):
    run = Runner()
    assert main_([inventory, "--limit", "nosuchhost"], run=run) == 2
    assert run.commands == []
    assert "--limit nosuchhost matches no host or group of" in capsys.readouterr().err


def test_data_overrides_are_parsed_like_pyinfra():
    extra = ["--data", "vllm_port=8001", "--data=deploy_layers=vllm", "--dry", "--data", "x=true"]
    assert data_overrides(extra) == {"vllm_port": 8001, "deploy_layers": "vllm", "x": True}


def test_exclude_leaves_the_other_hosts_in_order(inventory):
    run = Runner()
    argv = [inventory, "--batch", "2", "--canary", "0", "--exclude", "h2", "--exclude", "canary"]
    assert main_(argv, run=run) == 0
    assert run.limits == [["h1", "h3"]]


def test_excluding_every_host_is_refused_saying_so(inventory, capsys):
    run = Runner()
    assert main_([inventory, "--limit", "canary", "--exclude", "h4,h5"], run=run) == 2
    assert run.commands == []
    err = capsys.readouterr().err
    assert "--exclude h4, h5 excludes the 2 host(s) --limit canary selects" in err


def test_data_without_a_value_is_refused_before_any_batch(inventory, capsys):
    run = Runner()
    assert main_([inventory, "--", "--data", "vllm_port"], run=run) == 2
    assert run.commands == []
    assert "--data 'vllm_port': no '='; write it as --data key=value" in capsys.readouterr().err


def test_a_refused_override_names_the_command_line(inventory, capsys):
    run = Runner()
    assert main_([inventory, "--", "--data", "vllm_port=eighty"], run=run) == 2
    assert run.commands == []
    err = capsys.readouterr().err
    assert "h1: vllm_port = 'eighty'" in err and "(from --data)" in err
