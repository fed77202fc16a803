"""Unit tests of lab.mirror: reading the controller's apt sources, choosing the mirror."""

import pytest

from lab import LabError
from lab.mirror import (
    AptSource,
    parse_deb822,
    parse_one_line,
    pick_mirror,
    read_apt_sources,
    render_image_sources,
    resolve_mirror,
    resolve_uri,
    validate_mirror,
)

M = "http://mirror.example/debian"
SEC = "http://mirror.example/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

DEB822 = f"""\
Types: deb
# a comment inside the paragraph
URIs: {M}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SEC}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_parse_deb822_paragraphs_and_comments():
    sources = parse_deb822(DEB822, "x.sources")
    assert [s.uris for s in sources] == [(M,), (SEC,)]
    assert sources[0].suites == ("bookworm", "bookworm-updates")
    assert sources[0].components == ("main",)
    assert sources[0].options["signed-by"].endswith("debian-archive-keyring.gpg")
    assert sources[0].origin == "x.sources"


def test_parse_deb822_skips_disabled_and_keeps_inline_keys():
    text = f"""\
Types: deb
URIs: http://vendor.example/apt
Suites: bookworm
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----

Enabled: no
Types: deb
URIs: {M}
Suites: bookworm
Components: main
"""
    sources = parse_deb822(text)
    assert len(sources) == 1
    assert "BEGIN PGP" in sources[0].options["signed-by"]


def test_parse_one_line_with_options_and_comments():
    text = f"""\
# comment
deb {M} bookworm main contrib
deb [arch=amd64 signed-by={KEYRING}] {SEC} bookworm-security main
deb-src {M} bookworm main
deb http://broken.example
   # indented comment
deb {M} bookworm-updates main # trailing comment
"""
    sources = parse_one_line(text)
    assert [(s.types, s.uris[0], s.suites) for s in sources] == [
        (("deb",), M, ("bookworm",)),
        (("deb",), SEC, ("bookworm-security",)),
        (("deb-src",), M, ("bookworm",)),
        (("deb",), M, ("bookworm-updates",)),
    ]
    assert sources[0].components == ("main", "contrib")
    assert sources[1].options == {
        "arch": "amd64",
        "signed-by": "/usr/share/keyrings/debian-archive-keyring.gpg",
    }


def test_pick_mirror_prefers_the_main_suite_not_security():
    sources = list(reversed(parse_deb822(DEB822)))
    assert pick_mirror(sources) == M


def test_pick_mirror_ignores_third_party_and_non_main():
    sources = [
        AptSource(("deb",), ("https://vendor.example/debian",), ("bookworm",), ("main",),
                  {"signed-by": "/usr/share/keyrings/vendor.gpg"}),
        AptSource(("deb",), ("https://download.example/linux",), ("bookworm",), ("stable",)),
        AptSource(("deb-src",), ("http://src.example/debian",), ("bookworm",), ("main",)),
        AptSource(("deb",), (M + "/",), ("bookworm",), ("main",)),
    ]  # fmt: skip
    assert pick_mirror(sources) == M


def test_pick_mirror_prefers_a_debian_path_and_returns_none_without_bookworm():
    other = AptSource(("deb",), ("http://local.example/repo",), ("bookworm",), ("main",))
    deb = AptSource(("deb",), (M,), ("bookworm",), ("main",))
    assert pick_mirror([other, deb]) == M
    assert pick_mirror([other]) == "http://local.example/repo"
    jammy = AptSource(("deb",), ("http://archive.example/ubuntu",), ("jammy",), ("main",))
    assert pick_mirror([jammy]) is None


def test_resolve_uri_handles_mirror_file_lists():
    listing = "http://mirror.example/debian\tpriority:1\nhttp://other.example/debian\n"
    assert resolve_uri("mirror+file:///etc/apt/mirrors/debian.list", lambda p: listing) == M
    assert resolve_uri("mirror+file:///nope", lambda p: "") is None
    assert resolve_uri("cdrom:[Debian]/", lambda p: "") is None
    assert resolve_uri(M + "/") == M


def test_resolve_mirror_override_env_and_error():
    sources = parse_deb822(DEB822)
    assert resolve_mirror("http://override.example/debian/", sources, {}) == (
        "http://override.example/debian"
    )
    env = {"LAB_DEBIAN_MIRROR": "http://env.example/debian"}
    assert resolve_mirror(None, sources, env) == "http://env.example/debian"
    assert resolve_mirror(None, sources, {}) == M
    with pytest.raises(LabError, match="--mirror URL or set LAB_DEBIAN_MIRROR"):
        resolve_mirror(None, [], {})


def test_validate_mirror_rejects_non_urls():
    for bad in ("mirror.example/debian", "ftp://mirror.example/debian", "http://"):
        with pytest.raises(LabError):
            validate_mirror(bad)


def test_render_image_sources_repeats_controller_entries():
    text = render_image_sources(parse_deb822(DEB822), M)
    paragraphs = text.split("\n\n")
    assert paragraphs[0].startswith("#")
    assert f"URIs: {M}\nSuites: bookworm bookworm-updates\nComponents: main" in text
    assert f"URIs: {SEC}\nSuites: bookworm-security\nComponents: main" in text
    assert text.count("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg") == 2
    assert "deb " not in text  # deb822 only


def test_render_image_sources_with_override_replaces_main_archive_only():
    override = "http://override.example/debian"
    text = render_image_sources(parse_deb822(DEB822), override)
    assert f"URIs: {override}\nSuites: bookworm bookworm-updates" in text
    assert f"URIs: {M}\n" not in text
    assert f"URIs: {SEC}\nSuites: bookworm-security" in text


def test_render_image_sources_without_controller_entries_and_options():
    assert "Suites: bookworm\n" in render_image_sources([], M)
    snap = AptSource(("deb",), (M,), ("bookworm", "bookworm-security"), ("main",),
                     {"check-valid-until": "no"})  # fmt: skip
    text = render_image_sources([snap], M)
    assert "Suites: bookworm bookworm-security\n" in text
    assert "Check-Valid-Until: no" in text


def test_read_apt_sources_reads_both_formats(tmp_path):
    (tmp_path / "sources.list").write_text(f"deb {M} bookworm main\n")
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "b.sources").write_text(DEB822)
    (parts / "a.list").write_text(f"deb {SEC} bookworm-security main\n")
    (parts / "c.list.disabled").write_text("deb http://no.example/debian bookworm main\n")
    sources = read_apt_sources(tmp_path)
    assert [s.uris[0] for s in sources] == [M, SEC, M, SEC]
    assert read_apt_sources(tmp_path / "missing") == []
