"""Which Debian mirror the lab uses: the controller's own, read from its apt configuration.

No mirror hostname is ever written into this project: the image is bootstrapped from the
URI that serves the Debian suite `bookworm` on the controller (or from `--mirror URL` /
`LAB_DEBIAN_MIRROR`), and the hosts' own apt sources repeat the controller's Debian entries.

Both apt formats are read: one-line (`/etc/apt/sources.list`, `sources.list.d/*.list`) and
deb822 (`sources.list.d/*.sources`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from lab import SUITE, LabError
from operations.kit.apt_sources import apt_bool, deb822_fields

MIRROR_ENV = "LAB_DEBIAN_MIRROR"
ARCHIVE_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Options of the controller's entries that are worth repeating in the hosts' sources
# (e.g. a snapshot mirror needs Check-Valid-Until: no). Keys are lower-case.
_CARRIED_OPTIONS = {"check-valid-until": "Check-Valid-Until", "trusted": "Trusted"}
_SCHEMES = ("http", "https", "file")


@dataclass
class AptSource:
    """One apt source entry (a one-line `deb` line or a deb822 paragraph)."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)  # lower-case keys
    origin: str = ""


def parse_one_line(text: str, origin: str = "") -> list[AptSource]:
    """Parse the one-line format: `deb [opt=value ...] URI SUITE [COMPONENT ...]`."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind not in ("deb", "deb-src"):
            continue
        rest = rest.strip()
        options: dict[str, str] = {}
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                continue
            for opt in rest[1:end].split():
                key, sep, value = opt.partition("=")
                if sep:
                    options[key.lower()] = value
            rest = rest[end + 1 :]
        fields = rest.split()
        if len(fields) < 2:
            continue
        uri, suite, *components = fields
        sources.append(AptSource((kind,), (uri,), (suite,), tuple(components), options, origin))
    return sources


def _deb822_paragraphs(text: str) -> list[dict[str, str]]:
    """The paragraphs' fields (operations.kit.apt_sources.deb822_fields, the deploy's reader);
    blank lines end a paragraph, comment lines do not."""
    paragraphs, current = [], []
    for raw in [*text.splitlines(), ""]:
        if raw.strip():
            current.append(raw)
        elif current:
            fields = deb822_fields("\n".join(current))
            paragraphs += [fields] if fields else []
            current = []
    return paragraphs


def parse_deb822(text: str, origin: str = "") -> list[AptSource]:
    """Parse the deb822 format (`Types:`, `URIs:`, `Suites:`, `Components:` paragraphs)."""
    sources = []
    for para in _deb822_paragraphs(text):
        if not apt_bool(para.get("enabled")):  # the deploy's rule (apt's StringToBool)
            continue
        types = tuple(para.get("types", "").split())
        uris = tuple(para.get("uris", "").split())
        suites = tuple(para.get("suites", "").split())
        if not (types and uris and suites):
            continue
        components = tuple(para.get("components", "").split())
        options = {
            k: v
            for k, v in para.items()
            if k not in ("types", "uris", "suites", "components", "enabled")
        }
        sources.append(AptSource(types, uris, suites, components, options, origin))
    return sources


def read_apt_sources(etc_apt: str | Path = "/etc/apt") -> list[AptSource]:
    """All enabled entries of the controller's apt configuration, in apt's reading order."""
    etc_apt = Path(etc_apt)
    files: list[tuple[Path, Callable[[str, str], list[AptSource]]]] = [
        (etc_apt / "sources.list", parse_one_line)
    ]
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.name.endswith(".list"):
                files.append((path, parse_one_line))
            elif path.name.endswith(".sources"):
                files.append((path, parse_deb822))
    sources: list[AptSource] = []
    for path, parse in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        sources.extend(parse(text, str(path)))
    return sources


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def resolve_uri(uri: str, read: Callable[[str], str] = _read_text) -> str | None:
    """A URI debootstrap can use: http(s)/file as is, `mirror+file:` through its list file."""
    if uri.startswith("mirror+file:"):
        path = urlparse(uri[len("mirror+") :]).path
        for line in read(path).splitlines():
            candidate = line.split("\t", 1)[0].strip()
            if urlparse(candidate).scheme in ("http", "https"):
                return candidate.rstrip("/")
        return None
    if urlparse(uri).scheme in _SCHEMES:
        return uri.rstrip("/")
    return None


def is_debian_source(src: AptSource) -> bool:
    """A binary `main` entry not signed by some third party's key (e.g. a vendor repo that
    also publishes a `bookworm` suite)."""
    if "deb" not in src.types or "main" not in src.components:
        return False
    signed_by = src.options.get("signed-by")
    return not signed_by or "debian" in signed_by.lower()


def _debian_uris(sources: Iterable[AptSource], suite: str, read: Callable[[str], str]) -> list[str]:
    uris: list[str] = []
    for src in sources:
        if not is_debian_source(src) or suite not in src.suites:
            continue
        for uri in src.uris:
            resolved = resolve_uri(uri, read)
            if resolved and resolved not in uris:
                uris.append(resolved)
    return uris


def pick_mirror(
    sources: Iterable[AptSource], suite: str = SUITE, read: Callable[[str], str] = _read_text
) -> str | None:
    """The URI serving the Debian suite `suite` itself (not -updates/-security), or None.
    A URI whose path says `debian` wins over other candidates."""
    uris = _debian_uris(list(sources), suite, read)
    for uri in uris:
        if "debian" in urlparse(uri).path.lower():
            return uri
    return uris[0] if uris else None


def validate_mirror(url: str) -> str:
    """`url` without its trailing slash; LabError unless it is an http(s):// or file:// URL."""
    url = url.strip()
    parsed = urlparse(url)
    if parsed.scheme not in _SCHEMES or not (parsed.netloc or parsed.path.strip("/")):
        raise LabError(f"mirror {url!r} is not an http://, https:// or file:// URL")
    return url.rstrip("/")


