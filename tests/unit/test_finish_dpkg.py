"""The "Finish the interrupted dpkg run" command (operations/kit/scripts/finish_dpkg.sh) under
dash with a stub dpkg: it waits while another process holds dpkg's lock, and fails at once,
quoting dpkg, on anything else (a dependency problem would never clear: it used to be
retried 600 s)."""

from __future__ import annotations

import subprocess
import time

from operations.kit.packages import finish_dpkg_command

LOCKED = "dpkg: error: dpkg frontend lock was locked by another process with pid 4242"
BROKEN = "dpkg: error processing package nvidia-container-toolkit (--configure):\n dependency problems - leaving unconfigured"  # noqa: E501


def finish(tmp_path, script: str, timeout: int = 30) -> tuple[subprocess.CompletedProcess, float]:
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "dpkg").write_text(f"#!/bin/sh\n{script}\n")
    (stub / "dpkg").chmod(0o755)
    started = time.monotonic()
    done = subprocess.run(["dash", "-c", finish_dpkg_command(timeout)],
                          capture_output=True, text=True, env={"PATH": f"{stub}:/usr/bin:/bin"},
                          timeout=60)  # fmt: skip
    return done, time.monotonic() - started


def test_a_held_lock_is_waited_for(tmp_path):
    count = tmp_path / "calls"
    script = (f'echo x >> {count}; [ "$(wc -l < {count})" -ge 2 ] && echo configured && exit 0; '
              f'echo "{LOCKED}" >&2; exit 2')  # fmt: skip
    done, took = finish(tmp_path, script)
    assert done.returncode == 0 and "configured" in done.stdout, done
    assert took >= 1.5 and count.read_text().count("x") == 2  # retried once, 2 s later


def test_any_other_failure_fails_at_once_quoting_dpkg(tmp_path):
    done, took = finish(tmp_path, f"printf '%s\\n' '{BROKEN}' >&2; exit 1")
    assert done.returncode == 1 and "dependency problems" in done.stderr
    assert took < 1.5  # not retried until the deadline


def test_a_lock_held_past_the_deadline_fails_quoting_dpkg(tmp_path):
    done, _ = finish(tmp_path, f'echo "{LOCKED}" >&2; exit 2', timeout=1)
    assert done.returncode == 1 and "lock was locked" in done.stderr
