"""The files layer against the kernel (and ntfs-3g, exfat-fuse, mtools).

Each file system is made in a sparse file and filled with the rich tree of
files_fixtures (holes, hard links, 200 files in a directory, 12 levels,
long/non-ASCII/non-UTF-8 names, empty file, symlinks incl. dangling,
devices, FIFO, socket, xattrs, ACLs, a deleted file), imaged with the real
partclone (ntfsclone), opened as the catalog will open it (opener -> probe
-> header.open() -> VirtualPartition -> image_partition -> open_tree) and
compared with a read-only mount of the restored ground truth — the same
bytes as the virtual partition, which the first assertion checks.
"""

from __future__ import annotations

import contextlib
import os
import stat as st
from pathlib import Path
from typing import Iterator

import pytest

import files_compare as fc
import files_fixtures as ff
from realimages import Factory, Image, need, run
from readers import run_in_threads, vp_sha256

from imagefs.blockio import VirtualPartition
from imagefs.services.cache import BlockCache
from imagefs.files import FileTree, image_partition, open_tree
from imagefs.files.tree import INO_LIMIT
from imagefs.blockio.opener import open_image_header

pytestmark = [pytest.mark.root]

POSIX_FIELDS = ("mode", "owner", "size", "mtime", "nlink", "content", "xattrs", "rdev", "ino")
NTFS_FIELDS = ("mode", "owner", "size", "mtime", "nlink", "content", "xattrs", "rdev", "ino")
EXFAT_FIELDS = ("mode", "size", "nlink", "content")
FAT_FIELDS = ("size", "content")

#: kind -> (fields compared, whether st_ino must equal the reference's)
KINDS = {
    "ext4": (POSIX_FIELDS, True), "ext4-1k": (POSIX_FIELDS, True), "ext4-inline": (POSIX_FIELDS, True),
    "ext3": (POSIX_FIELDS, True), "ext2": (POSIX_FIELDS, True), "xfs": (POSIX_FIELDS, True),
    "btrfs": (POSIX_FIELDS, False), "ntfs": (NTFS_FIELDS, True), "ntfsclone": (NTFS_FIELDS, True),
    "exfat": (EXFAT_FIELDS, False), "fat32": (FAT_FIELDS, False), "fat16": (FAT_FIELDS, False),
    "fat12": (FAT_FIELDS, False),
}


@pytest.fixture(scope="session")
def files(factory: Factory) -> ff.FilesFactory:
    return ff.FilesFactory.of(factory)


@contextlib.contextmanager
def tree_of(path: Path, cache: BlockCache | None = None) -> Iterator[tuple[FileTree, VirtualPartition]]:
    """The FileTree of an image file (or first piece), opened the catalog's way."""
    header, _info = open_image_header(str(path))
    vp = VirtualPartition(header.open(), cache or BlockCache(8 << 20))
    tree = open_tree(image_partition(vp), header.fs_type, name=path.name)
    try:
        yield tree, vp
    finally:
        tree.close()
        vp.close()


def reference(kind: str, img: Image, fields: tuple[str, ...], tmp: Path) -> dict[bytes, dict]:
    """What the reference driver shows for the image's ground truth."""
    if kind.startswith("fat"):
        need("mcopy")
        out = tmp / "mcopy"
        out.mkdir()
        run(["mcopy", "-s", "-n", "-m", "-i", str(img.ground_truth), "::*", str(out)])
        return fc.walk_mount(out, fields)
    with ff.reference_mount(kind, img.ground_truth, tmp / "ref") as mnt:
        return fc.walk_mount(mnt, fields)