def resolve_mirror(
    override: str | None,
    sources: Iterable[AptSource] | None = None,
    environ: dict[str, str] | None = None,
) -> str:
    """The mirror to bootstrap from: `--mirror`, else $LAB_DEBIAN_MIRROR, else the
    controller's Debian `bookworm` source. Raises LabError naming the override if none."""
    environ = os.environ if environ is None else environ
    chosen = override or environ.get(MIRROR_ENV)
    if chosen:
        return validate_mirror(chosen)
    found = pick_mirror(read_apt_sources() if sources is None else sources)
    if not found:
        raise LabError(
            f"the controller's apt sources have no Debian {SUITE} entry: "
            f"pass --mirror URL or set {MIRROR_ENV}=URL (a Debian archive mirror)"
        )
    return found


def _debian_entries(
    sources: list[AptSource], mirror: str, suite: str, read: Callable[[str], str]
) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """{uri: suites} and {uri: options} of the controller's Debian entries for `suite`,
    -updates and -security, the main archive's URI replaced by `mirror`."""
    main = pick_mirror(sources, suite, read)
    wanted = (suite, f"{suite}-updates", f"{suite}-security")
    groups: dict[str, list[str]] = {mirror: [suite]}
    options: dict[str, dict[str, str]] = {}
    for src in filter(is_debian_source, sources):
        for raw_uri in src.uris:
            uri = resolve_uri(raw_uri, read)
            if not uri:
                continue
            uri = mirror if uri == main else uri
            suites = groups.setdefault(uri, [])
            suites += [s for s in src.suites if s in wanted and s not in suites]
            options.setdefault(uri, src.options)
    return {u: sorted(s, key=wanted.index) for u, s in groups.items() if s}, options


def render_image_sources(
    sources: Iterable[AptSource],
    mirror: str,
    suite: str = SUITE,
    read: Callable[[str], str] = _read_text,
) -> str:
    """The hosts' /etc/apt/sources.list.d/debian.sources (deb822).

    Repeats the controller's Debian entries for `suite`, `suite`-updates and `suite`-security
    (same URIs, where present); the controller's main archive URI is replaced by `mirror`
    (they are the same unless overridden), and `mirror` always serves `suite`."""
    groups, options = _debian_entries(list(sources), mirror, suite, read)
    paragraphs = []
    for uri, suites in groups.items():
        lines = [
            "Types: deb",
            f"URIs: {uri}",
            f"Suites: {' '.join(suites)}",
            "Components: main",
            f"Signed-By: {ARCHIVE_KEYRING}",
        ]
        lines += [
            f"{name}: {options[uri][key]}"
            for key, name in _CARRIED_OPTIONS.items()
            if key in options.get(uri, {})
        ]
        paragraphs.append("\n".join(lines))
    header = "# Written by `python -m lab image` from the controller's own Debian apt sources.\n"
    return header + "\n\n".join(paragraphs) + "\n"
