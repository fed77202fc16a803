"""Security properties that hold for the code and the shipped inventories, whatever the host:
host keys verified, nothing piped into a shell, secrets hidden wherever they are held."""

from __future__ import annotations

import configparser
import functools
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from operations import run as fleet
from operations.config.load import ConfigError, Problem, load_config
from operations.config.model import SETTINGS, FleetConfig, VllmConfig, VllmInstance, VllmServer
from operations.config.secrets import Sealed, env_file, vllm_secrets
from operations.inventory import inventory_data
from operations.kit.packages import proxy_text
from operations.vllm import cache_space_guard, container_args
from tests.corpus.injection import MARK, SHELL, SSH, Payload, Sandbox
from tests.plan.harness import FakeFleet
from tests.plan.test_docker_plan import profile
from tests.unit.test_quoting import APT_CONFIG
from tests.verify import fleet as verify_fleet

ROOT = Path(__file__).resolve().parents[2]
SHELL_PIPE = re.compile(r"\|\s*(sudo\s+)?(ba|da|z)?sh\b")


def test_no_operation_pipes_a_download_into_a_shell():
    """Repository keys are fetched to a file and checked by fingerprint; nothing runs
    `curl … | sh`."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "operations").glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SHELL_PIPE.search(line) and "``" not in line  # a docstring saying there is none
    ]
    assert offenders == []


def test_the_example_production_inventory_keeps_host_key_checking_on():
    hosts = inventory_data(str(ROOT / "inventory" / "prod.py"))
    assert hosts  # the example lists hosts
    for name, data in hosts.items():
        assert data.get("ssh_strict_host_key_checking") not in ("no", "off"), name
        assert "ssh_password" not in data, name


def test_group_data_never_turns_host_key_checking_off():
    for path in (ROOT / "group_data").glob("*.py"):
        text = path.read_text()
        assert "ssh_strict_host_key_checking" not in text, path.name
        assert "ssh_password" not in text, path.name


def test_the_lab_inventory_pins_its_host_keys():
    text = (ROOT / "lab" / "state.py").read_text()
    assert '"ssh_strict_host_key_checking": "yes"' in text
    assert '"ssh_known_hosts_file": state["known_hosts"]' in text


def test_sealed_secrets_never_show_in_repr_or_str():
    sealed = env_file({"VLLM_API_KEY": "sk-secret-123", "HF_TOKEN": "hf_secret"})
    for shown in (repr(sealed), str(sealed), f"{sealed}", repr([sealed])):
        assert "secret" not in shown
    assert sealed.reveal() == "HF_TOKEN='hf_secret'\nVLLM_API_KEY='sk-secret-123'\n"
    assert isinstance(sealed, Sealed)


def test_secrets_come_from_the_controller_only(tmp_path):
    key = tmp_path / "api-key"
    key.write_text("sk-from-file\n")
    key.chmod(0o600)
    config = VllmConfig(api_key_file=str(key), hf_token_env="MY_HF")
    assert vllm_secrets(config, {"MY_HF": "hf_env", "VLLM_API_KEY": "ignored"}) == {
        "VLLM_API_KEY": "sk-from-file",
        "HF_TOKEN": "hf_env",
    }


def test_credential_like_keys_are_masked_in_errors():
    shown = str(Problem("h", "vllm_api_key", "sk-leak", "unknown setting"))
    assert "sk-leak" not in shown and "'***'" in shown


def test_credential_named_parts_deeper_in_a_key_are_masked_too():
    for key in ("data.ssh_password", "hosts[2].data.hf_token", "proxy.password"):
        shown = str(Problem("h", key, "hunter2-leak", "not allowed here"))
        assert "hunter2-leak" not in shown and "'***'" in shown, key
    # a setting that only names where a secret is kept shows its value
    assert "'MY_KEY'" in str(Problem("h", "vllm_api_key_env", "MY_KEY", "x"))


# --- injection: config values through the real deploy, generated shell run in a sandbox ----
# The deploy is planned with the plan-test harness (the real deploy.py, pyinfra's fake
# connector, a host with nothing deployed yet); every command and fact read holding a
# payload is then run as a host runs it (dash -c) in the corpus sandbox (as nobody, every
# command a recording stub), and every uploaded file holding one is read back by its own
# reader. A payload is refused (by the model, or by the quoting rule at its point of use,
# while planning) or stays data: its canary never appears. Two sweeps: values the model lets
# through (every setting), and values put into the validated config behind the model's back
# (defence in depth: each layer's own quoting, whatever the model allows one day).

DEBIAN, ROCKY = profile(), profile("rocky", "9", "")
OSES = pytest.mark.parametrize("os_lines", [DEBIAN, ROCKY], ids=["debian", "rocky"])
# one payload of each kind (substitution, separator, each quote, line end, NUL, Unicode line
# end): each is tried in every field of a layer, one plan for each refusal, so kept short
BYPASS = [p for p in SHELL if p.id in {
    "dollar-paren", "backticks", "semicolon-ifs", "close-double", "close-single-ifs",
    "newline", "nul", "unicode-line-separator",
}]  # fmt: skip
APT_CONF_OPTION = re.compile(r"Acquire(::http(::Proxy(::[^:]+)?)?)?|DPkg(::Lock(::Timeout)?)?")
PREFERENCES_LINE = re.compile(r"#.*|Package: [^\n]+|Pin: version \S+|Pin-Priority: 1001")
REPO_KEYS = {"name", "baseurl", "enabled", "gpgcheck", "gpgkey", "type"}
# settings a fresh host plans nothing with: the verify suite and the controller read them,
# the vLLM layer reads the archive only for a missing image
NOT_PLANNED = {"host_address", "vllm_image_archive", "vllm_hf_token_file", "vllm_api_key_file"}


def fresh_host(os_lines: list[str], **data) -> dict:
    """Fake facts of a host with nothing deployed yet: every layer plans its changes."""
    responses = {"os-release": os_lines, "label=gpufleet.vllm": ["docker=down"],
                 "docker image inspect": []}  # fmt: skip
    return {"fake_responses": responses, **data}


def plan_texts(tmp_path: Path, host: dict) -> list[str] | ConfigError:
    """Every command of the planned deploy and every fact read it sent, or the refusal that
    stopped it while planning."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    fleet = FakeFleet(tmp_path, {"h": host})
    try:
        operations = fleet.plan(base=True)["h"]
    except ConfigError as refused:
        assert not [c for c in fleet.sent()["h"] if str(c).startswith("upload ")]
        return refused
    return [c for _, commands in operations for c in commands] + fleet.sent()["h"]


