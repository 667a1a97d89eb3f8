"""The ordinary user's whole flow, with no root step in it.

Root only sets the stage (creates a user, removes it afterwards).
Everything else runs as that user (``setpriv``): copying the bundled
samples into their home, mounting them there, reading the files, the verbs,
and the commands the ``.info`` files give, exactly as printed.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mount_helpers import need_fuse, wait_until
from realimages import IN_CI, need, need_root

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = "2026-11-01-img"


class User:
    """An unprivileged user and a way to run commands as them."""

    def __init__(self, name: str) -> None:
        self.name = name
        entry = pwd.getpwnam(name)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)
        self.python: list[str] = []
        self.env = {"HOME": str(self.home), "USER": name, "LOGNAME": name, "LANG": "C.UTF-8",
                    "PATH": "/usr/local/bin:/usr/bin:/bin"}

    def run(self, *cmd: str, shell: str | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        argv = list(cmd) if shell is None else ["/bin/bash", "-c", shell]
        return subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                               "--init-groups", "--reset-env", "--", "env",
                               *(f"{k}={v}" for k, v in {**self.env, **(env or {})}.items()),
                               *argv],
                              capture_output=True, text=True, timeout=timeout, cwd=self.home,
                              stdin=subprocess.DEVNULL)

    def imagefs(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(*self.python, "-m", "imagefs", *args)


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    """Setup as root: a fresh user with a home; removed (with its home) afterwards."""
    need_root()
    need("setpriv", "useradd", "userdel", "fusermount3")
    need_fuse()
    name = f"imgfs{os.getpid() % 100000}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    try:
        u = User(name)
        u.python = _python_for(u)
        yield u
    finally:
        subprocess.run(["fusermount3", "-u", str(Path("/home") / name / "mnt")],
                       stderr=subprocess.DEVNULL, check=False)
        subprocess.run(["userdel", "--remove", name], stderr=subprocess.DEVNULL, check=False)


def _python_for(u: User) -> list[str]:
    """This test's imagefs as the user can run it.

    The venv's interpreter when the user may execute it (setup.sh builds the
    venv on Debian's /usr/bin/python3); a development venv on an interpreter
    under /root is not, then Debian's python3 runs the same code and
    libraries (same CPython ABI).
    """
    if u.run(sys.executable, "-c", "import imagefs").returncode == 0:
        return [sys.executable]
    site = next(p for p in sys.path if p.endswith("site-packages") and sys.prefix in p)
    u.env["PYTHONPATH"] = f"{REPO}:{site}"
    if IN_CI:
        pytest.fail(f"{sys.executable} is not usable by ordinary users; scripts/setup.sh "
                    "builds .venv on /usr/bin/python3")
    return ["/usr/bin/python3"]


def _info_command(info: str, label: str) -> str:
    m = re.search(rf"^{re.escape(label)}:\s+(.*)$", info, re.MULTILINE)
    assert m, f"no '{label}' line in:\n{info}"
    return m.group(1)


def test_an_ordinary_user_mounts_reads_and_follows_the_info(user):
    proc = user.run("cp", "-r", str(REPO / "samples" / "backups"), str(user.home / "backups"))
    assert proc.returncode == 0, proc.stderr
    assert user.run("mkdir", "-p", str(user.home / "mnt")).returncode == 0
    mnt = user.home / "mnt"
    proc = user.imagefs(str(user.home / "backups"), str(mnt))
    assert proc.returncode == 0, proc.stderr
    try:
        listing = user.run("ls", str(mnt / SAMPLE_DIR)).stdout.split()
        assert "sda1.ext4-ptcl-img" in listing and "sda1.ext4-ptcl-img.info" in listing
        base = mnt / SAMPLE_DIR
        # ext4: the .info's commands, run as printed
        info = user.run("cat", str(base / "sda1.ext4-ptcl-img.info")).stdout
        assert "root cannot read this mount" in info
        assert not re.search(r"^mount it:\s+sudo mount", info, re.MULTILINE)
        check = _info_command(info, "check it")
        proc = user.run(shell=check)
        assert proc.returncode == 0, check + "\n" + proc.stdout + proc.stderr
        copy = _info_command(info, "copy files out")
        proc = user.run(shell=copy)
        assert proc.returncode == 0, copy + "\n" + proc.stderr
        readme = user.run("cat", str(user.home / "restore" / "README.txt")).stdout
        assert "came out of a backup image without a restore" in readme
        # FAT: its own copy command
        info = user.run("cat", str(base / "sda2.vfat-ptcl-img.info")).stdout
        copy = _info_command(info, "copy files out").replace("~/restore", "~/restore-fat")
        proc = user.run(shell=copy)
        assert proc.returncode == 0, copy + "\n" + proc.stderr
        assert "came out of a backup image" in user.run(
            shell="cat ~/restore-fat/README.TXT ~/restore-fat/README.txt 2>/dev/null").stdout
        # NTFS: listing and copying one file
        info = user.run("cat", str(base / "sda3.ntfs-img.info")).stdout
        listed = user.run(shell=_info_command(info, "list its files"))
        assert listed.returncode == 0 and "README.txt" in listed.stdout, listed.stderr
        cat = _info_command(info, "copy a file out").replace("/PATH/IN/NTFS", "/README.txt")
        cat = cat.replace("> FILE", "> ~/ntfs-readme.txt")
        assert user.run(shell=cat).returncode == 0
        assert "came out of a backup image" in user.run(
            shell="cat ~/ntfs-readme.txt").stdout
        # The verbs work for the user too (their own index directory).
        image = str(user.home / "backups" / SAMPLE_DIR / "sda1.ext4-ptcl-img.zst.aa")
        assert user.imagefs("info", image).returncode == 0
        assert user.imagefs("verify", image).returncode == 0
        assert user.imagefs("ls", str(user.home / "backups")).returncode == 0
        assert user.imagefs("index", str(user.home / "backups")).returncode == 0
    finally:
        assert user.run("fusermount3", "-u", str(mnt)).returncode == 0
    wait_until(lambda: not os.path.ismount(mnt), what="the user's unmount")


def test_allow_other_without_fuse_conf_says_what_to_do(user):
    mnt = user.home / "mnt2"
    user.run("mkdir", "-p", str(mnt))
    proc = user.imagefs(str(REPO / "samples" / "backups"), str(mnt), "-o", "allow_other")
    with open("/etc/fuse.conf", encoding="utf-8") as f:
        permitted = any(line.strip() == "user_allow_other" for line in f)
    if permitted:
        assert proc.returncode == 0
        user.run("fusermount3", "-u", str(mnt))
    else:
        assert proc.returncode == 3, proc.stderr
        assert "user_allow_other in /etc/fuse.conf" in proc.stderr
    # allow_other=no is the ordinary user's normal mount, never refused.
    proc = user.imagefs(str(REPO / "samples" / "backups"), str(mnt), "-o", "allow_other=no")
    assert proc.returncode == 0, proc.stderr
    assert user.run("fusermount3", "-u", str(mnt)).returncode == 0


def test_scripts_ask_sudo_only_when_not_root(user):
    """README's commands from a user shell: setup.sh and test.sh re-run
    themselves through sudo (a stand-in that records its call: this user
    has no sudo rights), and without sudo they say how to get root."""
    fake = user.home / "fakebin"
    user.run("mkdir", "-p", str(fake))
    user.run(shell=f"printf '#!/bin/sh\\necho \"$*\" >> {fake}/sudo.log\\n' > {fake}/sudo && "
             f"chmod +x {fake}/sudo")
    for script in ("setup.sh", "test.sh"):
        proc = user.run(str(REPO / "scripts" / script),
                        env={"PATH": f"{fake}:/usr/local/bin:/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
    calls = user.run("cat", str(fake / "sudo.log")).stdout.splitlines()
    assert calls == [f"-- {REPO / 'scripts' / 'setup.sh'}",
                     f"-- {REPO / 'scripts' / 'test.sh'}"], calls
    # No sudo on PATH at all: one line saying to use su.
    bare = user.home / "bare"
    user.run("mkdir", "-p", str(bare))
    for tool in ("bash", "id", "dirname"):
        user.run("ln", "-s", f"/usr/bin/{tool}", str(bare / tool))
    proc = user.run(str(REPO / "scripts" / "test.sh"), env={"PATH": str(bare)})
    assert proc.returncode == 1 and "there is no sudo" in proc.stderr, proc.stderr
