"""The bundled sample backups and the README's first command.

samples/backups is committed binary data; these tests keep it honest: every
image in it is found, reads as a real file system, and passes its checks,
and scripts/demo.sh mounts it and tells the user what to try next.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from realimages import mounted, need
from mount_helpers import imagefs_mounted, need_fuse, unmount

pytestmark = [pytest.mark.mount, pytest.mark.root]

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples" / "backups"
IMAGES = {
    "2026-11-01-img/sda1.ext4-ptcl-img": "ext4",
    "2026-11-01-img/sda2.vfat-ptcl-img": "vfat",
    "2026-11-01-img/sda3.ntfs-img": "ntfs",
    "loose/old-laptop.ext2-ptcl-img": "ext2",
}


def test_every_sample_image_is_served_and_checks_clean(tmp_path):
    need("e2fsck", "fsck.fat", "ntfsfix", "mdir")
    with imagefs_mounted(SAMPLES, tmp_path / "mnt") as mnt:
        listed = {str(p.relative_to(mnt)) for p in mnt.rglob("*")}
        for meta in ("2026-11-01-img/disk", "2026-11-01-img/sda-pt.sf", "loose/notes.txt"):
            assert meta in listed
        assert not [n for n in listed if ".zst.a" in n], "pieces of a set must be hidden"
        for vpath, fs in IMAGES.items():
            info = (mnt / (vpath + ".info")).read_text()
            assert "status:                     ok" in info, info
            part = mnt / vpath
            if fs in ("ext4", "ext2"):
                subprocess.run(["e2fsck", "-fn", str(part)], check=True, capture_output=True)
                with mounted(str(part), tmp_path / fs, options="loop,ro") as m:
                    assert "without a restore" in (m / "README.txt").read_text()
                    assert (m / "documents" / "2026" / "ledger.txt").stat().st_size > 100_000
            elif fs == "vfat":
                subprocess.run(["fsck.fat", "-n", str(part)], check=True, capture_output=True)
                out = subprocess.run(["mdir", "-i", str(part), "::"], check=True,
                                     capture_output=True, text=True).stdout
                assert "README" in out
            else:
                out = subprocess.run(["ntfsfix", "-n", str(part)], capture_output=True, text=True)
                assert "processed successfully" in out.stdout, out.stdout + out.stderr


def test_demo_script_mounts_the_samples_and_says_what_next(tmp_path):
    need_fuse()
    mnt = tmp_path / "demo"
    proc = subprocess.run([str(REPO / "scripts" / "demo.sh"), str(SAMPLES), str(mnt)],
                          capture_output=True, text=True, timeout=600)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "is mounted read-only" in proc.stdout
        assert "Try next:" in proc.stdout and "mount -o loop,ro" in proc.stdout
        # The first command shows a file from inside a backup (its .files view).
        assert "Hello from imagefs sample ext4." in proc.stdout
        assert (mnt / "2026-11-01-img" / "sda1.ext4-ptcl-img.info").is_file()
    finally:
        unmount(mnt)
