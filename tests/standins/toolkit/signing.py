"""The STAND-IN repository's signing key and signatures, with the `gpg` program.

The key is made once, unattended and without a passphrase, in a GnuPG home of its own (mode
0700, under the git-ignored .lab/ for the lab). Ed25519: instant to generate, and apt's gpgv
verifies it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

KEY_UID = "gpufleet lab stand-in toolkit repository <lab@gpufleet.invalid>"


class SigningError(RuntimeError):
    """gpg failed; the message has its last line of output."""


def gpg(home: Path, *args: str, input: str | None = None) -> str:
    """Run gpg on `home` in batch mode; its stdout, or SigningError."""
    cmd = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--quiet", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise SigningError(f"gpg {' '.join(args[:2])} failed: {lines[-1] if lines else '?'}")
    return proc.stdout


def fingerprints(colons: str, record: str = "sec") -> list[str]:
    """Primary-key fingerprints (upper case) in `gpg --with-colons` output: the `fpr` line
    that follows each `record` line (sec for secret keys, pub for public ones)."""
    found = []
    want = False
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] == record:
            want = True
        elif fields[0] == "fpr" and want and len(fields) > 9:
            found.append(fields[9].upper())
            want = False
    return found


def find_key(home: Path) -> str | None:
    """Fingerprint of the stand-in key in `home`, or None when there is none yet."""
    if not (Path(home) / "pubring.kbx").exists():
        return None
    # Public keys only: listing secret ones would start a gpg-agent just to answer.
    out = gpg(home, "--with-colons", "--list-keys", KEY_UID)
    keys = fingerprints(out, "pub")
    return keys[0] if keys else None


def ensure_key(home: Path) -> str:
    """The stand-in key's fingerprint, generating the key first when `home` has none."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)  # gpg refuses to trust a home others can write
    try:
        found = find_key(home)
    except SigningError:
        found = None
    if found:
        return found
    gpg(home, "--pinentry-mode", "loopback", "--passphrase", "",
        "--quick-generate-key", KEY_UID, "ed25519", "sign", "never")  # fmt: skip
    stop_agent(home)
    found = find_key(home)
    if not found:
        raise SigningError(f"no key in {home} after generating one")
    return found


def stop_agent(home: Path) -> None:
    """Stop the gpg-agent gpg started for `home` (tests make many homes; leave no agents)."""
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
        capture_output=True,
        check=False,
    )


def export_public(home: Path, fingerprint: str) -> str:
    """The ASCII-armored public key."""
    return gpg(home, "--armor", "--export", fingerprint)


def sign_release(home: Path, fingerprint: str, release: Path) -> None:
    """InRelease (clear-signed) and Release.gpg (detached, armored) next to `release`."""
    common = ("--local-user", fingerprint, "--digest-algo", "SHA512", "--yes")
    in_release = release.with_name("InRelease")
    detached = release.with_name("Release.gpg")
    try:
        gpg(home, *common, "--clearsign", "--output", str(in_release), str(release))
        gpg(home, *common, "--armor", "--detach-sign", "--output", str(detached), str(release))
    finally:
        stop_agent(home)