def apt_options(text: str) -> set[str]:
    """The options apt-config reads from an apt.conf.d file of ``text``, beyond the system's."""
    with tempfile.TemporaryDirectory() as work:
        conf, empty = Path(work) / "test.conf", Path(work) / "empty.conf"
        conf.write_text(text)
        empty.write_text("")
        dumps = [
            subprocess.run([APT_CONFIG, "dump", "-c", str(path)], capture_output=True,
                           text=True, check=True).stdout
            for path in (empty, conf)
        ]  # fmt: skip
    before, after = ({line.split(" ", 1)[0] for line in d.splitlines()} for d in dumps)
    return after - before


def check_upload(dest: str, content: str) -> None:
    """An uploaded file holding a payload, read back by its own reader: nothing added."""
    if dest.startswith("/etc/apt/apt.conf.d/"):
        if APT_CONFIG:
            options = apt_options(content)
            assert options and all(APT_CONF_OPTION.fullmatch(o) for o in options), options
        assert content.count("\n") == content.count(";\n")  # one option a line
    elif dest.startswith("/etc/apt/preferences.d/"):
        lines = content.splitlines()
        assert all(PREFERENCES_LINE.fullmatch(line) for line in lines), lines
        assert sum(not line.startswith("#") for line in lines) == 3
    elif dest.endswith((".json", ".json.staged")):
        json.loads(content)
    elif dest.startswith("/etc/yum.repos.d/"):
        parser = configparser.RawConfigParser(interpolation=None, strict=True)
        parser.read_string(content)
        (section,) = parser.sections()
        assert set(parser[section]) <= REPO_KEYS, dict(parser[section])
    else:
        raise AssertionError(f"an upload to {dest} holds a payload: no reader known")


