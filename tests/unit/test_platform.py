"""The one platform table (operations.platform) and the layout's import rules (issue 15).

Every layer's own platform table covers exactly the supported set, with the package-manager
family the platform has, and every family-keyed dispatch covers both families: an OS added
to SUPPORTED and forgotten in a layer fails here, not as a KeyError on a host. Facts and the
shared kit never import a layer (a layer is operations/<layer>/__init__.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from operations import docker, driver, platform, toolkit, vllm
from operations.platform import SUPPORTED, family_of, os_supported, platform_key

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "operations"
LAYERS = ("preflight", "driver", "docker", "toolkit", "vllm", "monitoring", "gateway")


def _families(layer, table_value) -> set[str]:
    values = table_value.values() if isinstance(table_value, dict) else [table_value]
    return {value.family for value in values}


@pytest.mark.parametrize("layer", [driver, docker, toolkit], ids=lambda m: m.__name__)
def test_every_layer_table_covers_exactly_the_supported_platforms(layer):
    assert set(layer.PLATFORMS) == set(SUPPORTED), layer.__name__
    for key, value in layer.PLATFORMS.items():
        assert _families(layer, value) == {SUPPORTED[key].family}, (layer.__name__, key)


@pytest.mark.parametrize(
    "table", [driver.FAMILIES, docker.FAMILIES, toolkit.FAMILIES, vllm.PACKAGES],
    ids=["driver", "docker", "toolkit", "vllm"],
)  # fmt: skip
def test_every_family_dispatch_covers_both_families(table):
    assert set(table) == set(platform.FAMILIES)


@pytest.mark.parametrize(
    ("os_id", "version", "key", "supported", "family"),
    [("rocky", "9.4", ("rocky", "9"), True, "dnf"), ("rhel", "9", ("rhel", "9"), True, "dnf"),
     ("ubuntu", "24.04", ("ubuntu", "24.04"), True, "apt"), ("debian", "12", ("debian", "12"),
     True, "apt"), ("ubuntu", "20.04", ("ubuntu", "20.04"), False, "apt"),
     ("rocky", "8.9", ("rocky", "8"), False, "dnf"), ("arch", "rolling", ("arch", "rolling"),
     False, "apt")],
)  # fmt: skip
def test_keys_support_and_family(os_id, version, key, supported, family):
    profile = {"os_id": os_id, "os_version": version}
    assert platform_key(profile) == key
    assert os_supported(os_id, version) is supported
    assert family_of(profile) == family


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, ``from operations import x`` read as operations.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _layer_imports(path: Path) -> set[str]:
    layers = {f"operations.{layer}" for layer in LAYERS}
    return {name for name in _imports(path) if name in layers}


FACTS = sorted(OPS.glob("*/facts.py"))
KIT = sorted((OPS / "kit").glob("*.py")) + [OPS / "platform.py"]


def test_the_layout_has_the_rooms_the_rules_speak_of():
    assert [path.parent.name for path in FACTS] == sorted(LAYERS)
    assert len(KIT) > 5


@pytest.mark.parametrize("path", FACTS + KIT, ids=lambda p: str(p.relative_to(OPS)))
def test_facts_and_kit_never_import_a_layer(path):
    assert _layer_imports(path) == set(), f"{path.relative_to(ROOT)} imports a layer"


def test_the_rule_sees_a_layer_import(tmp_path):
    """The check itself: a facts module importing a layer would be caught."""
    probe = tmp_path / "facts.py"
    probe.write_text(
        (OPS / "toolkit" / "facts.py").read_text()
        + "\nfrom operations import toolkit\nimport operations.driver\n"
    )
    assert _layer_imports(probe) == {"operations.toolkit", "operations.driver"}
