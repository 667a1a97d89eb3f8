"""What .info tells: commands that fit the reader, and the index of every stream.

The texts come from real images through the catalog, the way a mount
renders them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from imagefs.catalog import Catalog
from imagefs.config import Settings
from realimages_partimage import partimage_image

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "backups"


def _info(tree: Path, vpath: str, monkeypatch: pytest.MonkeyPatch, *, euid: int = 0,
          allow_other: bool = False) -> str:
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    catalog = Catalog(Settings(allow_other=allow_other), str(tree), mountpoint="/mnt/x")
    try:
        node = catalog.lookup(vpath + ".info")
        return node.entry.info_text().decode()
    finally:
        catalog.close()


@pytest.mark.parametrize("vpath, line", [
    ("/2026-11-01-img/sda3.ntfs-img", "mount it:                   sudo ntfs-3g -o ro "),
    ("/2026-11-01-img/sda1.ext4-ptcl-img", "mount it:                   sudo mount -o loop,ro "),
    ("/2026-11-01-img/sda2.vfat-ptcl-img", "mount it:                   sudo mount -t vfat -o loop,ro"),
])
def test_root_readable_mounts_give_the_loop_mount_with_sudo(vpath, line, monkeypatch):
    text = _info(SAMPLES, vpath, monkeypatch)
    assert line in text, text
    assert "root cannot read" not in text
    assert line in _info(SAMPLES, vpath, monkeypatch, euid=1000, allow_other=True)


@pytest.mark.parametrize("vpath, words", [
    ("/2026-11-01-img/sda1.ext4-ptcl-img", ["debugfs -c -R \"rdump / $HOME/restore\"",
                                           "e2fsck -fn"]),
    ("/2026-11-01-img/sda2.vfat-ptcl-img", ["mcopy -s -i", "fsck.fat -n"]),
    ("/2026-11-01-img/sda3.ntfs-img", ["ntfsls -R", "ntfscat", "ntfsfix -n"]),
])
def test_a_users_own_mount_gives_what_works_without_root(vpath, words, monkeypatch):
    text = _info(SAMPLES, vpath, monkeypatch, euid=1000)
    assert "root cannot read this mount: it was made without -o allow_other." in text
    assert "user_allow_other in /etc/fuse.conf" in text
    for w in words:
        assert w in text, text
    check = next(ln for ln in text.splitlines() if ln.startswith("check it:"))
    program = check.split()[2]
    assert os.path.isabs(program) or shutil.which(program, path="/usr/bin:/bin"), check


def test_a_volume_set_reports_its_volumes_index(factory, tmp_path, monkeypatch):
    image = partimage_image(factory, "vfat", split=True, compress=1)
    tree = tmp_path / "tree"
    tree.mkdir()
    for volume in sorted(image.path.parent.glob("sda3.[0-9][0-9][0-9]")):
        os.link(volume, tree / volume.name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    catalog = Catalog(Settings(), str(tree), mountpoint="/mnt/x")
    try:
        entry = catalog.lookup("/sda3.info").entry
        assert entry.index_state() is not None          # the volumes' codec, not None
        part = entry.partition()
        pos = 0
        while pos < part.size:
            pos += len(part.read(pos, 1 << 20))
        state = entry.index_state()
        assert "not built yet" not in state, state
        assert "volumes indexed" in state or "none needed" in state or "index" in state
        assert "index not built yet (built on first read)" not in entry.info_text().decode()
    finally:
        catalog.close()
