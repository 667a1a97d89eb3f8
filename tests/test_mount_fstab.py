"""The mount-helper forms: ``mount -t fuse.imagefs`` and an /etc/fstab line.

mount(8) runs ``mount.fuse3``, which runs ``/bin/sh -c 'imagefs SRC MNT -o
OPTS'`` with PATH removed from the environment, so ``imagefs`` must be on
the shell's default PATH.  When it is not (a virtualenv install), the tests
link it into /usr/local/bin for their duration, as the docs tell users to.
The fstab line is added for one test and removed in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from realimages import need_root
from mount_helpers import (build_clonezilla_tree, imagefs_mounted, need_fuse,
                                pids_serving, sha256_of, source_digest, unmount, wait_until)

pytestmark = [pytest.mark.mount, pytest.mark.root]

DEFAULT_SH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@contextlib.contextmanager
def imagefs_on_default_path() -> Iterator[None]:
    if shutil.which("imagefs", path=DEFAULT_SH_PATH):
        yield
        return
    script = Path(sys.executable).parent / "imagefs"
    assert script.exists(), f"{script} missing: install imagefs into this environment"
    link = Path("/usr/local/bin/imagefs")
    # A dangling link (left by a set-up of a checkout since deleted) is
    # replaced for the test's duration and put back after.
    stale = os.readlink(link) if link.is_symlink() else None
    if stale is not None:
        link.unlink()
    link.symlink_to(script)
    try:
        yield
    finally:
        link.unlink()
        if stale is not None:
            link.symlink_to(stale)


def listing(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            # .info texts name the mount point, so only their presence is compared.
            out[rel] = -1 if name.endswith(".info") else os.stat(p).st_size
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = 0
    return out


@pytest.fixture(scope="module")
def tree(factory, tmp_path_factory):
    need_root()
    need_fuse()
    root = tmp_path_factory.mktemp("fstab-tree") / "backups"
    exp = build_clonezilla_tree(factory, root)
    direct = tmp_path_factory.mktemp("fstab-direct") / "mnt"
    with imagefs_mounted(root, direct) as m:
        reference = listing(m)
    return root, exp, reference, source_digest(root)


def _check_same_tree(mnt: Path, tree) -> None:
    _, exp, reference, _ = tree
    assert listing(mnt) == reference
    vpath, image = next(iter(exp.good.items()))
    assert sha256_of(mnt / vpath.lstrip("/")) == image.sha256


def test_mount_t_fuse_imagefs(tree, tmp_path):
    root = tree[0]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with imagefs_on_default_path():
        try:
            proc = subprocess.run(["mount", "-t", "fuse.imagefs", str(root), str(mnt),
                                   "-o", "ro,allow_other,nofail,_netdev,x-systemd.automount"],
                                  capture_output=True, timeout=120)
            assert proc.returncode == 0, proc.stderr.decode()
            assert os.path.ismount(mnt)
            out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", str(mnt)],
                                 capture_output=True, text=True).stdout
            assert "fuse.imagefs" in out and "ro" in out.split()[1].split(","), out
            _check_same_tree(mnt, tree)
            assert pids_serving(mnt)
            subprocess.run(["umount", str(mnt)], check=True)
            wait_until(lambda: not pids_serving(mnt), what="imagefs to end after umount")
        finally:
            unmount(mnt)
    assert source_digest(root) == tree[3]


def test_fstab_entry(tree, tmp_path):
    root = tree[0]
    mnt = tmp_path / "fstab-mnt"
    mnt.mkdir()
    line = f"{root} {mnt} fuse.imagefs ro,allow_other,nofail,noauto,cache_size=32M 0 0\n"
    with open("/etc/fstab", "rb") as f:
        original = f.read()
    with imagefs_on_default_path():
        try:
            with open("/etc/fstab", "ab") as f:
                if original and not original.endswith(b"\n"):
                    f.write(b"\n")
                f.write(line.encode())
            proc = subprocess.run(["mount", str(mnt)], capture_output=True, timeout=120)
            assert proc.returncode == 0, proc.stderr.decode()
            assert os.path.ismount(mnt)
            _check_same_tree(mnt, tree)
            subprocess.run(["umount", str(mnt)], check=True)
            wait_until(lambda: not pids_serving(mnt), what="imagefs to end after umount")
        finally:
            unmount(mnt)
            with open("/etc/fstab", "wb") as f:
                f.write(original)
    with open("/etc/fstab", "rb") as f:
        assert f.read() == original
