"""Security properties that hold for the code and the shipped inventories, whatever the host:
host keys verified, nothing piped into a shell, secrets hidden wherever they are held."""

from __future__ import annotations

import re
from pathlib import Path

from operations.config import VllmConfig
from operations.fleet import inventory_data
from operations.secrets import Sealed, env_file, vllm_secrets
from operations.settings import Problem

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
