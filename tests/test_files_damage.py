"""The files layer on damaged, unsupported and hostile input.

Damage inside a tree is an ImageError with one line naming the file (EIO
at the FUSE boundary), never wrong bytes or zeros for data; a file system
that cannot be opened is FilesUnavailable with one sentence.
"""

from __future__ import annotations

import shutil
import stat as st
import struct
from pathlib import Path

import pytest

import files_compare as fc
import files_fixtures as ff
from realimages import Factory, need, need_root, run
from test_files_view import tree_of

from imagefs.errors import ImageError, TruncatedError
from imagefs.files import FilesUnavailable, files_supported, open_tree

pytestmark = [pytest.mark.root]


@pytest.fixture(scope="session")
def files(factory: Factory) -> ff.FilesFactory:
    return ff.FilesFactory.of(factory)


def one_sentence(text: str) -> None:
    assert "\n" not in text and "Traceback" not in text and len(text) < 400, text


def contents(tree) -> dict[bytes, object]:  # type: ignore[no-untyped-def]
    """Path -> sha256 of every regular file, or the ImageError reading it raised."""
    import hashlib
    out: dict[bytes, object] = {}

    def visit(ino: int, rel: bytes) -> None:
        try:
            entries = tree.listdir(ino)
        except ImageError as exc:
            out[rel + b"/"] = exc
            return
        for name, child in entries:
            path = rel + b"/" + name
            try:
                s = tree.stat(child)
            except ImageError as exc:
                out[path] = exc
                continue
            if st.S_ISDIR(s.mode):
                visit(child, path)
            elif st.S_ISREG(s.mode):
                try:
                    out[path] = hashlib.sha256(tree.read(child, 0, s.size)).hexdigest()
                except ImageError as exc:
                    out[path] = exc
    visit(tree.root, b"")
    return out


def _cut(src: Path, dst: Path, at: int) -> Path:
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read(at))
    return dst


