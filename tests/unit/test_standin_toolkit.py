"""Unit tests of the STAND-IN NVIDIA Container Toolkit repository (tests/standins/toolkit).

They build the repository into tmp_path with the real `dpkg-deb` and `gpg`, as any user,
without Docker, and skip only where those programs are missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.standins import gpu
from tests.standins.gpu.build import build_library
from tests.standins.toolkit import PACKAGES, VERSIONS, build_repo
from tests.standins.toolkit.archive import rfc2822
from tests.standins.toolkit.signing import fingerprints

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("dpkg-deb", "dpkg", "gpg", "gpgv")),
    reason="needs dpkg-deb, gpg and gpgv",
)

ARCH = "amd64"  # given explicitly: the tests do not depend on the machine's architecture


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("standin")
    return build_repo(base / "repo", base / "gnupg", arch=ARCH)


def _paragraphs(repo) -> list[dict[str, str]]:
    text = (repo.deb_dir / "Packages").read_text()
    result = []
    for block in text.strip().split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if not line.startswith(" "):
                key, _, value = line.partition(": ")
                fields[key] = value
        result.append(fields)
    return result


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


def test_layout_and_key(repo):
    assert repo.versions == VERSIONS == ("1.17.8-1", "1.17.9-1")
    assert len(repo.fingerprint) == 40 and repo.fingerprint == repo.fingerprint.upper()
    assert repo.deb_dir == repo.root / "stable/deb/amd64"
    for name in ("Packages", "Packages.gz", "Release", "InRelease", "Release.gpg"):
        assert (repo.deb_dir / name).is_file(), name
    armored = (repo.root / "gpgkey").read_text()
    assert armored.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    shown = _run("gpg", "--show-keys", "--with-colons", str(repo.root / "gpgkey")).stdout
    assert fingerprints(shown, "pub") == [repo.fingerprint]
    assert "stand-in" in shown


def test_packages_index_lists_both_versions_with_relations_and_hashes(repo):
    entries = _paragraphs(repo)
    assert sorted((e["Package"], e["Version"]) for e in entries) == sorted(
        (name, version) for name in PACKAGES for version in VERSIONS
    )
    for e in entries:
        deb = repo.deb_dir / e["Filename"]
        assert e["Filename"] == f"./{e['Package']}_{e['Version']}_amd64.deb"
        data = deb.read_bytes()
        assert int(e["Size"]) == len(data)
        assert e["SHA256"] == hashlib.sha256(data).hexdigest()
        assert e["Architecture"] == "amd64"
        assert e["Description"].startswith("STAND-IN for the gpufleet lab, not NVIDIA's package")
        v = e["Version"]
        want = {
            "nvidia-container-toolkit": (
                f"nvidia-container-toolkit-base (= {v}), libnvidia-container-tools (>= {v})"
            ),
            "libnvidia-container-tools": f"libnvidia-container1 (>= {v})",
        }.get(e["Package"])
        assert e.get("Depends") == want
        assert "runc" not in e.get("Depends", "")


def test_release_is_signed_and_lists_the_index(repo, tmp_path):
    keyring = tmp_path / "key.gpg"
    armored = (repo.root / "gpgkey").read_bytes()
    dearmored = subprocess.run(
        ["gpg", "--dearmor"], input=armored, capture_output=True, check=True
    ).stdout
    keyring.write_bytes(dearmored)
    inrelease = _run("gpgv", "--keyring", str(keyring), str(repo.deb_dir / "InRelease"))
    assert inrelease.returncode == 0, inrelease.stderr
    assert "Good signature" in inrelease.stderr
    detached = _run(
        "gpgv", "--keyring", str(keyring),
        str(repo.deb_dir / "Release.gpg"), str(repo.deb_dir / "Release"),
    )  # fmt: skip
    assert detached.returncode == 0, detached.stderr
    release = (repo.deb_dir / "Release").read_text()
    packages = (repo.deb_dir / "Packages").read_bytes()
    assert f" {hashlib.sha256(packages).hexdigest()} {len(packages):>8} Packages\n" in release
    assert "Packages.gz" in release and "Architectures: amd64" in release


def test_debs_hold_the_expected_fields_and_files(repo):
    deb = repo.deb_dir / "nvidia-container-toolkit-base_1.17.8-1_amd64.deb"
    fields = _run("dpkg-deb", "-f", str(deb), "Package", "Version", "Description").stdout
    assert "Package: nvidia-container-toolkit-base" in fields
    assert "Version: 1.17.8-1" in fields and "STAND-IN" in fields
    listing = _run("dpkg-deb", "-c", str(deb)).stdout
    assert "-rwxr-xr-x root/root" in listing and "./usr/bin/nvidia-ctk" in listing
    assert "./usr/bin/nvidia-container-runtime\n" in listing
    assert "./etc/nvidia-container-runtime/config.toml" in listing
    conffiles = _run("dpkg-deb", "--info", str(deb), "conffiles").stdout
    assert conffiles.strip() == "/etc/nvidia-container-runtime/config.toml"
    files = {
        "nvidia-container-toolkit": "./usr/bin/nvidia-container-runtime-hook",
        "libnvidia-container-tools": "./usr/bin/nvidia-container-cli",
        "libnvidia-container1": "./usr/share/doc/libnvidia-container1/",
    }
    for name, path in files.items():
        listing = _run("dpkg-deb", "-c", str(repo.deb_dir / f"{name}_1.17.9-1_amd64.deb")).stdout
        assert path in listing, name


def _extract(repo, tmp_path, name: str, version: str) -> Path:
    out = tmp_path / f"{name}-{version}"
    deb = repo.deb_dir / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    return out


def test_nvidia_ctk_version_and_unknown_commands(repo, tmp_path):
    tree = _extract(repo, tmp_path, "nvidia-container-toolkit-base", "1.17.8-1")
    ctk = str(tree / "usr/bin/nvidia-ctk")
    done = _run("sh", ctk, "--version")
    assert done.returncode == 0
    assert done.stdout == "NVIDIA Container Toolkit CLI version 1.17.8\ncommit: stand-in\n"
    done = _run("sh", ctk, "runtime", "configure", "--runtime=docker")
    assert done.returncode == 2
    assert "stand-in nvidia-ctk: 'runtime configure --runtime=docker' is not implemented" in (
        done.stderr
    )
    newer = _extract(repo, tmp_path, "nvidia-container-toolkit-base", "1.17.9-1")
    assert "version 1.17.9" in _run("sh", str(newer / "usr/bin/nvidia-ctk"), "--version").stdout


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="a real NVIDIA driver is loaded")
def test_nvidia_ctk_cdi_generate_fails_without_a_driver(repo, tmp_path):
    tree = _extract(repo, tmp_path, "nvidia-container-toolkit-base", "1.17.8-1")
    out = tmp_path / "cdi" / "nvidia.yaml"
    done = _run("sh", str(tree / "usr/bin/nvidia-ctk"), "cdi", "generate", f"--output={out}")
    assert done.returncode == 1
    assert "NVML" in done.stderr and "stand-in" in done.stderr
    assert not out.exists()


def test_nvidia_ctk_cdi_generate_reads_the_gpus_through_nvml(repo, tmp_path):
    """With the STAND-IN GPUs (tests/standins/gpu) it starts NVML as the real one does: one
    device per GPU, the driver's library named with its version (what the CdiSpec fact
    checks), and cdi list counts them."""
    tree = _extract(repo, tmp_path, "nvidia-container-toolkit-base", "1.17.8-1")
    library = build_library(tmp_path / "lib")
    out = tmp_path / "cdi" / "nvidia.yaml"
    env = {"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": str(library.parent),
           gpu.ENV: str(gpu.HERE / "hgx8.json")}  # fmt: skip
    done = _run("sh", str(tree / "usr/bin/nvidia-ctk"), "cdi", "generate", f"--output={out}",
                env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    spec = out.read_text()
    assert "580.159.04" in spec and spec.count("- name:") == 9  # 8 GPUs and "all"
    assert "/dev/nvidia7" in spec and "/dev/nvidia8" not in spec


def test_nvidia_container_cli_version(repo, tmp_path):
    tree = _extract(repo, tmp_path, "libnvidia-container-tools", "1.17.9-1")
    done = _run("sh", str(tree / "usr/bin/nvidia-container-cli"), "--version")
    assert done.returncode == 0 and "cli-version: 1.17.9" in done.stdout


def test_second_build_changes_nothing(repo):
    before = {p: p.stat().st_mtime_ns for p in repo.root.rglob("*") if p.is_file()}
    again = build_repo(repo.root, repo.root.parent / "gnupg", arch=ARCH)
    assert again == repo
    after = {p: p.stat().st_mtime_ns for p in repo.root.rglob("*") if p.is_file()}
    assert after == before


def test_rfc2822_date():
    assert rfc2822(0) == "Thu, 01 Jan 1970 00:00:00 UTC"
