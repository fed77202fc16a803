"""SSH trust, pinned both ways, for the lab hosts.

- `.lab/id_ed25519`: the controller's key, in every host's /root/.ssh/authorized_keys.
- `.lab/hostkeys/lab-<i>`: host lab-<i>'s ed25519 host key, made on the controller and put
  into the container before sshd first runs.
- `.lab/known_hosts`: `[127.0.0.1]:<port> ssh-ed25519 AAAA...` per host, so clients check
  host keys strictly (StrictHostKeyChecking=yes) instead of trusting whatever answers.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

from lab import LabError
from lab.engine import run

CONTROLLER_KEY = "id_ed25519"
HOSTKEY_DIR = "hostkeys"
KNOWN_HOSTS = "known_hosts"
LOOPBACK = "127.0.0.1"


def ensure_keypair(path: Path, comment: str) -> bool:
    """Make an ed25519 key pair without passphrase at `path` (+ .pub) unless it exists.
    Returns True when a new pair was made."""
    pub = Path(f"{path}.pub")
    if path.is_file() and pub.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    for stale in (path, pub):
        if stale.exists() or stale.is_symlink():
            stale.unlink()
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    os.chmod(path, 0o600)
    return True


def public_key(path: Path) -> str:
    """`TYPE BASE64` of the key pair at `path` (its .pub file, comment dropped)."""
    pub = Path(f"{path}.pub")
    try:
        fields = pub.read_text().split()
    except OSError as exc:
        raise LabError(f"cannot read {pub}: {exc.strerror}") from None
    if len(fields) < 2 or not fields[0].startswith("ssh-"):
        raise LabError(f"{pub} is not an OpenSSH public key")
    return f"{fields[0]} {fields[1]}"


def known_hosts_line(port: int, pubkey: str, host: str = LOOPBACK) -> str:
    """The known_hosts line pinning `pubkey` (`TYPE BASE64 [comment]`) for host:port."""
    keytype, blob = pubkey.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {keytype} {blob}"


def write_known_hosts(path: Path, lines: list[str]) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def injection_tar(host_key: bytes, host_key_pub: bytes, authorized_keys: bytes) -> bytes:
    """A tar (for `docker cp - CONTAINER:/`) holding the host key and root's
    authorized_keys, owned by root with sshd's required modes."""
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ssh_dir = tarfile.TarInfo("root/.ssh")
        ssh_dir.type, ssh_dir.mode, ssh_dir.mtime = tarfile.DIRTYPE, 0o700, now
        tar.addfile(ssh_dir)
        for name, mode, data in (
            ("etc/ssh/ssh_host_ed25519_key", 0o600, host_key),
            ("etc/ssh/ssh_host_ed25519_key.pub", 0o644, host_key_pub),
            ("root/.ssh/authorized_keys", 0o600, authorized_keys),
        ):
            info = tarfile.TarInfo(name)
            info.mode, info.size, info.mtime = mode, len(data), now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ssh_command(key: Path, known_hosts: Path, port: int, remote: str) -> list[str]:
    """`ssh` to root@127.0.0.1:port with the lab key, checking the host key strictly,
    ignoring the user's ssh config and agent so the result does not depend on them."""
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "LogLevel=ERROR",
        "-p",
        str(port),
        f"root@{LOOPBACK}",
        remote,
    ]