def run_with_payload(box: Sandbox, texts: list[str]) -> dict[str, subprocess.CompletedProcess]:
    """Run in the sandbox each command or fact read holding the canary's path, read back each
    such upload; {command: its result}. Fails when a payload ran."""
    canary, ran = str(box.canary), {}
    box.forget_calls()
    for text in texts:
        if canary not in text:
            continue
        if text.startswith("upload "):
            check_upload(*text.removeprefix("upload ").split(": ", 1))
            continue
        assert "\0" not in text, f"a NUL reached a command: {text!r}"
        ran[text] = box.run(text)
        assert not box.canary.exists(), f"the payload ran: {text}"
    assert not [call for call in box.calls() if call[0] in ("reboot", "touch")], box.calls()
    return ran


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*strings(k), *strings(v))]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in strings(item)]
    return [str(value)]


def refused_one(refused: ConfigError, given: dict[Any, Any]) -> Any:
    """The entry of ``given`` whose value the refusal names (one line, naming a key)."""
    (problem,) = refused.problems
    assert problem.key and problem.allowed and "\n" not in str(problem)

    def plain(text: str) -> str:  # a fingerprint is shown upper-cased, without blanks
        return text.casefold().replace(" ", "")

    for entry, value in given.items():
        if any(plain(text) in plain(str(problem.value)) for text in strings(value)):
            return entry
    raise AssertionError(f"the refusal names no value the test gave: {refused}")


# --- values the model lets through ---------------------------------------------------------

FORMS = (
    lambda v: v,
    lambda v: "/var/lib/gpufleet/x" + v,
    lambda v: "http://mirror.internal/repo" + v,
    lambda v: "x" + v,
)  # how a payload is written into a setting: as is, in a path, in a URL, after a word


def _candidates(key: str, name: str, text: str) -> list[Any]:
    """The ways ``text`` can be written into setting ``key``."""
    if key == "docker_daemon_options":
        return [{f"x-{name}": text}, {f"x-{name}": [text]}]
    if key == "vllm_instances":
        return [[{"name": "a", "model": form(text)}] for form in FORMS]
    return [c for form in FORMS for c in ([form(text)], form(text))]  # a list takes them all


@functools.cache
def _shapes(key: str) -> tuple[int, ...]:
    """Which candidates setting ``key`` takes for plain text (the others never fit it)."""
    return tuple(
        i
        for i, c in enumerate(_candidates(key, "probe", "abc"))
        if not load_config("h", {key: c})[1]
    )


def accepted(payload: Payload, canary: Path) -> dict[str, Any]:
    """{data key: hostile value} for every setting whose model lets ``payload`` through."""
    found: dict[str, Any] = {}
    for key in SETTINGS:
        candidates = _candidates(key, payload.id, payload.at(canary))
        for candidate in (candidates[i] for i in _shapes(key)):
            if not load_config("h", {key: candidate})[1]:
                found[key] = candidate
                break
    return found


def hostile_rows(box: Sandbox) -> list[dict[str, Any]]:
    """Host data rows holding every accepted (setting, payload): a list or dict setting takes
    every payload at once, a scalar setting one payload per row."""
    rows: list[dict[str, Any]] = [{}]
    for payload in SHELL:
        for key, value in accepted(payload, box.canary).items():
            if isinstance(value, dict):
                rows[0].setdefault(key, {}).update(value)
            elif isinstance(value, list) and key != "vllm_instances":
                rows[0].setdefault(key, []).extend(value)
            else:
                row = next((r for r in rows if key not in r), None)
                if row is None:
                    rows.append(row := {})
                row[key] = value
    return rows


