"""Unit tests of lab.keys, lab.engine and lab.image helpers."""

import io
import tarfile

from lab.engine import is_debian_like, parse_os_release
from lab.image import MASKED_UNITS, configure_rootfs, image_is_current, recipe_hash
from lab.keys import injection_tar, known_hosts_line, ssh_command


def test_known_hosts_line():
    pub = "ssh-ed25519 AAAAC3Nza comment@host"
    assert known_hosts_line(2221, pub) == "[127.0.0.1]:2221 ssh-ed25519 AAAAC3Nza"
    assert known_hosts_line(22, pub) == "127.0.0.1 ssh-ed25519 AAAAC3Nza"


def test_injection_tar_modes_and_owner():
    data = injection_tar(b"PRIVATE", b"PUBLIC", b"ssh-ed25519 AAAA lab\n")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["root/.ssh"].isdir() and members["root/.ssh"].mode == 0o700
        assert members["root/.ssh/authorized_keys"].mode == 0o600
        assert members["etc/ssh/ssh_host_ed25519_key"].mode == 0o600
        assert members["etc/ssh/ssh_host_ed25519_key.pub"].mode == 0o644
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
        key = tar.extractfile("etc/ssh/ssh_host_ed25519_key").read()
        assert key == b"PRIVATE"


def test_ssh_command_is_strict():
    cmd = ssh_command("/k", "/kh", 2222, "true")
    joined = " ".join(cmd)
    assert "StrictHostKeyChecking=yes" in joined
    assert "UserKnownHostsFile=/kh" in joined
    assert "-p 2222 root@127.0.0.1 true" in joined
    assert "StrictHostKeyChecking=no" not in joined


def test_os_release():
    osr = parse_os_release('ID=ubuntu\nID_LIKE="debian"\n# c\nNAME="Ubuntu"\n')
    assert osr["ID"] == "ubuntu" and osr["NAME"] == "Ubuntu"
    assert is_debian_like(osr)
    assert is_debian_like({"ID": "linuxmint", "ID_LIKE": "ubuntu debian"})
    assert not is_debian_like({"ID": "fedora"})
    assert not is_debian_like({})


def test_recipe_hash_is_stable_and_labels_compare():
    assert recipe_hash() == recipe_hash()
    assert len(recipe_hash()) == 16
    assert image_is_current({"gpufleet-lab.recipe": recipe_hash()})
    assert not image_is_current({"gpufleet-lab.recipe": "old"})
    assert not image_is_current(None)


def test_configure_rootfs(tmp_path):
    (tmp_path / "etc/ssh").mkdir(parents=True)
    (tmp_path / "etc/ssh/ssh_host_rsa_key").write_text("x")
    (tmp_path / "etc/apt").mkdir()
    (tmp_path / "etc/apt/sources.list").write_text("deb http://mirror.example/debian bookworm main")
    wants = tmp_path / "etc/systemd/system/timers.target.wants"
    wants.mkdir(parents=True)
    (wants / "apt-daily.timer").symlink_to("/lib/systemd/system/apt-daily.timer")
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef\n")
    configure_rootfs(tmp_path, "Types: deb\n")
    assert not (tmp_path / "etc/ssh/ssh_host_rsa_key").exists()
    assert not (tmp_path / "etc/apt/sources.list").exists()
    assert (tmp_path / "etc/apt/sources.list.d/debian.sources").read_text() == "Types: deb\n"
    assert (tmp_path / "etc/machine-id").read_text() == ""
    assert not (wants / "apt-daily.timer").is_symlink()
    for unit in MASKED_UNITS:
        assert str((tmp_path / "etc/systemd/system" / unit).readlink()) == "/dev/null"
    conf = (tmp_path / "etc/ssh/sshd_config.d/gpufleet-lab.conf").read_text()
    assert "PermitRootLogin prohibit-password" in conf
    assert "PasswordAuthentication no" in conf
    assert (tmp_path / "root/.ssh").stat().st_mode & 0o777 == 0o700