def normalise(kind: str, exp: dict[bytes, dict], got: dict[bytes, dict], same_ino: bool) -> None:
    """Make the two walks comparable where the references differ by design."""
    if "ino" in next(iter(exp.values()), {}):
        if not same_ino:
            assert fc.same_inode_groups(exp) == fc.same_inode_groups(got)
            for e in got.values():
                e.pop("ino", None)
        for e in exp.values():
            e.pop("dev", None)
            if not same_ino:
                e.pop("ino", None)
    if kind == "btrfs":
        # A nested subvolume inside a snapshot: the kernel's placeholder
        # directory carries the time of the lookup.
        for path in (b"snap/nested",):
            exp[path].pop("mtime", None)
            got[path].pop("mtime", None)


@pytest.mark.parametrize("kind", list(KINDS))
def test_tree_equals_the_reference_mount(kind: str, files: ff.FilesFactory, tmp_path: Path) -> None:
    fields, same_ino = KINDS[kind]
    img = files.image(kind)
    with tree_of(img.path) as (tree, vp):
        assert vp_sha256(vp) == img.sha256, "the virtual partition is not the ground truth"
        got = fc.walk_tree(tree, fields)
        for name, ino in tree.listdir(tree.root):
            assert 0 < ino < INO_LIMIT
        assert tree.describe()[0][0] == "file system"
    exp = reference(kind, img, fields, tmp_path)
    normalise(kind, exp, got, same_ino)
    assert len(exp) > 200, "the reference tree is suspiciously small"
    assert got == exp, fc.diff(exp, got)


def test_xfs_v4_equals_v5_from_the_same_proto(files: ff.FilesFactory, tmp_path: Path) -> None:
    """xfs v4 (this kernel cannot mount it): against a kernel mount of v5 made from the same proto file."""
    fields = ("mode", "owner", "size", "nlink", "content", "xattrs", "rdev")
    img = files.image("xfs-v4")
    with tree_of(img.path) as (tree, _vp):
        assert tree.fs_name == "xfs (v4)"
        got = fc.walk_tree(tree, fields)
    with ff.reference_mount("xfs", files.source("xfs-proto"), tmp_path / "ref") as mnt:
        exp = fc.walk_mount(mnt, fields)
    assert len(exp) > 200
    assert got == exp, fc.diff(exp, got)


def test_the_rich_tree_has_what_it_should(files: ff.FilesFactory) -> None:
    """The fixture really holds the cases (a reference can only catch what is there)."""
    with tree_of(files.image("ext4").path) as (tree, _vp):
        walk = fc.walk_tree(tree, ("size", "nlink", "content", "xattrs", "ino"))
    types = {e["type"] for e in walk.values()}
    assert types == {st.S_IFREG, st.S_IFDIR, st.S_IFLNK, st.S_IFCHR, st.S_IFBLK, st.S_IFIFO, st.S_IFSOCK}
    assert walk[b"dangling"]["content"] == b"link:nowhere/at/all"
    assert walk[ff.BAD_NAME]["content"]
    assert walk[os.fsencode(ff.LONG_NAME)]["size"] == 16
    assert len([p for p in walk if p.startswith(b"many/")]) == 201
    assert any(p.endswith(b"level12/bottom.txt") for p in walk)
    assert walk[b"hardlink-1.txt"]["nlink"] == 3 == walk[b"docs/linked.txt"]["nlink"]
    assert walk[b"docs/numbers.txt"]["xattrs"][b"user.binary"] == bytes(range(256))
    assert walk[b"empty"]["size"] == 0
    assert b"deleted.bin" not in walk


def test_holes_read_as_zeros_and_reads_are_exact(files: ff.FilesFactory) -> None:
    with tree_of(files.image("ext4").path) as (tree, _vp):
        ino = tree.lookup(tree.root, b"sparse.bin")
        assert ino is not None
        size = tree.stat(ino).size
        assert size == (9 << 20) + 4
        assert tree.read(ino, (1 << 20), 4096) == bytes(4096)          # inside the first hole
        assert tree.read(ino, (5 << 20), 6) == b"middle"
        assert tree.read(ino, size - 2, 100) == b"il"                  # short only at EOF
        assert tree.read(ino, size, 10) == b""
        buf = bytearray(b"\xff" * 8192)
        assert tree.read_into(ino, (5 << 20) - 4096, memoryview(buf)) == 8192
        assert bytes(buf[:4096]) == bytes(4096) and bytes(buf[4096:4102]) == b"middle"
        assert tree.stat(ino).blocks * 512 < size // 4                 # sparse on disk too
        hole = tree.lookup(tree.root, b"all-hole.bin")
        assert tree.read(hole, 0, 3 << 20) == bytes(2 << 20)


