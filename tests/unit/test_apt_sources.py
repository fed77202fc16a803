"""Adding apt components to the host's own sources without rewriting anything else."""

import pytest

from operations.kit.apt_sources import AptSourceFiles, with_components

WANT = ("contrib", "non-free", "non-free-firmware")
DEB822 = """\
# Modified by cloud-init
Types: deb deb-src
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: https://download.example/linux/debian
Suites: bookworm
Components: stable
Enabled: no
"""


def test_deb822_components_added_to_our_release_only():
    new = with_components(DEB822, "/etc/apt/sources.list.d/debian.sources", "bookworm", WANT)
    assert new.count("Components: main contrib non-free non-free-firmware") == 2
    assert "Components: stable\nEnabled: no" in new  # disabled stanza untouched
    assert new.replace("main contrib non-free non-free-firmware", "X") == DEB822.replace(
        "Components: main\n", "Components: X\n"
    ).replace("Components: main contrib\n", "Components: X\n")


def test_deb822_is_idempotent():
    once = with_components(DEB822, "x.sources", "bookworm", WANT)
    assert with_components(once, "x.sources", "bookworm", WANT) == once


def test_one_line_entries_keep_options_and_comments():
    text = (
        "# deb http://mirror.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
        "deb http://mirror.example/debian-security bookworm-security main non-free\n"
        "deb http://other.example/repo jammy main\n"
    )
    new = with_components(text, "/etc/apt/sources.list", "bookworm", WANT)
    assert new.splitlines() == [
        "# deb http://mirror.example/debian bookworm main",
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main "
        "contrib non-free non-free-firmware",
        "deb http://mirror.example/debian-security bookworm-security main non-free "
        "contrib non-free-firmware",
        "deb http://other.example/repo jammy main",
    ]
    assert with_components(new, "/etc/apt/sources.list", "bookworm", WANT) == new


def test_fact_splits_files():
    fact = AptSourceFiles()
    out = fact.process(["@@gpufleet-file@@ /a.list", "deb x y z", "@@gpufleet-file@@ /b.sources"])
    assert out == {"/a.list": "deb x y z\n", "/b.sources": "\n"}


# --- one reading of deb822 for the deploy and the lab ------------------------------------------

ENTRY = """# the host's main archive
Types: deb
URIs: http://mirror.internal/debian
Suites: bookworm bookworm-updates
Components: main
Enabled: {enabled}
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


@pytest.mark.parametrize(
    ("enabled", "on"),
    [("yes", True), ("Yes", True), ("true", True), ("1", True), ("on", True), ("with", True),
     ("no", False), ("No", False), ("FALSE", False), ("0", False), ("off", False),
     ("without", False), ("disable", False), ("maybe", True)],
)  # fmt: skip
def test_the_deploy_and_the_lab_read_enabled_as_apt_does(enabled, on):
    """apt's StringToBool, any case; an unreadable value keeps the default (enabled)."""
    from lab.mirror import parse_deb822

    text = ENTRY.format(enabled=enabled)
    changed = with_components(text, "/etc/apt/sources.list.d/debian.sources", "bookworm",
                              ("contrib", "non-free"))  # fmt: skip
    assert ("Components: main contrib non-free" in changed) is on
    assert bool(parse_deb822(text)) is on


def test_the_files_reader_succeeds_when_a_glob_matches_nothing(tmp_path):
    """Debian 12 as installed has no sources.list.d/*.sources: the apt sources fact's last
    glob matches nothing, which must be an answer (no such file), not a failed command."""
    import subprocess

    from operations.kit import files

    (tmp_path / "sources.list").write_text("deb http://m/debian bookworm main\n")
    paths = f"{tmp_path}/sources.list {tmp_path}/d/*.list {tmp_path}/d/*.sources"
    done = subprocess.run(["dash", "-c", files.cat_command(paths)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = files.split(done.stdout.splitlines())
    assert found == {f"{tmp_path}/sources.list": ["deb http://m/debian bookworm main"]}