@OSES
def test_values_the_model_lets_through_stay_data_in_every_context(
    tmp_path, monkeypatch, box, os_lines
):
    monkeypatch.setenv("VLLM_API_KEY", "sk-test-123456")
    rows, reached, refused = hostile_rows(box), set(), set()
    given = {key for row in rows for key in row}
    for number, row in enumerate(rows):
        while row:
            texts = plan_texts(tmp_path / f"{number}-{len(row)}", fresh_host(os_lines, **row))
            if isinstance(texts, ConfigError):  # refused at its point of use
                key = refused_one(texts, row)
                refused.add(key)
                del row[key]
                continue
            run_with_payload(box, texts)
            found = "\n".join(texts)
            reached |= {k for k, v in row.items() if any(t in found for t in strings(v))}
            break
    assert given - NOT_PLANNED <= reached | refused  # each one was planned, or refused


# --- values behind the model's back --------------------------------------------------------


def _word(token):
    return lambda v: token + v


def _url(token):
    return lambda v: f"http://mirror.internal/{token}" + v


def _path(token):
    return lambda v: f"/srv/{token}" + v


def _words(token):
    return lambda v: [token + v, f"--{token}={v}"]


# layer -> (section, field, form): every free-text field a layer writes somewhere
BEHIND: dict[str, list[tuple[str, str, Any]]] = {
    "driver": [
        ("deploy", "apt_proxy", _url), ("deploy", "apt_proxy_bypass", _words),
        ("driver", "branch", _word),
        ("driver", "version", _word), ("driver", "cuda_repo_url", _url),
        ("driver", "cuda_repo_fingerprint", _word),
    ],
    "docker": [
        ("docker", "repo_url", _url), ("docker", "version", _word),
        ("docker", "repo_fingerprint", _word), ("docker", "users", _words),
        ("docker", "log_max_size", _word), ("docker", "data_root", _path),
        ("docker", "registry_mirrors", lambda t: lambda v: [_url(t)(v)]),
        ("docker", "daemon_options", lambda t: lambda v: {t + v: [v, {v: v}]}),
    ],
    "toolkit": [("toolkit", "repo_url", _url), ("toolkit", "repo_fingerprint", _word)],
    "vllm": [
        ("vllm", "model", _word), ("vllm", "served_model_name", _word),
        ("vllm", "extra_args", _words), ("vllm", "image", _word),
        ("vllm", "hf_cache_dir", _path), ("vllm", "shm_size", _word),
        ("vllm", "dtype", _word), ("vllm", "quantization", _word),
        ("vllm", "restart_policy", _word), ("docker", "log_max_size", _word),
    ],
}  # fmt: skip


def behind_the_model(layer: str, values: dict[tuple[str, str], Any]) -> FleetConfig:
    """The default config with ``values`` set without validation (``ipc_host`` off, so the
    shared-memory size is used)."""
    base, updates = FleetConfig(), {("deploy", "layers"): [layer], ("vllm", "ipc_host"): False}
    by_section: dict[str, dict[str, Any]] = {}
    for (section, field), value in (updates | values).items():
        by_section.setdefault(section, {})[field] = value
    return base.model_copy(
        update={name: getattr(base, name).model_copy(update=f) for name, f in by_section.items()}
    )


def _servers_unvalidated(vllm: VllmConfig) -> list[VllmInstance]:
    inherited = {name: getattr(vllm, name) for name in VllmServer.model_fields}
    return [VllmInstance.model_construct(**inherited, name="main")]


@OSES
@pytest.mark.parametrize("layer", list(BEHIND))
def test_each_layer_quotes_what_it_writes_whatever_the_model_allows(
    tmp_path, monkeypatch, box, os_lines, layer
):
    monkeypatch.setenv("VLLM_API_KEY", "sk-test-123456")
    monkeypatch.setattr(VllmConfig, "servers", _servers_unvalidated)
    outcomes = {"data": 0, "refused": 0}
    for payload in BYPASS:
        text = payload.at(box.canary)
        values = {
            (section, field): form(f"f{index:02d}-")(text)
            for index, (section, field, form) in enumerate(BEHIND[layer])
        }
        while values:
            config = behind_the_model(layer, values)
            monkeypatch.setattr(fleet, "host_config", lambda state, host, c=config: c)
            texts = plan_texts(tmp_path / f"{payload.id}-{len(values)}", fresh_host(os_lines))
            if isinstance(texts, ConfigError):  # refused at its point of use
                del values[refused_one(texts, values)]
                outcomes["refused"] += 1
                continue
            ran = run_with_payload(box, texts)
            outcomes["data"] += 1
            if layer == "vllm":
                check_the_container_got_its_arguments(box, config, ran)
            break
    assert outcomes["data"] and (layer == "toolkit" or outcomes["refused"]), outcomes


