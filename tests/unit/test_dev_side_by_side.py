"""`./dev test`'s side-by-side run (dev: side_by_side) exits with what its two pytest runs
gave: 0 only when both passed. The function is taken from dev as written and run under dev's
own shell options, with a stand-in interpreter whose two pytest runs exit as told (a clean
run once exited 1: the EXIT trap's kill of the finished background run failed under set -e).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

DEV = Path(__file__).resolve().parents[2] / "dev"

FAKE_PY = """#!/bin/sh
# the two pytest runs: -m lab, -m "not lab"
case "$4" in
  lab) exit "$LAB_RC" ;;
  *) sleep 0.3; echo "unit and plan output"; exit "$REST_RC" ;;
esac
"""


def side_by_side(tmp_path: Path, lab_rc: int, rest_rc: int) -> subprocess.CompletedProcess:
    text = DEV.read_text()
    options = re.search(r"^set -[a-z]+(?: -o \w+)*(?: \w+)*$", text, re.M).group(0)
    function = re.search(r"^side_by_side\(\) \{\n.*?^\}\n", text, re.M | re.S).group(0)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    script = f"{options}\nsay() {{ :; }}\nPY={fake}\n{function}side_by_side\n"
    env = {"PATH": "/usr/bin:/bin", "LAB_RC": str(lab_rc), "REST_RC": str(rest_rc),
           "TMPDIR": str(tmp_path)}  # fmt: skip
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=30)  # fmt: skip


@pytest.mark.parametrize(("lab_rc", "rest_rc", "expected"), [(0, 0, 0), (1, 0, 1), (0, 1, 1),
                                                             (2, 5, 1)])  # fmt: skip
def test_side_by_side_exits_zero_only_when_both_runs_pass(tmp_path, lab_rc, rest_rc, expected):
    done = side_by_side(tmp_path, lab_rc, rest_rc)
    assert done.returncode == expected, done.stderr
    assert "unit and plan output" in done.stdout  # the background run's output, shown after
    assert [p.name for p in tmp_path.iterdir()] == ["python"]  # its log removed at exit
