"""A backup changed while mounted: never a wrong byte, never a mix of old and new.

The images are real (the Factory's partclone images); the change is what a
user does: ``cp other.img x.img`` over the mounted, being-read image
(overwrite in place: same inode, new content) and ``cp other.img x.new &&
mv x.new x.img`` (replace by rename: the mount's descriptor still reaches
the old inode).  Every read either returns the old image's bytes (read
before the change, or from the kernel's page cache of them) or fails with
EIO; after the change the image's reads fail, the log names the file once
and ``.info`` says "changed since mounted".
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from imagefs.blockio import VirtualPartition
from imagefs.errors import SourceChangedError
from imagefs.formats import probe
from imagefs.io import FdPool, FileSource

from mount_helpers import imagefs_mounted

MiB = 1 << 20


@pytest.fixture(scope="module")
def images(factory):
    """(the mounted image, another image to put in its place)."""
    return factory.partclone("ext4"), factory.partclone("ext2")


# ----------------------------------------------------------------- in process

@pytest.mark.parametrize("how", ["in-place", "rename"])
def test_reads_after_a_change_fail(tmp_path, images, how):
    img, other = images
    path = tmp_path / "x.img"
    shutil.copyfile(img.path, path)
    truth = img.ground_truth.read_bytes()
    pool = FdPool(4)
    image = probe(FileSource(str(path), pool)).open()
    vp = VirtualPartition(image)
    assert vp.read(0, MiB) == truth[:MiB]
    stored = [b for b in range(image.total_blocks) if image.bitmap.is_set(b)]
    bs = image.block_size
    if how == "in-place":
        shutil.copyfile(other.path, path)                    # same inode, new bytes
    else:
        shutil.copyfile(other.path, tmp_path / "x.new")
        os.rename(tmp_path / "x.new", path)
    # Every read that touches the file fails (holes read as zeros touch nothing).
    for block in (stored[0], stored[len(stored) // 2], stored[-1]):
        with pytest.raises(SourceChangedError, match="changed since mounted"):
            vp.read(block * bs, bs)


def test_an_evicted_descriptor_reopened_after_a_rename_is_refused(tmp_path, images):
    """The pool may close a descriptor and reopen the path: that must not read the new file."""
    img, other = images
    path = tmp_path / "x.img"
    shutil.copyfile(img.path, path)
    pool = FdPool(1)
    source = FileSource(str(path), pool)
    vp = VirtualPartition(probe(source).open())
    vp.read(0, 4096)
    shutil.copyfile(other.path, tmp_path / "x.new")
    os.rename(tmp_path / "x.new", path)
    FileSource(str(img.path), pool).read_at(0, 1)        # evicts x.img's descriptor
    with pytest.raises(SourceChangedError, match="replaced"):
        vp.read(MiB, 4096)


# ----------------------------------------------------------------- mounted

def _read_all(path: Path, truth: bytes, halfway: threading.Event, go_on: threading.Event,
              results: dict[str, int]) -> None:
    """Read 1 MiB at a time; every read must be the old bytes or EIO."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in range(0, len(truth), MiB):
            if off >= 4 * MiB and not halfway.is_set():     # the data lie in the first 15 MiB
                halfway.set()
                assert go_on.wait(60), "the change did not happen"
            try:
                data = os.pread(fd, MiB, off)
            except OSError as exc:
                assert exc.errno == errno.EIO
                results["eio"] += 1
                continue
            if data != truth[off:off + len(data)]:
                results["wrong"] += 1
            else:
                results["old"] += 1
    finally:
        os.close(fd)
        halfway.set()


@pytest.mark.mount
@pytest.mark.parametrize("how", ["in-place", "rename"])
def test_changed_while_mounted_and_read(tmp_path, images, how):
    img, other = images
    src = tmp_path / "src"
    src.mkdir()
    path = src / "x.img"
    shutil.copyfile(img.path, path)
    truth = img.ground_truth.read_bytes()
    log = tmp_path / "mount.log"
    with imagefs_mounted(src, tmp_path / "mnt", "-o", f"log={log},log_level=info") as mnt:
        vp = mnt / "x.img"
        results = {"old": 0, "eio": 0, "wrong": 0}
        halfway, go_on = threading.Event(), threading.Event()
        reader = threading.Thread(target=_read_all, args=(vp, truth, halfway, go_on, results))
        reader.start()
        try:
            assert halfway.wait(60)
            if how == "in-place":
                subprocess.run(["cp", str(other.path), str(path)], check=True)
            else:
                subprocess.run(["cp", str(other.path), str(src / "x.new")], check=True)
                subprocess.run(["mv", str(src / "x.new"), str(path)], check=True)
        finally:
            go_on.set()
            reader.join(120)
        assert results["wrong"] == 0, results
        assert results["old"] > 0 and results["eio"] > 0, results
        # A fresh open and read after the change: EIO, never the new image's bytes.
        try:
            fd = os.open(vp, os.O_RDONLY)
        except OSError as exc:
            assert exc.errno == errno.EIO
        else:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                with pytest.raises(OSError) as caught:
                    os.pread(fd, MiB, len(truth) - MiB)
                assert caught.value.errno == errno.EIO
            finally:
                os.close(fd)
        info = (mnt / "x.img.info").read_text()
        assert "changed since mounted" in info
    text = log.read_text()
    assert text.count("changed since mounted") == 1, text
    assert "Traceback" not in text and "unexpected error" not in text