def check_the_container_got_its_arguments(box: Sandbox, config: FleetConfig, ran) -> None:
    """docker run received exactly container_args; the cache guard printed the path whole."""
    (server,) = config.vllm.servers()
    runs = [call for call in box.calls() if call[:3] == ["docker", "run", "--detach"]]
    assert runs and all(call[5:] == container_args(config, server) for call in runs)
    guards = [done for command, done in ran.items() if command.startswith("free=$(df -Pk")]
    assert guards and all(config.vllm.hf_cache_dir in done.stderr for done in guards)


# --- the two cases the issue names ---------------------------------------------------------

CACHE_DIRS = ["/var/lib/hf$(touch${IFS}@CANARY@)", '/var/lib/hf";reboot;"',
              "/var/lib/hf$(touch$IFS@CANARY@)", "/var/lib/hf';touch$IFS@CANARY@;'"]  # fmt: skip


@pytest.mark.parametrize("cache", CACHE_DIRS)
def test_the_cache_guard_keeps_a_hostile_cache_dir_as_data(tmp_path, monkeypatch, box, cache):
    monkeypatch.setenv("VLLM_API_KEY", "sk-test-123456")
    cache = cache.replace(MARK, str(box.canary))
    config, problems = load_config("h", {"vllm_hf_cache_dir": cache})
    assert problems or config is not None  # the model refuses it, or it is planned below
    config = FleetConfig().model_copy(
        update={"vllm": FleetConfig().vllm.model_copy(update={"hf_cache_dir": cache})}
    )
    (server,) = config.vllm.servers()
    done = box.run(cache_space_guard(config, server))
    assert done.returncode == 1 and f"for the model cache at {cache};" in done.stderr
    assert box.calls() == [["df", "-Pk", cache]]  # the path one argument, whole
    assert not box.canary.exists()


BYPASS_ENTRIES = ['mirror";Acquire::http::Proxy "http://evil:1/', 'x" ; APT::Injected "1',
                  "mirror\nAPT::Injected \"1\";", "mirror::APT::Injected"]  # fmt: skip


@pytest.mark.parametrize("entry", BYPASS_ENTRIES)
def test_a_hostile_proxy_bypass_entry_never_sets_another_apt_option(tmp_path, entry):
    _, problems = load_config("h", {"deploy_apt_proxy": "http://10.0.0.3:3142/",
                                    "deploy_apt_proxy_bypass": [entry]})  # fmt: skip
    assert problems, "the model should refuse it; the file writer refuses it anyway:"
    with pytest.raises(ConfigError, match="deploy_apt_proxy_bypass.*apt option name"):
        proxy_text("http://10.0.0.3:3142/", (entry,))
    text = proxy_text("http://10.0.0.3:3142/", ("mirror.internal",))
    if APT_CONFIG:
        options = apt_options(text)  # the system's own apt.conf may set Acquire already
        assert {"Acquire::http::Proxy", "Acquire::http::Proxy::mirror.internal"} <= options
        assert options <= {"Acquire", "Acquire::http", "Acquire::http::Proxy",
                           "Acquire::http::Proxy::mirror.internal"}  # fmt: skip


def test_a_proxy_url_apt_conf_cannot_hold_is_refused_without_its_password():
    with pytest.raises(ConfigError) as refused:
        proxy_text('http://user:s3cret@proxy:3142/x";APT::Injected "1', ())
    assert "deploy_apt_proxy" in str(refused.value) and "s3cret" not in str(refused.value)


