"""Acceptance: a Clonezilla-style tree of real images, mounted for real.

One mount of one tree (built once per module from the fixture factory) is
checked from every side: the listing, the bytes of every virtual partition
against the restore tool's ground truth, parallel random reads, loop mounts
of the file systems inside, fsck, broken images, every kind of write, and
that the source tree is untouched at the end.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from readers import run_in_threads
from realimages import mounted, need, need_root, tree_digest
from mount_helpers import (Expected, build_clonezilla_tree, imagefs_mounted, need_fuse,
                                sha256_of, source_digest)

pytestmark = [pytest.mark.mount, pytest.mark.root]


@pytest.fixture(scope="module")
def tree(factory, tmp_path_factory) -> tuple[Path, Expected, dict[str, str]]:
    need_root()
    need_fuse()
    root = tmp_path_factory.mktemp("cz-tree") / "backups"
    exp = build_clonezilla_tree(factory, root)
    return root, exp, source_digest(root)


@pytest.fixture(scope="module")
def mnt(tree, tmp_path_factory):
    root, _, _ = tree
    mountpoint = tmp_path_factory.mktemp("cz-mnt") / "mnt"
    with imagefs_mounted(root, mountpoint, "-o", "cache_size=64M") as m:
        yield m


def _p(mnt: Path, vpath: str) -> Path:
    return mnt / vpath.lstrip("/")


def test_listing(tree, mnt):
    _, exp, _ = tree
    for vpath in list(exp.good) + list(exp.truncated):
        assert _p(mnt, vpath).is_file(), vpath
        assert _p(mnt, vpath + ".info").is_file(), vpath + ".info"
    for vpath in exp.broken:
        assert not _p(mnt, vpath).exists(), f"{vpath}: a broken image must have no partition"
        assert _p(mnt, vpath + ".info").is_file()
    for vpath in exp.plain:
        assert _p(mnt, vpath).is_file(), vpath
        assert not _p(mnt, vpath + ".info").exists(), f"{vpath} is no image"
    for vpath in exp.hidden:
        assert not os.path.lexists(_p(mnt, vpath)), f"{vpath} must be hidden"
    cz = sorted(os.listdir(mnt / "2026-11-27-10-img_laptop"))
    images = ["sda1.ext4-ptcl-img", "sda2.ntfs-ptcl-img", "sda3.ext2-ptcl-img", "sda5.ntfs-img"]
    assert cz == sorted(["Info-saved-by-cmd.txt", "clonezilla-img", "disk", "parts",
                         "sda-pt.sf", "sda.img", "sda.img.info"]
                        + [n + s for n in images for s in ("", ".info", ".files")])
    # ls -lR terminates (the directory symlink loop is not followed forever).
    out = subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, timeout=120)
    # The truncated image's files view answers EIO for what lies in its
    # missing part: the only errors ls may meet.
    errors = out.stderr.decode().splitlines()
    assert all("/broken/half.img.files/" in e and "Input/output error" in e for e in errors), errors
    assert out.returncode in (0, 1), out.stderr


def test_sizes_come_from_headers(tree, mnt):
    _, exp, _ = tree
    for vpath, image in exp.good.items():
        assert _p(mnt, vpath).stat().st_size == image.ground_truth.stat().st_size, vpath


def test_plain_files_unchanged(tree, mnt):
    _, exp, _ = tree
    for vpath, real in exp.plain.items():
        assert _p(mnt, vpath).read_bytes() == real.read_bytes(), vpath


def test_virtual_partitions_equal_ground_truth(tree, mnt):
    _, exp, _ = tree
    wrong = {v: img.name for v, img in exp.good.items() if sha256_of(_p(mnt, v)) != img.sha256}
    assert not wrong, f"virtual partitions differ from the restore tool's output: {wrong}"


def _random_reads(path: Path, truth: Path, seed: int, count: int = 60) -> None:
    rng = random.Random(seed)
    size = truth.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    tfd = os.open(truth, os.O_RDONLY)
    try:
        for _ in range(count):
            length = rng.choice([1, 512, 4096, 65536, 300_001, 1 << 20])
            offset = rng.randrange(0, size)
            assert os.pread(fd, length, offset) == os.pread(tfd, length, offset), \
                f"{path} at {offset}+{length}"
    finally:
        os.close(fd)
        os.close(tfd)


def test_parallel_random_reads(tree, mnt):
    _, exp, _ = tree
    targets = [(v, img) for v, img in exp.good.items()]

    def worker(i: int) -> None:
        vpath, image = targets[i % len(targets)]
        _random_reads(_p(mnt, vpath), image.ground_truth, seed=i)
        vpath, image = targets[(i + 3) % len(targets)]
        _random_reads(_p(mnt, vpath), image.ground_truth, seed=100 + i)

    run_in_threads(worker)


@pytest.mark.parametrize("kind", ["ext4", "ext2", "ext3", "xfs", "btrfs"])
def test_loop_mount_tree_equals_source(tree, mnt, tmp_path, kind):
    _, exp, _ = tree
    vpath = next(v for v, k in exp.fs_kind.items() if k == kind)
    image = exp.good[vpath]
    target = tmp_path / "inner"
    target.mkdir()
    options = "loop,ro,norecovery" if kind == "xfs" else "loop,ro"
    with mounted(str(_p(mnt, vpath)), target, options=options):
        assert tree_digest(target) == image.source.tree


FSCK = {
    "ext4": ["e2fsck", "-fn"], "ext2": ["e2fsck", "-fn"], "ext3": ["e2fsck", "-fn"],
    "xfs": ["xfs_repair", "-n", "-f"],
    "btrfs": ["btrfs", "check", "--readonly"], "ntfs": ["ntfsfix", "-n"],
    "vfat": ["fsck.fat", "-n"],
}


def test_fsck_accepts_virtual_partitions(tree, mnt):
    _, exp, _ = tree
    need(*{cmd[0] for cmd in FSCK.values()})
    failures = {}
    for vpath, kind in exp.fs_kind.items():
        proc = subprocess.run(FSCK[kind] + [str(_p(mnt, vpath))], capture_output=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        expected = 0
        if kind == "ntfs" and exp.good[vpath].tool == "partclone":
            # partclone.ntfs does not store the backup boot sector (docs/design.md 4),
            # so ntfsfix judges its restore output the same way: compare with it.
            expected = subprocess.run(FSCK[kind] + [str(exp.good[vpath].ground_truth)],
                                      capture_output=True, stdin=subprocess.DEVNULL).returncode
        if proc.returncode != expected:
            failures[vpath] = (proc.returncode, proc.stdout.decode(errors="replace")[-800:])
    assert not failures, failures


def test_broken_images_state_their_error(tree, mnt):
    _, exp, _ = tree
    for vpath, words in exp.broken.items():
        info = _p(mnt, vpath + ".info").read_text()
        assert "BROKEN" in info and words in info, info
    for vpath, image in exp.truncated.items():
        path = _p(mnt, vpath)
        info = path.with_name(path.name + ".info").read_text()
        assert "truncated" in info, info
        with open(path, "rb") as f:
            head = f.read(4096)
            assert head == image.ground_truth.open("rb").read(4096)
            # Once the stored half is used up a read must fail, never return zeros.
            with pytest.raises(OSError) as exc:
                f.seek(0)
                while f.read(1 << 20):
                    pass
            assert exc.value.errno == errno.EIO
        info = path.with_name(path.name + ".info").read_text()
        assert "read error" in info, info
    # The rest of the tree stays readable.
    vpath, image = next(iter(exp.good.items()))
    assert sha256_of(_p(mnt, vpath)) == image.sha256


def test_info_describes_the_image(tree, mnt):
    _, exp, _ = tree
    info = _p(mnt, "/2026-11-27-10-img_laptop/sda1.ext4-ptcl-img.info").read_text()
    for words in ("partclone", "EXTFS", "device size", "block size", "used blocks",
                  "checksum", "pieces", "e2fsck -fn", "mount -o loop,ro"):
        assert words in info, f"{words!r} missing from:\n{info}"


def test_du_shows_stored_data(tree, mnt):
    _, exp, _ = tree
    st = _p(mnt, "/2026-11-27-10-img_laptop/sda1.ext4-ptcl-img").stat()
    stored = st.st_blocks * 512
    assert 0 < stored < st.st_size // 2, "st_blocks must count stored blocks, not the device"
    assert st.st_blksize >= 64 * 1024
    sv = os.statvfs(mnt)
    assert sv.f_bavail == 0 and sv.f_bfree == 0


def _expect_refused(fn, *args) -> None:
    with pytest.raises(OSError) as exc:
        fn(*args)
    assert exc.value.errno in (errno.EROFS, errno.EPERM, errno.EACCES), (fn, exc.value)


def test_every_write_fails(tree, mnt):
    _, exp, _ = tree
    image = _p(mnt, next(iter(exp.good)))
    plain = _p(mnt, "/notes.txt")
    d = _p(mnt, "/loose")
    _expect_refused(os.open, str(mnt / "new-file"), os.O_CREAT | os.O_WRONLY, 0o644)
    _expect_refused(os.open, str(image), os.O_WRONLY)
    _expect_refused(os.open, str(plain), os.O_RDWR)
    _expect_refused(os.open, str(plain), os.O_RDONLY | os.O_TRUNC)
    _expect_refused(os.truncate, str(image), 0)
    _expect_refused(os.truncate, str(plain), 0)
    _expect_refused(os.chmod, str(image), 0o777)
    _expect_refused(os.chown, str(plain), 1, 1)
    _expect_refused(os.rename, str(plain), str(mnt / "renamed.txt"))
    _expect_refused(os.unlink, str(image))
    _expect_refused(os.unlink, str(plain))
    _expect_refused(os.mkdir, str(mnt / "newdir"))
    _expect_refused(os.rmdir, str(d / "windows"))
    _expect_refused(os.symlink, "notes.txt", str(mnt / "link"))
    _expect_refused(os.link, str(plain), str(mnt / "hard"))
    _expect_refused(os.setxattr, str(plain), "user.test", b"1")
    _expect_refused(os.utime, str(plain), (1, 1))
    assert plain.read_text() == "backups of the laptop\n"


def test_umount_ends_the_process(tree, tmp_path):
    from mount_helpers import pids_serving, unmount, wait_until

    root, _, _ = tree
    m = tmp_path / "second"
    with imagefs_mounted(root, m):
        pids = pids_serving(m)
        assert pids, "no imagefs process serves the mount"
        subprocess.run(["umount", str(m)], check=True)
        wait_until(lambda: not pids_serving(m), what="the imagefs process to end")
    unmount(m)


def test_source_tree_unchanged(tree, mnt):
    """Last in this module: nothing above wrote into the source tree."""
    root, _, before = tree
    assert source_digest(root) == before
    assert not shutil.which("imagefs-nonexistent")
