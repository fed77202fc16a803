"""Each context's quoting rule (operations/kit/quoting.py) against the injection corpus, read back
by the real reader of that context: dash for shell, apt-config for apt.conf, apt-get for
sources lines, json for JSON, dash sourcing the vLLM secrets file. Every payload is either
refused with the usual error, or arrives as exactly the value given, and its canary file is
never created."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from operations.config.model import VllmConfig
from operations.config.secrets import SecretError, env_file, vllm_secrets
from operations.kit import quoting
from operations.kit.quoting import Unrepresentable
from tests.corpus.injection import (
    APT_CONF,
    APT_CONF_NAMES,
    CONTAINER,
    JSON,
    NOT_JSON,
    SHELL,
    Payload,
    Sandbox,
)

APT_CONFIG = shutil.which("apt-config")
APT_GET = shutil.which("apt-get")
needs_apt = pytest.mark.skipif(APT_CONFIG is None or APT_GET is None, reason="no apt here")
ids = [p.id for p in SHELL]


def value_of(payload: Payload, box: Sandbox) -> str:
    return payload.at(box.canary)


# --- shell ---------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", SHELL, ids=ids)
def test_a_shell_word_reaches_the_command_as_one_unchanged_argument(box, payload):
    value = value_of(payload, box)
    if "\0" in value:
        with pytest.raises(Unrepresentable, match="NUL"):
            quoting.shell(value, "some_key")
        return
    done = box.run(f"docker inspect {quoting.shell(value)} x")
    assert done.returncode == 0, done.stderr
    assert box.calls() == [["docker", "inspect", value, "x"]]
    assert not box.canary.exists()


def test_a_command_line_of_every_payload_keeps_each_one_argument(box):
    values = [value_of(p, box) for p in SHELL if "\0" not in p.text]
    done = box.run(quoting.shell_join(["docker", "run", *values]))
    assert done.returncode == 0, done.stderr
    assert box.calls() == [["docker", "run", *values]]
    assert not box.canary.exists()


@pytest.mark.parametrize("payload", [p for p in SHELL if "\0" not in p.text], ids=str)
def test_a_message_prints_its_words_verbatim_with_printf_not_echo(box, payload):
    value = value_of(payload, box) + "\\c\\n-n"  # what dash's echo would interpret
    said = quoting.shell_say(quoting.shell(f"at {value}: "), '"$((6 * 7))"', quoting.shell(" x"))
    done = box.run(f"{said}; exit 3")
    assert done.returncode == 3
    assert done.stderr == f"at {value}: 42 x\n"
    assert not box.canary.exists()


def test_the_refusal_names_host_key_value_and_what_is_allowed():
    with pytest.raises(Unrepresentable) as refused:
        quoting.apt_conf_string('a"b', "deploy_apt_proxy")
    text = str(refused.value)
    assert "deploy_apt_proxy = 'a\"b'" in text and "apt.conf" in text
    assert text.count("\n") == 1  # the header and one problem line
    assert "controller: " in text  # no host context outside a deploy


# --- apt.conf ------------------------------------------------------------------------------


def apt_dump(tmp_path: Path, text: str) -> dict[str, str]:
    """{option: value} apt-config reads from a file holding ``text`` (and the system's)."""
    path = tmp_path / "test.conf"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    done = subprocess.run(
        [APT_CONFIG, "dump", "-c", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    options = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        options[key] = value.removesuffix(";").removeprefix('"').removesuffix('"')
    return options


@needs_apt
@pytest.mark.parametrize("payload", APT_CONF + SHELL, ids=[p.id for p in APT_CONF + SHELL])
def test_an_apt_conf_value_sets_its_one_option_or_is_refused(tmp_path, payload):
    value = payload.at(tmp_path / "canary")
    try:
        quoted = quoting.apt_conf_string(value, "deploy_apt_proxy")
    except Unrepresentable as refused:
        assert "deploy_apt_proxy" in str(refused)
        assert any(c in value for c in '"\\') or quoting._CONTROL.search(value)
        return
    base = apt_dump(tmp_path, 'Gpufleet::Test::Marker "1";\n')
    options = apt_dump(tmp_path, f'Gpufleet::Test::Marker "1";\nGpufleet::Test::Value {quoted};\n')
    assert set(options) - set(base) == {"Gpufleet::Test::Value"}
    assert options["Gpufleet::Test::Value"] == value
    assert "APT::Injected" not in options


@needs_apt
@pytest.mark.parametrize(
    "payload", APT_CONF_NAMES + SHELL, ids=[p.id for p in APT_CONF_NAMES + SHELL]
)
def test_an_apt_conf_option_name_is_one_host_name_or_refused(tmp_path, payload):
    value = payload.at(tmp_path / "canary")
    try:
        name = quoting.apt_conf_name(value, "deploy_apt_proxy_bypass")
    except Unrepresentable as refused:
        assert "deploy_apt_proxy_bypass" in str(refused) and "host name" in str(refused)
        return
    options = apt_dump(tmp_path, f'Gpufleet::Test::{name} "DIRECT";\n')
    assert options[f"Gpufleet::Test::{value}"] == "DIRECT"
    assert "APT::Injected" not in options


@needs_apt
def test_a_plain_proxy_url_and_host_name_are_written_as_given(tmp_path):
    url = "http://user:pw@10.0.0.3:3142/"
    text = f"A::Proxy {quoting.apt_conf_string(url, 'k')};\nA::Proxy::"
    text += f'{quoting.apt_conf_name("mirror-1.internal", "k")} "DIRECT";\n'
    options = apt_dump(tmp_path, text)
    assert options["A::Proxy"] == url and options["A::Proxy::mirror-1.internal"] == "DIRECT"


# --- apt sources and preferences, dnf .repo ---------------------------------------------


def apt_sources(tmp_path: Path, line: str) -> list[tuple[str, str]]:
    """(repository URI, suite) of each entry apt-get reads from a sources list of ``line``."""
    (tmp_path / "lists").mkdir(exist_ok=True)
    path = tmp_path / "test.list"
    path.write_text(line + "\n")
    done = subprocess.run(
        [APT_GET, "-o", f"Dir::Etc::SourceList={path}", "-o", "Dir::Etc::SourceParts=/none",
         "-o", f"Dir::State::Lists={tmp_path / 'lists'}", "indextargets", "--no-release-info",
         "--format", "$(REPO_URI)\t$(RELEASE)"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return sorted({tuple(row.split("\t")) for row in done.stdout.splitlines()})


@needs_apt
@pytest.mark.parametrize("payload", SHELL, ids=ids)
def test_an_apt_source_line_keeps_the_uri_one_word_or_is_refused(box, tmp_path, payload):
    uri = "http://mirror.internal/debian" + value_of(payload, box)
    try:
        word = quoting.apt_source_word(uri, "docker_repo_url")
    except Unrepresentable as refused:
        assert "docker_repo_url" in str(refused)
        assert any(c.isspace() or c in '#"[]' for c in uri) or quoting._CONTROL.search(uri)
        return
    line = f"deb [signed-by=/etc/apt/keyrings/x.gpg] {word} bookworm stable"
    assert apt_sources(tmp_path, line) == [(uri + "/", "bookworm")]
    assert not box.canary.exists()


@needs_apt
def test_an_ipv6_mirror_keeps_its_brackets_in_a_source_line(tmp_path):
    uri = quoting.apt_source_word("http://[fd00::3]:3142/debian", "docker_repo_url")
    line = f"deb [signed-by=/etc/apt/keyrings/x.gpg] {uri} bookworm stable"
    assert apt_sources(tmp_path, line) == [("http://[fd00::3]:3142/debian/", "bookworm")]
    for unbalanced in ("http://m/a[b", "http://m/a]b", "http://[fd00::3/x"):
        with pytest.raises(Unrepresentable):
            quoting.apt_source_word(unbalanced, "docker_repo_url")


@pytest.mark.parametrize("payload", SHELL, ids=ids)
def test_an_apt_preferences_field_stays_one_line_or_is_refused(box, payload):
    glob = "5:27.5[-+~.]*" + value_of(payload, box)
    try:
        text = f"Package: a\nPin: version {quoting.apt_field(glob, 'docker_version')}\n"
    except Unrepresentable as refused:
        assert "docker_version" in str(refused)
        return
    fields = [line.split(": ", 1) for line in text.splitlines()]
    assert fields == [["Package", "a"], ["Pin", f"version {glob}"]]


@pytest.mark.parametrize("payload", SHELL, ids=ids)
def test_a_dnf_repo_value_stays_its_one_line_or_is_refused(tmp_path, box, payload):
    url = "https://mirror.internal/rpm" + value_of(payload, box)
    try:
        value = quoting.ini_value(url, "docker_repo_url")
    except Unrepresentable:
        assert quoting._CONTROL.search(url)
        return
    parser = configparser.RawConfigParser(interpolation=None)
    parser.read_string(f"[repo]\nname=x\nbaseurl={value}\ngpgcheck=1\n")
    assert dict(parser["repo"]) == {"name": "x", "baseurl": url.strip(), "gpgcheck": "1"}


# --- what pyinfra puts on a command line unquoted ---------------------------------------


@pytest.mark.parametrize("payload", SHELL + CONTAINER, ids=[p.id for p in SHELL + CONTAINER])
def test_package_names_and_image_references_refuse_anything_a_shell_reads(box, payload):
    value = "docker-ce" + value_of(payload, box)
    for check in (quoting.package, quoting.image_reference):
        try:
            checked = check(value, "k")
        except Unrepresentable:
            continue
        assert payload not in SHELL  # each of those holds something a shell reads
        assert quoting.shell(checked) == checked  # needs no quoting: nothing to interpret


def test_plain_package_names_and_images_pass():
    for name in ("nvidia-driver-580-server-open", "docker-ce-27.5.*", "linux-headers-6.1.0-28"):
        assert quoting.package(name, "k") == name
    for image in ("vllm/vllm-openai:v0.11.0", "r.example:5000/a/b@sha256:" + "0" * 64):
        assert quoting.image_reference(image, "k") == image


# --- container arguments -----------------------------------------------------------------


@pytest.mark.parametrize("payload", CONTAINER + SHELL, ids=[p.id for p in CONTAINER + SHELL])
def test_a_container_value_is_one_argument_never_an_option(box, payload):
    value = value_of(payload, box)
    try:
        checked = quoting.container_value(value, "vllm_model")
    except Unrepresentable as refused:
        assert value.startswith("-") or "\0" in value
        assert "vllm_model" in str(refused)
        return
    assert not checked.startswith("-")
    box.run(quoting.shell_join(["docker", "run", "--name", checked, "img", "serve", checked]))
    assert box.calls() == [["docker", "run", "--name", value, "img", "serve", value]]
    assert not box.canary.exists()


@pytest.mark.parametrize("payload", CONTAINER + SHELL, ids=[p.id for p in CONTAINER + SHELL])
def test_a_bind_mount_source_is_one_field_of_the_volume_spec(box, payload):
    value = "/var/lib/hf" + value_of(payload, box)
    try:
        source = quoting.volume_source(value, "vllm_hf_cache_dir")
    except Unrepresentable:
        assert ":" in value or "\0" in value
        return
    spec = f"{source}:/root/.cache/huggingface"
    assert spec.split(":") == [value, "/root/.cache/huggingface"]  # docker splits on ':'
    box.run(quoting.shell_join(["docker", "run", "--volume", spec]))
    assert box.calls() == [["docker", "run", "--volume", spec]]


# --- JSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", JSON + SHELL, ids=[p.id for p in JSON + SHELL])
def test_json_text_reads_back_as_the_same_value(tmp_path, payload):
    value = payload.at(tmp_path / "canary")
    data = {value: [value, {"nested": value}], "live-restore": True}
    text = quoting.json_text(data, "docker_daemon_options", indent=2, sort_keys=True)
    assert json.loads(text) == data
    assert "\n" not in json.dumps(value)  # a newline in the value is written \n


@pytest.mark.parametrize("value", NOT_JSON, ids=repr)
def test_what_json_cannot_say_is_refused(value):
    with pytest.raises(Unrepresentable, match="docker_daemon_options.x.*cannot be written as JSON"):
        quoting.json_text({"x": value}, "docker_daemon_options.x")


# --- the vLLM secrets file ---------------------------------------------------------------


@pytest.mark.parametrize("payload", SHELL, ids=ids)
def test_a_secret_reaches_the_container_environment_unchanged_or_is_refused(box, payload):
    value = "sk-" + value_of(payload, box)
    try:
        secrets = vllm_secrets(VllmConfig(), {"VLLM_API_KEY": value})
    except SecretError as refused:
        assert value not in str(refused)  # the value is never shown
        return
    path = box.root / "secrets.env"
    path.write_text(env_file(secrets).reveal())
    path.chmod(0o644)
    done = box.run(f'set -a; . {quoting.shell(path)}; set +a; docker "$VLLM_API_KEY"')
    assert done.returncode == 0, done.stderr
    assert box.calls() == [["docker", value.strip()]]
    assert not box.canary.exists()