# --- ssh_config on the controller (the verify suite's, tests/verify/fleet.py) --------------

SSH_BIN = shutil.which("ssh")


@pytest.mark.skipif(SSH_BIN is None, reason="no ssh client here")
@pytest.mark.parametrize("field", ["ssh_hostname", "ssh_user", "ssh_known_hosts_file", "name"])
@pytest.mark.parametrize("payload", SSH, ids=[p.id for p in SSH])
def test_an_inventory_value_never_adds_an_ssh_config_line(box, field, payload):
    """ssh -G reads the block as ssh would (it runs a Match exec while parsing): a value is
    refused, or is the one option's value, with no ProxyCommand and no canary."""
    value = payload.at(box.canary)
    name, data = (value, {}) if field == "name" else ("lab-1", {field: value})
    try:
        block = verify_fleet._ssh_block(name, data, FleetConfig())
    except verify_fleet.UnsafeSshValue:
        return
    config = box.root / "ssh_config"
    config.write_text(block + "\n")
    host = "lab-1" if field != "name" else value.split()[0]
    done = subprocess.run([SSH_BIN, "-G", "-F", str(config), "--", host], capture_output=True,
                          text=True, check=False, timeout=20)  # fmt: skip
    assert not box.canary.exists()
    assert done.returncode == 0, done.stderr
    options = dict((line.split(" ", 1) + [""])[:2] for line in done.stdout.splitlines())
    assert options.get("proxycommand", "none") == "none" and "localcommand" not in options
    if field in SSH_OPTION:  # the value is that one option's, whole (ssh lowercases host names)
        assert options[SSH_OPTION[field]].casefold() == value.casefold()


SSH_OPTION = {"ssh_hostname": "hostname", "ssh_user": "user",
              "ssh_known_hosts_file": "userknownhostsfile"}  # fmt: skip


# verify on the controller: an inventory (from cloud tags, say) whose SSH values would make
# ssh run a command there. The hosts point at a closed port: nothing needs to answer.
CONTROLLER_CANARY = f"gpufleet-canary-{secrets.token_hex(6)}"  # relative: created in ROOT
CONTROLLER_CASES = [
    # a host name also reaches ssh's command line (through testinfra): not as an option
    pytest.param("name", f"-oProxyCommand=touch {CONTROLLER_CANARY}", {}, id="name-option"),
    pytest.param("name", f"lab-1\nProxyCommand touch {CONTROLLER_CANARY}", {}, id="name-newline"),
    pytest.param("ssh_hostname", "lab-1",
                 {"ssh_hostname": f"127.0.0.1\nProxyCommand touch {CONTROLLER_CANARY}"},
                 id="hostname-newline"),
    pytest.param("ssh_user", "lab-1",
                 {"ssh_user": f'root\nMatch exec "touch {CONTROLLER_CANARY}"'}, id="user-match"),
    pytest.param("ssh_user", "lab-1", {"ssh_user": f"-oProxyCommand=touch {CONTROLLER_CANARY}"},
                 id="user-option"),
    pytest.param("ssh_known_hosts_file", "lab-1",
                 {"ssh_known_hosts_file": f"/x\nProxyCommand touch {CONTROLLER_CANARY}"},
                 id="known-hosts-newline"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "name", "data"), CONTROLLER_CASES)
def test_verify_runs_nothing_on_the_controller_for_hostile_ssh_values(tmp_path, key, name, data):
    inventory = tmp_path / "hostile.py"
    host = {"ssh_hostname": "127.0.0.1", "ssh_port": 1, "ssh_user": "root", **data}
    inventory.write_text(f"lab_hosts = {[(name, host)]!r}\n")
    canary = ROOT / CONTROLLER_CANARY
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/verify", "--inventory", str(inventory),
             "-p", "no:cacheprovider", "-x", "-q"],
            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert not canary.exists(), "an inventory value ran a command on the controller"
    finally:
        canary.unlink(missing_ok=True)
    assert done.returncode != 0
