"""start_server (kit/scripts/vllm_start.sh) under dash with stub docker and systemctl: Docker's
stale port allocation after a killed host is cleared by one dockerd restart where live-restore
keeps the containers, refused with what to do where it is off, and no other failure of
`docker run` is retried."""

from __future__ import annotations

import subprocess

from operations.kit import scripts

STALE = ("docker: Error response from daemon: driver failed programming external connectivity"
         " on endpoint vllm-main (0e28): Bind for 0.0.0.0:8000 failed: port is already allocated.")  # fmt: skip  # noqa: E501


def start(tmp_path, run_fails: int, error: str, live_restore: str, published: str = ""):
    """(result, calls log) of start_server with `docker run` failing its first `run_fails`
    times with `error`."""
    bin_, log, runs = tmp_path / "bin", tmp_path / "calls", tmp_path / "runs"
    bin_.mkdir()
    (bin_ / "docker").write_text(f"""#!/bin/sh
echo "docker $*" >> {log}
case $1 in
  run) echo x >> {runs}
       [ "$(wc -l < {runs})" -le {run_fails} ] && {{ echo '{error}' >&2; exit 125; }}
       echo 0123abcd; exit 0;;
  ps) printf '%s' '{published}';;
  info) [ "$2" = --format ] && echo {live_restore}; exit 0;;
esac
""")  # fmt: skip
    (bin_ / "systemctl").write_text(f'#!/bin/sh\necho "systemctl $*" >> {log}\n')
    for tool in ("docker", "systemctl"):
        (bin_ / tool).chmod(0o755)
    run = "docker run --detach --name vllm-main img"
    script = scripts.render("vllm_start", NAME="vllm-main", PORT="8000", raw_values={"RUN": run})
    done = subprocess.run(["dash", "-c", script + "\nstart_server"], capture_output=True,
                          text=True, env={"PATH": f"{bin_}:/usr/bin:/bin"}, timeout=60)  # fmt: skip
    return done, log.read_text() if log.exists() else ""


def test_a_clean_start_runs_once(tmp_path):
    done, calls = start(tmp_path, 0, "", "true")
    assert done.returncode == 0 and calls.count("docker run") == 1 and "systemctl" not in calls


def test_a_stale_port_is_cleared_by_one_restart_where_live_restore_is_on(tmp_path):
    done, calls = start(tmp_path, 1, STALE, "true")
    assert done.returncode == 0, done.stderr
    assert "systemctl restart docker.service" in calls and calls.count("docker run") == 2
    assert "docker rm -f vllm-main" in calls  # the Created container of the failed start
    assert "restarting dockerd (live-restore keeps the running containers)" in done.stderr


def test_without_live_restore_the_host_fails_saying_what_to_do(tmp_path):
    done, calls = start(tmp_path, 1, STALE, "false")
    assert done.returncode == 1 and "systemctl" not in calls
    assert "dockerd holds port 8000 for no container" in done.stderr
    assert "restart Docker on this host" in done.stderr


def test_a_port_a_container_really_holds_is_not_retried(tmp_path):
    done, calls = start(tmp_path, 1, STALE, "true", published="f00d\n")
    assert done.returncode == 1 and "systemctl" not in calls and calls.count("docker run") == 1


def test_other_failures_are_not_retried(tmp_path):
    done, calls = start(tmp_path, 1, "docker: Error response from daemon: no such image", "true")
    assert done.returncode == 1 and "no such image" in done.stderr
    assert calls.count("docker run") == 1 and "systemctl" not in calls
