"""End to end: hostile values in every setting a real deploy (and verify) can be given, on the
lab fleet. A value the model lets through reaches a real host's shell, apt.conf, daemon.json
and the container's command line as data: the canary file its payload would create never
appears, and the value arrives whole (in the stand-in server's argv, dockerd's labels, apt's
config). A value it refuses stops the run before any host is touched. Verify, given an
inventory whose SSH values would add an ssh_config line (ProxyCommand, Match exec), refuses
it and runs nothing on the controller. The fleet is left converged.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import pytest

from lab.state import inventory_hosts, load_state
from tests.e2e.helpers import LAB_SECRETS, ROOT, daemon_json, deploy, on_host, run
from tests.e2e.test_lab_vllm import api

pytestmark = pytest.mark.lab
HOST = "lab-1"
CANARY = f"/tmp/gpufleet-canary-{secrets.token_hex(6)}"  # on the lab host, or the controller
SUBSTITUTIONS = {  # shell payloads a value can carry, each one creating CANARY if it ran
    "subst": f"$(touch {CANARY})",
    "backticks": f"`touch {CANARY}`",
    "single": f"';touch {CANARY};'",
    "double": f'";touch {CANARY};"',
}


def canary_on_host(name: str) -> bool:
    done = on_host(name, f"test -e {CANARY}")
    assert done.returncode in (0, 1), done.output  # 255: the host did not answer
    return done.returncode == 0


def data_args(data: dict) -> list[str]:
    """``--data key=value`` arguments; lists and dicts as JSON (pyinfra parses it)."""
    args = []
    for key, value in data.items():
        text = value if isinstance(value, str) else json.dumps(value)
        args += ["--data", f"{key}={text}"]
    return args


@pytest.fixture(scope="module")
def converged(lab):
    done = deploy("-y")
    assert done.returncode == 0, done.output
    yield lab
    done = deploy("-y", "--limit", HOST)  # the payloads' settings gone again
    assert done.returncode == 0, done.output
    assert not canary_on_host(HOST)


def test_values_the_model_accepts_reach_the_host_as_data(converged):
    extra = {f"gpufleet-{name}": payload for name, payload in SUBSTITUTIONS.items()}
    labels = [f"gpufleet.{name}={payload}" for name, payload in SUBSTITUTIONS.items()]
    data = {
        "vllm_extra_args": [f"--{name}={payload}" for name, payload in extra.items()],
        "docker_daemon_options": {"labels": labels},
    }
    proxy = load_state(ROOT).get("apt_proxy")
    if proxy:  # the lab's apt cache: the same proxy, a hostile path (a converged host fetches
        data["deploy_apt_proxy"] = f"{proxy.rstrip('/')}/$(touch$IFS{CANARY})"  # nothing)
    done = deploy("-y", "--limit", HOST, *data_args(data))
    assert "Traceback" not in done.output and "internal exception" not in done.output
    assert not canary_on_host(HOST), done.output
    assert done.returncode == 0, done.output
    started = json.loads(api(HOST, "/standin/args", LAB_SECRETS["VLLM_API_KEY"])[1])
    assert started["extra_args"] == extra  # each value one argument, whole, in the container
    assert daemon_json(HOST)["labels"] == labels
    info = on_host(HOST, "docker info --format '{{json .Labels}}'")
    assert set(labels) <= set(json.loads(info.stdout)), info.output
    if proxy:
        read = on_host(HOST, "apt-config dump Acquire::http::Proxy")
        assert f'Acquire::http::Proxy "{data["deploy_apt_proxy"]}";' in read.stdout, read.output
    assert not canary_on_host(HOST)


REFUSED = {
    "vllm_hf_cache_dir": f"/var/lib/hf$(touch${{IFS}}{CANARY})",
    "vllm_model": f"org/model$(touch$IFS{CANARY})",
    "vllm_served_model_name": f'x";touch {CANARY};"',
    "deploy_apt_proxy_bypass": ['172.17.0.2";Acquire::http::Proxy "http://evil/'],
    "docker_users": [f"x;touch {CANARY}"],
    "docker_data_root": f"/srv/docker\ntouch {CANARY}",
    "host_address": f"a$(touch$IFS{CANARY})",
    "vllm_image": f"img:1;touch {CANARY}",
}


def test_values_the_model_refuses_stop_the_run_before_any_host_is_touched(converged):
    done = deploy("-y", *data_args(REFUSED))
    assert done.returncode != 0
    assert "invalid configuration, nothing was changed" in done.output, done.output
    for key in REFUSED:
        assert key in done.output, key
    assert "--> Starting operation" not in done.output and "Traceback" not in done.output
    for name in converged:
        assert not canary_on_host(name)


def hostile_inventory(tmp_path: Path, host_name: str, **data) -> Path:
    """An inventory of the lab's hosts with ``data`` on the first one (a plain list: such an
    inventory comes from elsewhere, not through the lab's own checks)."""
    hosts = inventory_hosts(load_state(ROOT))
    first_name, first = hosts[0]
    hosts[0] = (host_name or first_name, {**first, **data})
    path = tmp_path / "hostile.py"
    path.write_text(f"lab_hosts = {hosts!r}\n")
    return path


# testinfra cuts a host name at '/': the option-like name's canary is relative (in ROOT)
RELATIVE = f"gpufleet-canary-{secrets.token_hex(6)}"
SSH_PAYLOADS = [
    pytest.param("ssh_hostname", "", {"ssh_hostname": f"127.0.0.1\nProxyCommand touch {CANARY}"},
                 id="hostname-newline"),
    pytest.param("ssh_hostname", "", {"ssh_hostname": f"127.0.0.1 ProxyCommand=touch {CANARY}"},
                 id="hostname-blank"),
    pytest.param("ssh_user", "", {"ssh_user": f'root\nMatch exec "touch {CANARY}"'},
                 id="user-match-exec"),
    pytest.param("ssh_known_hosts_file", "",
                 {"ssh_known_hosts_file": f"/x\nProxyCommand touch {CANARY}"}, id="known-hosts"),
    pytest.param("host name", f"{HOST}\nProxyCommand touch {CANARY}", {}, id="name-newline"),
    pytest.param("host name", f"-oProxyCommand=touch {RELATIVE}", {}, id="name-option"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "name", "data"), SSH_PAYLOADS)
def test_verify_refuses_ssh_values_that_would_run_on_the_controller(lab, tmp_path, key, name, data):
    inventory = hostile_inventory(tmp_path, name, **data)
    try:
        done = run(
            sys.executable, "-m", "pytest", "tests/verify", "--inventory", str(inventory),
            "-p", "no:cacheprovider", "-x", "-q", timeout=300,
        )  # fmt: skip
        ran = [path for path in (Path(CANARY), ROOT / RELATIVE) if path.exists()]
    finally:
        (ROOT / RELATIVE).unlink(missing_ok=True)
    assert not ran, done.output  # nothing ran on the controller
    assert done.returncode != 0, done.output
    if key != "host name":
        assert key in done.output, done.output