def test_truncated_image_fails_only_what_is_missing(files: ff.FilesFactory, tmp_path: Path) -> None:
    import re

    img = files.image("ext4")
    with tree_of(img.path) as (tree, _vp):
        whole = contents(tree)
    # Where in the image does each file's data end?  A first cut at 60%
    # (ext4 puts the journal and inode tables first) makes every TruncatedError
    # say "before byte N"; cutting at the median N leaves half the files whole.
    first = _cut(img.path, tmp_path / "first.img", int(img.path.stat().st_size * 0.6))
    with tree_of(first) as (tree, _vp):
        needed = sorted(int(m.group(1).replace(",", "")) for e in contents(tree).values()
                        if isinstance(e, TruncatedError)
                        for m in [re.search(r"before byte ([\d,]+)", str(e))] if m)
    assert needed, "a cut at 60% left every file whole"
    cut = _cut(img.path, tmp_path / img.path.name, needed[len(needed) // 2])
    with tree_of(cut) as (tree, _vp):
        part = contents(tree)
    failed = {p: e for p, e in part.items() if isinstance(e, BaseException)}
    good = {p: h for p, h in part.items() if not isinstance(h, BaseException)}
    assert failed, "nothing lay in the missing part"
    assert len(good) >= 3, "the readable part should still read"
    for p, h in good.items():
        assert h == whole[p], f"{p!r}: wrong bytes from a truncated image"
    for p, e in failed.items():
        assert isinstance(e, ImageError)
        one_sentence(str(e))
    assert any(isinstance(e, TruncatedError) for e in failed.values())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


@pytest.mark.parametrize("kind, fs_type, offset, length", [
    ("ext4", "EXTFS", 1024, 1024),        # the primary superblock
    ("xfs", "XFS", 0, 512),
    ("btrfs", "BTRFS", 65536, 4096),
    ("ntfs", "NTFS", 0, 512),             # the boot sector
    ("fat32", "FAT32", 0, 512),
    ("exfat", "EXFAT", 0, 512),
])
def test_zeroed_superblock_is_one_sentence(kind: str, fs_type: str, offset: int, length: int,
                                           files: ff.FilesFactory, tmp_path: Path) -> None:
    raw = _copy(files.image(kind).ground_truth, tmp_path / "zeroed.raw")
    with open(raw, "r+b") as f:
        f.seek(offset)
        f.write(bytes(length))
    part = fc.FilePartition(raw)
    try:
        with pytest.raises(FilesUnavailable) as err:
            open_tree(part, fs_type, name="zeroed")
        one_sentence(err.value.reason)
        assert "superblock" in err.value.reason or "boot sector" in err.value.reason
        with pytest.raises(FilesUnavailable):
            open_tree(part, None, name="zeroed")       # raw data: nothing recognisable either
    finally:
        part.close()


def test_damaged_superblock_fields_are_one_sentence(files: ff.FilesFactory, tmp_path: Path) -> None:
    """A superblock with its magic but garbage counts: the parser's error, in one sentence."""
    raw = _copy(files.image("ext4").ground_truth, tmp_path / "bad.raw")
    with open(raw, "r+b") as f:
        f.seek(1024 + 32)                   # s_blocks_per_group
        f.write(b"\0\0\0\0")
    part = fc.FilePartition(raw)
    try:
        with pytest.raises(FilesUnavailable) as err:
            open_tree(part, "EXTFS", name="bad")
        one_sentence(err.value.reason)
    finally:
        part.close()


def test_unsupported_file_systems_say_why(factory: Factory, tmp_path: Path) -> None:
    need_root()
    need("mkfs.minix", "partclone.imager")
    raw = tmp_path / "minix.raw"
    with open(raw, "wb") as f:
        f.truncate(8 << 20)
    run(["mkfs.minix", str(raw)])
    out = tmp_path / "minix.img"
    run(["partclone.imager", "-c", "-s", str(raw), "-o", str(out)])     # fs type "raw"
    with pytest.raises(FilesUnavailable) as err:
        with tree_of(out):
            pass
    one_sentence(err.value.reason)
    assert "Minix" in err.value.reason and "loop-mount" in err.value.reason
    # Random data through partclone.imager: nothing recognisable.
    rnd = factory.partclone("raw", size_mb=8)
    with pytest.raises(FilesUnavailable) as err:
        with tree_of(rnd.path):
            pass
    one_sentence(err.value.reason)
    assert "no file system" in err.value.reason


@pytest.mark.parametrize("fs_type, expected", [
    ("EXTFS", True), ("XFS", True), ("BTRFS", True), ("NTFS", True), ("FAT12", True), ("FAT16", True),
    ("FAT32", True), ("EXFAT", True), ("ext3fs", True), ("fat32", True), ("ntfs", True),
    ("HFS Plus", False), ("F2FS", False), ("JFS", False), ("REISERFS", False), ("MINIX", False),
    ("NILFS", False), ("UFS", False), ("swap", False), ("hfs", False),
    (None, True), ("raw", True), ("dd", True), ("SOMETHING-NEW", True),
])
def test_files_supported_is_a_cheap_answer(fs_type: str | None, expected: bool) -> None:
    assert files_supported(fs_type) is expected


def test_unsupported_header_never_reads(tmp_path: Path) -> None:
    class NoIO:
        size = 1 << 20

        def read(self, offset: int, size: int) -> bytes:
            raise AssertionError("read")

        def read_into(self, offset: int, dest: memoryview) -> int:
            raise AssertionError("read_into")

    with pytest.raises(FilesUnavailable) as err:
        open_tree(NoIO(), "HFS Plus", name="mac")
    assert err.value.reason == ("the file system is HFS+, which imagefs cannot read; loop-mount the "
                                "virtual partition instead")


def test_header_and_content_disagree(files: ff.FilesFactory) -> None:
    part = fc.FilePartition(files.image("ntfs").ground_truth)
    try:
        with pytest.raises(FilesUnavailable) as err:
            open_tree(part, "EXTFS", name="liar")
        one_sentence(err.value.reason)
    finally:
        part.close()


def _ext4_inode_offset(raw: Path, ino: int) -> int:
    from dissect.extfs import ExtFS
    with open(raw, "rb") as f:
        fs = ExtFS(f)
        group, index = divmod(ino - 1, fs.sb.s_inodes_per_group)
        gd = fs._read_group_desc(group)
        table = gd.bg_inode_table_lo | (getattr(gd, "bg_inode_table_hi", 0) << 32)
        return table * fs.block_size + index * fs.sb.s_inode_size


def test_extent_past_the_end_is_an_error_not_zeros(files: ff.FilesFactory, tmp_path: Path) -> None:
    raw = _copy(files.image("ext4").ground_truth, tmp_path / "extent.raw")
    part = fc.FilePartition(raw)
    tree = open_tree(part, "EXTFS", name="extent")
    ino = tree.lookup(tree.root, b"big.bin")
    ok = tree.lookup(tree.root, b"empty")
    tree.close()
    off = _ext4_inode_offset(raw, ino)
    with open(raw, "r+b") as f:                 # first extent's ee_start_lo: far past the end
        f.seek(off + 40 + 12 + 8)
        f.write(struct.pack("<I", 0x7FFFFFF0))
    tree = open_tree(part, "EXTFS", name="extent")
    try:
        with pytest.raises(ImageError) as err:
            tree.read(ino, 0, 4096)
        one_sentence(str(err.value))
        assert "big.bin" in str(err.value) or f"inode {ino}" in str(err.value)
        assert "past the end" in str(err.value)
        assert tree.read(ok, 0, 10) == b""     # the rest still works
        assert tree.listdir(tree.root)
    finally:
        tree.close()
        part.close()


def test_damaged_directory_is_an_error_for_that_directory_only(files: ff.FilesFactory,
                                                               tmp_path: Path) -> None:
    raw = _copy(files.image("ext4").ground_truth, tmp_path / "dir.raw")
    part = fc.FilePartition(raw)
    tree = open_tree(part, "EXTFS", name="dir")
    many = tree.lookup(tree.root, b"many")
    first = tree._datamap(many, tree.stat(many).size).runs[0].where
    tree.close()
    with open(raw, "r+b") as f:                 # rec_len of the first entry: 3 (impossible)
        f.seek(first + 4)
        f.write(struct.pack("<H", 3))
    tree = open_tree(part, "EXTFS", name="dir")
    try:
        tree.listdir(tree.root)
        with pytest.raises(ImageError) as err:
            tree.listdir(many)
        one_sentence(str(err.value))
        assert "dir:/many" in str(err.value)
        docs = tree.lookup(tree.root, b"docs")
        assert tree.listdir(docs)
    finally:
        tree.close()
        part.close()


def test_broken_mft_record_names_the_file(files: ff.FilesFactory, tmp_path: Path) -> None:
    raw = _copy(files.image("ntfs").ground_truth, tmp_path / "mft.raw")
    part = fc.FilePartition(raw)
    tree = open_tree(part, "NTFS", name="mft")
    docs = tree.lookup(tree.root, b"docs")
    victim = tree.lookup(docs, b"numbers.txt")
    rec = tree.fs.mft.get(victim).offset
    fine = tree.lookup(tree.root, b"big.bin")
    tree.close()
    # The record's offset within $MFT: $MFT is contiguous after mkntfs.
    mft_start = tree.fs.boot_sector.MftStartLcn * tree.fs.cluster_size
    with open(raw, "r+b") as f:
        f.seek(mft_start + rec)
        f.write(b"BAAD")
    tree = open_tree(part, "NTFS", name="mft")
    try:
        tree.listdir(tree.root)
        tree.listdir(docs)
        with pytest.raises(ImageError) as err:
            tree.stat(victim)
        one_sentence(str(err.value))
        assert "mft:/docs/numbers.txt" in str(err.value)
        assert tree.stat(fine).size == 3 << 20
    finally:
        tree.close()
        part.close()


class Unstored(fc.FilePartition):
    """A partition whose image lacks one range (a StoredMap), as a bitmap can."""

    hole = (0, 0)

    def first_unstored(self, offset: int, size: int) -> int | None:
        lo, hi = self.hole
        return max(offset, lo) if offset < hi and offset + size > lo else None


def test_data_in_blocks_the_image_does_not_hold_is_an_error(files: ff.FilesFactory) -> None:
    part = Unstored(files.image("ext4").ground_truth)
    try:
        with open_tree(part, "EXTFS", name="holey") as tree:
            big = tree.lookup(tree.root, b"big.bin")
            where = tree.datamap(big).runs[-1].where
            want = contents(tree)
        part.hole = (where, where + 4096)
        with open_tree(part, "EXTFS", name="holey") as tree:
            got = contents(tree)
        bad = {p: e for p, e in got.items() if isinstance(e, BaseException)}
        assert list(bad) == [b"/big.bin"] and isinstance(bad[b"/big.bin"], TruncatedError)
        assert "holey:/big.bin" in str(bad[b"/big.bin"]) and "not in the backup" in str(bad[b"/big.bin"])
        assert {p: h for p, h in got.items() if p not in bad} == {p: h for p, h in want.items() if p not in bad}
    finally:
        part.close()


def test_partclone_fat12_unstored_clusters_are_eio(files: ff.FilesFactory) -> None:
    """partclone.fat (0.3.23) leaves used FAT12 clusters out of the image: those files are
    errors, every other file equals the source (if a later partclone stores them, all equal)."""
    src = fc.FilePartition(files.source("fat12"))
    try:
        with open_tree(src, None, name="src") as tree:
            truth = contents(tree)
    finally:
        src.close()
    with tree_of(files.image("fat12-pc").path) as (tree, _vp):
        got = contents(tree)
    assert set(got) == set(truth) or all(isinstance(e, BaseException) for p, e in got.items()
                                         if p not in truth)
    for path, value in got.items():
        if isinstance(value, BaseException):
            assert isinstance(value, TruncatedError), value
        else:
            assert value == truth[path], f"{path!r}: wrong bytes"