def test_lookup_readlink_and_errors(files: ff.FilesFactory) -> None:
    from imagefs.files import NoSuchAttribute, NotADirectory, NotASymlink

    with tree_of(files.image("ext4").path) as (tree, _vp):
        docs = tree.lookup(tree.root, b"docs")
        assert tree.lookup(tree.root, b"no such name") is None
        assert tree.lookup(tree.root, b".") is None
        f = tree.lookup(docs, b"numbers.txt")
        assert tree.readlink(tree.lookup(tree.root, b"link-to-file")) == b"docs/numbers.txt"
        with pytest.raises(NotASymlink):
            tree.readlink(f)
        with pytest.raises(NotADirectory):
            tree.listdir(f)
        with pytest.raises(NoSuchAttribute):
            tree.getxattr(f, b"user.nothing")
        assert tree.getxattr(f, b"user.comment") == b"an extended attribute"


def test_parallel_reads_give_the_same_bytes(files: ff.FilesFactory) -> None:
    """Many threads reading many files (and the same file) at once, as FUSE does."""
    for kind in ("ext4", "ntfs", "btrfs"):
        with tree_of(files.image(kind).path) as (tree, _vp):
            want = fc.walk_tree(tree, ("content",))
            tree._maps.clear()
            tree._stats.clear()
            tree._dirs.clear()

            def work(i: int) -> None:
                got = fc.walk_tree(tree, ("content",))
                assert got == want

            run_in_threads(work, count=6)


@pytest.mark.parametrize("kind", ["ext4", "ntfsclone"])
@pytest.mark.parametrize("variant", ["zstd", "gzip", "split", "zstd-split"])
def test_compressed_and_split_images_show_the_same_tree(kind: str, variant: str, files: ff.FilesFactory,
                                                        factory: Factory) -> None:
    img = files.image(kind)
    if variant == "zstd":
        v = factory.compressed(img, ["zstd", "-q", "-c", "-3"], "zst")
    elif variant == "gzip":
        v = factory.compressed(img, ["gzip", "-c", "-1"], "gz")
    elif variant == "split":
        v = factory.split(img, 5_000_000)
    else:
        v = factory.compressed(img, ["zstd", "-q", "-c", "-3"], "zst", split_bytes=3_000_000)
    fields = ("mode", "owner", "size", "mtime", "nlink", "content", "xattrs", "ino")
    with tree_of(img.path) as (tree, _vp):
        want = fc.walk_tree(tree, fields)
    with tree_of(v.path) as (tree, _vp):
        got = fc.walk_tree(tree, fields)
    assert got == want, fc.diff(want, got)


def test_memory_stays_small_with_many_trees_open(files: ff.FilesFactory) -> None:
    """20 trees walked and left open: the files layer's own memory stays bounded."""
    import tracemalloc

    kinds = ["ext4", "ntfs", "btrfs", "xfs", "fat32"] * 4
    trees = []
    stack = contextlib.ExitStack()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for kind in kinds:
            tree, _vp = stack.enter_context(tree_of(files.image(kind).path, BlockCache(1 << 20)))
            fc.walk_tree(tree, ("size", "xattrs"))
            trees.append(tree)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        stack.close()
    # ~2.5 MB per walked tree measured (bench/RESULTS-files.md); the bound
    # leaves room but catches an unbounded cache (the libraries' defaults
    # alone would be 20-130 MB per tree).
    assert grown < 20 * 6 * (1 << 20), f"{grown / 2**20:.0f} MB for 20 open trees"
