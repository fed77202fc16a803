"""operations.kit.converged: the one-command state read, run by a real shell (/bin/sh: dash on
Debian, as on the hosts) on real files."""

from __future__ import annotations

import hashlib
import subprocess

from operations.kit.converged import MARK, ManagedState, PathState, _has, _owned


def read(paths: tuple[str, ...], units: tuple[str, ...] = ()) -> dict:
    fact = ManagedState()
    done = subprocess.run(["sh", "-c", fact.command(paths, units)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return fact.process(done.stdout.splitlines())


def test_kind_mode_owner_and_sha1_of_each_path_in_one_command(tmp_path):
    text = "blacklist nouveau\n"
    (tmp_path / "file.conf").write_text(text)
    (tmp_path / "file.conf").chmod(0o640)
    (tmp_path / "dir").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "file.conf")
    paths = tuple(str(tmp_path / n) for n in ("file.conf", "dir", "link", "gone", "with space"))
    (tmp_path / "with space").write_text("")
    found = read(paths)["paths"]
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    sha1 = hashlib.sha1(text.encode()).hexdigest()  # noqa: S324
    assert found[paths[0]] == PathState("file", "640", user, group, sha1)
    assert found[paths[1]] == PathState("directory", "700", user, group, "")
    assert found[paths[2]].kind == "link"  # never followed: files.put would replace it
    assert found[paths[3]] == PathState("absent", "", "", "", "")
    assert found[paths[4]].kind == "file"


def test_unit_lines_and_lines_of_another_shape_are_told_apart():
    output = [
        f"{MARK}\tunit\tId=docker.service", f"{MARK}\tunit\tSubState=running",
        f"{MARK}\tunit\tUnitFileState=enabled", f"{MARK}\tunit\tId=nvidia-persistenced.service",
        f"{MARK}\tunit\tSubState=dead", "some banner a shell printed", f"{MARK}\tpath\ttoo few",
    ]  # fmt: skip
    assert ManagedState().process(output) == {
        "paths": {},
        "units": {
            "docker": {"SubState": "running", "UnitFileState": "enabled"},
            "nvidia-persistenced": {"SubState": "dead"},
        },
    }


def test_mode_is_compared_as_a_number_and_owner_only_when_asked():
    found = PathState("file", "644", "root", "root", "x")
    assert _owned(found, "0644", None, None) and _owned(found, 644, "root", None)
    assert not _owned(found, "600", None, None)
    assert not _owned(found, None, "nobody", None)
    assert not _owned(PathState("absent"), "644", None, None)


def test_a_package_spec_with_a_version_needs_that_version():
    installed = {"curl": ["7.88.1-10+deb12u8"]}
    assert _has(installed, "curl") and _has(installed, "curl=7.88.1-10+deb12u8")
    assert not _has(installed, "curl=8.0") and not _has(installed, "wget")
