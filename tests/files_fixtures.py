"""Rich file trees for the files-view tests, and the images made of them.

``fill_rich(root, caps)`` writes, into a mounted file system (or a staging
directory for FAT), everything issue 10 asks the files view to show: holes,
hard links, 200 files in one directory, 12 nested levels, non-ASCII and
255-byte names, a non-UTF-8 name, an empty file, symlinks (one dangling),
device nodes, a FIFO, a socket, xattrs, odd modes, owners and nanosecond
times, and a file written and deleted before imaging.  ``caps`` says what
the file system can hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import stat as st
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import realimages
from realimages import Factory, Image, Source, loop_device, mounted, need, need_root, run

#: One 255-byte name (the longest most file systems allow).
LONG_NAME = "L" * 251 + ".txt"
#: Non-ASCII, 2- and 3-byte UTF-8.
UNICODE_NAME = "ünïcödé-名前-ß.txt"
#: Not UTF-8: only for file systems that store bytes.
BAD_NAME = b"bad-\xff\xfe-name.bin"
#: A fixed time with a nanosecond part (2009-02-13 23:31:30.123456789 UTC).
T_NS = 1_234_567_890_123_456_789


@dataclass(frozen=True)
class Caps:
    """What a file system can store (everything by default)."""

    symlinks: bool = True
    hardlinks: bool = True
    devices: bool = True
    fifo: bool = True
    socket: bool = True
    xattrs: bool = True
    acl: bool = True
    owners: bool = True
    modes: bool = True
    bytes_names: bool = True
    holes: bool = True
    ns_times: bool = True
    big: int = 3 << 20        # bytes of the big random file (several extents)


POSIX = Caps()
#: What ntfs-3g can make: devices, FIFOs and sockets as Interix files,
#: xattrs as named streams; no POSIX owners/modes without a user mapping.
NTFS3G = Caps(acl=False, owners=False, modes=False, bytes_names=False, ns_times=False)
#: What an xfs proto file can describe (no hard links, sockets, xattrs,
#: sticky bits, owners of symlinks, names with blanks).
PROTO = Caps(hardlinks=False, socket=False, xattrs=False, acl=False, bytes_names=False, modes=False,
             owners=False)
FAT = Caps(symlinks=False, hardlinks=False, devices=False, fifo=False, socket=False, xattrs=False,
           acl=False, owners=False, modes=False, bytes_names=False, holes=False, ns_times=False)


def _acl_xattr(entries: list[tuple[int, int, int]]) -> bytes:
    out = (2).to_bytes(4, "little")
    for tag, perm, uid in entries:
        out += tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + uid.to_bytes(4, "little")
    return out


#: u::rw-, u:1234:r--, g::r--, m::r--, o::--- in the getxattr format.
ACL_VALUE = _acl_xattr([(1, 6, 0xFFFFFFFF), (2, 4, 1234), (4, 4, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
                        (0x20, 0, 0xFFFFFFFF)])


def fill_rich(root: Path, caps: Caps, seed: int = 7) -> None:
    rng = random.Random(seed)
    r = os.fsencode(root)

    def p(*parts: str | bytes) -> bytes:
        return os.path.join(r, *[os.fsencode(x) for x in parts])

    os.makedirs(p("docs"), exist_ok=True)
    with open(p("docs", "numbers.txt"), "w") as f:
        f.write("".join(f"line {i} {rng.random()}\n" for i in range(20000)))
    with open(p("big.bin"), "wb") as f:
        f.write(rng.randbytes(caps.big))
    open(p("empty"), "wb").close()
    with open(p(UNICODE_NAME), "w") as f:
        f.write("non-ascii name\n")
    with open(p(LONG_NAME), "w") as f:
        f.write("a 255-byte name\n")
    if caps.bytes_names:
        with open(p(BAD_NAME), "wb") as f:
            f.write(b"not utf-8\n")
    # 200 files in one directory (ext4 makes this an htree directory).
    os.makedirs(p("many"), exist_ok=True)
    for i in range(200):
        with open(p("many", f"file-{i:03d}-{'x' * (i % 40)}.dat"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(0, 3000)))
    # 12 nested levels.
    deep = p(*[f"level{i:02d}" for i in range(1, 13)])
    os.makedirs(deep, exist_ok=True)
    with open(os.path.join(deep, b"bottom.txt"), "w") as f:
        f.write("twelve levels down\n")
    if caps.holes:
        with open(p("sparse.bin"), "wb") as f:
            f.write(b"head" * 1024)
            f.seek(5 << 20)
            f.write(b"middle" * 1000)
            f.seek(9 << 20)
            f.write(b"tail")
        with open(p("all-hole.bin"), "wb") as f:
            f.truncate(2 << 20)
    if caps.hardlinks:
        with open(p("docs", "linked.txt"), "w") as f:
            f.write("one inode, three names\n")
        os.link(p("docs", "linked.txt"), p("hardlink-1.txt"))
        os.link(p("docs", "linked.txt"), p("many", "hardlink-2.txt"))
    if caps.symlinks:
        os.symlink("docs/numbers.txt", p("link-to-file"))
        os.symlink("docs", p("link-to-dir"))
        os.symlink("nowhere/at/all", p("dangling"))
        os.symlink("/" + "a" * 200 + "/long/absolute/target", p("long-link"))
    if caps.devices:
        os.mknod(p("char-dev"), st.S_IFCHR | 0o644, os.makedev(1, 3))
        os.mknod(p("block-dev"), st.S_IFBLK | 0o660, os.makedev(259, 70000 & 0xFFFFF))
    if caps.fifo:
        os.mkfifo(p("fifo"))
    if caps.socket:
        os.mknod(p("socket"), st.S_IFSOCK | 0o755)
    if caps.xattrs:
        os.setxattr(p("docs", "numbers.txt"), "user.comment", b"an extended attribute")
        os.setxattr(p("docs", "numbers.txt"), "user.binary", bytes(range(256)))
        os.setxattr(p("big.bin"), "user.big", b"x" * 700)     # too big for the inode: an xattr block
    if caps.acl:
        os.setxattr(p("docs", "numbers.txt"), "system.posix_acl_access", ACL_VALUE)
        os.setxattr(p("docs"), "trusted.note", b"trusted value")
    if caps.modes:
        os.chmod(p("docs", "numbers.txt"), 0o640)
        os.chmod(p("big.bin"), 0o4755)
        os.chmod(p("many"), 0o1777)
        os.chmod(p("empty"), 0o000)
    if caps.owners:
        os.lchown(p("docs", "numbers.txt"), 1234, 5678)
        os.lchown(p("many"), 0, 4321)
        if caps.symlinks:
            os.lchown(p("link-to-file"), 99, 98)
    # A file written and deleted: its blocks are free but hold old data.
    with open(p("deleted.bin"), "wb") as f:
        f.write(rng.randbytes(400_000))
    os.sync()
    os.unlink(p("deleted.bin"))
    t = T_NS if caps.ns_times else (T_NS // 2_000_000_000) * 2_000_000_000
    for name in ("big.bin", "empty", UNICODE_NAME, "docs"):
        os.utime(p(name), ns=(t, t))
    if caps.symlinks:
        os.utime(p("link-to-file"), ns=(t, t - 1_000_000_000), follow_symlinks=False)


def xfs_proto(root: Path) -> str:
    """An ``mkfs.xfs -p`` proto file describing the tree under ``root``."""
    lines = ["/dev/null", "0 0", _proto_mode(root.stat()) + " 0 0"]

    def visit(d: Path, depth: int) -> None:
        for p in sorted(d.iterdir()):
            s = os.lstat(p)
            head = " " * depth + f"{p.name} {_proto_mode(s)} {s.st_uid} {s.st_gid}"
            if st.S_ISDIR(s.st_mode):
                lines.append(head)
                visit(p, depth + 1)
                lines.append(" " * depth + "$")
            elif st.S_ISLNK(s.st_mode):
                lines.append(f"{head} {os.readlink(p)}")
            elif st.S_ISCHR(s.st_mode) or st.S_ISBLK(s.st_mode):
                lines.append(f"{head} {os.major(s.st_rdev)} {os.minor(s.st_rdev)}")
            elif st.S_ISFIFO(s.st_mode):
                lines.append(head)
            else:
                lines.append(f"{head} {p}")
    visit(root, 1)
    lines.append("$")
    return "\n".join(lines) + "\n"


def _proto_mode(s: os.stat_result) -> str:
    kind = {st.S_IFDIR: "d", st.S_IFLNK: "l", st.S_IFCHR: "c", st.S_IFBLK: "b",
            st.S_IFIFO: "p"}.get(st.S_IFMT(s.st_mode), "-")
    return (kind + ("u" if s.st_mode & st.S_ISUID else "-") + ("g" if s.st_mode & st.S_ISGID else "-")
            + f"{s.st_mode & 0o777:03o}")


#: mkfs command lines by fixture kind.
MKFS: dict[str, list[str]] = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-b", "4096"],
    "ext4-1k": ["mkfs.ext4", "-q", "-F", "-b", "1024"],
    "ext4-inline": ["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "inline_data,^has_journal"],
    "ext3": ["mkfs.ext3", "-q", "-F"],
    "ext2": ["mkfs.ext2", "-q", "-F", "-I", "128"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}

PARTCLONE = {"ext4": "partclone.ext4", "ext4-1k": "partclone.ext4", "ext4-inline": "partclone.ext4",
             "ext3": "partclone.ext3", "ext2": "partclone.ext2", "fat12-pc": "partclone.fat", "xfs": "partclone.xfs",
             "xfs-v4": "partclone.xfs", "xfs-proto": "partclone.xfs", "btrfs": "partclone.btrfs", "ntfs": "partclone.ntfs",
             "fat32": "partclone.fat", "fat16": "partclone.fat",
             # partclone.fat 0.3.23 leaves used FAT12 clusters out of its bitmap
             # (tests/test_files_damage.py shows the files view's EIO for them):
             # the reference image of FAT12 is a partclone.imager copy.
             "fat12": "partclone.imager",
             "exfat": "partclone.exfat"}


def _blank(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def _btrfs_extras(mnt: Path) -> None:
    """A subvolume, a nested subvolume, a snapshot, compressed files (zstd, zlib, lzo)."""
    run(["btrfs", "-q", "subvolume", "create", str(mnt / "subvol")])
    (mnt / "subvol" / "inside.txt").write_text("in a subvolume\n" * 50)
    run(["btrfs", "-q", "subvolume", "create", str(mnt / "subvol" / "nested")])
    (mnt / "subvol" / "nested" / "deeper.txt").write_text("in a nested subvolume\n")
    run(["btrfs", "-q", "subvolume", "snapshot", str(mnt / "subvol"), str(mnt / "snap")])
    (mnt / "subvol" / "after-snapshot.txt").write_text("not in the snapshot\n")
    rng = random.Random(3)
    text = "".join(f"compressible line {i % 97} {rng.randrange(10)}\n" for i in range(60000)).encode()
    for algo in ("zstd", "zlib", "lzo"):
        d = mnt / f"comp-{algo}"
        d.mkdir()
        run(["btrfs", "property", "set", str(d), "compression", algo])
        (d / "text.txt").write_bytes(text)
        (d / "tiny.txt").write_bytes(b"inline " * 50)       # an inline compressed extent
        with open(d / "mixed.bin", "wb") as f:
            f.write(text[:300_000])
            f.write(rng.randbytes(200_000))
            f.seek(2 << 20)
            f.write(text[:100_000])


def make_source(base: Path, kind: str, size_mb: int = 64, caps: Caps = POSIX) -> Path:
    """A file system of ``kind`` in a sparse file, filled with :func:`fill_rich`."""
    need_root()
    raw = base / f"files-src-{kind}-{size_mb}.raw"
    if raw.exists():
        return raw
    tmp = raw.with_suffix(".tmp")
    size = size_mb << 20
    mnt = base / f"files-mnt-{kind}"
    if kind in MKFS:
        need(MKFS[kind][0])
        _blank(tmp, size)
        env = dict(os.environ, TEST_DIR="/tmp", TEST_DEV="/dev/null", QA_CHECK_FS="1")
        run(MKFS[kind] + [str(tmp)], env=env)
        opts = "compress=zstd" if kind == "btrfs" else ""
        with loop_device(tmp) as dev, mounted(dev, mnt, options=opts):
            fill_rich(mnt, caps if kind != "ext4-inline" else POSIX)
            if kind == "btrfs":
                need("btrfs")
                _btrfs_extras(mnt)
            if kind == "ext4-inline":
                (mnt / "tiny.txt").write_bytes(b"inline!\n")
                (mnt / "small.txt").write_bytes(b"0123456789" * 12)    # 120 bytes: spills into system.data
                (mnt / "tinydir").mkdir()
                for i in range(3):
                    (mnt / "tinydir" / f"t{i}").write_text(str(i))
    elif kind in ("xfs-v4", "xfs-proto"):
        # This kernel (like most since 2025) does not mount xfs v4, so the v4
        # file system is filled at mkfs time from a proto file; "xfs-proto"
        # is a v5 file system made from the same proto file, which the
        # kernel can mount: the reference for the v4 tree.
        need("mkfs.xfs")
        staging = base / "files-stage-xfs-proto"
        if not staging.exists():
            staging.mkdir()
            fill_rich(staging, PROTO)
        proto = base / "files-xfs.proto"
        proto.write_text(xfs_proto(staging))
        _blank(tmp, size)
        crc = "0" if kind == "xfs-v4" else "1"
        env = dict(os.environ, TEST_DIR="/tmp", TEST_DEV="/dev/null", QA_CHECK_FS="1")
        run(["mkfs.xfs", "-q", "-f", "-m", f"crc={crc}", "-p", str(proto), str(tmp)], env=env)
    elif kind == "ntfs":
        need("mkntfs", "ntfs-3g")
        _blank(tmp, size + 3 * 512 + 7)          # an odd size: not a whole number of clusters
        run(["mkntfs", "-q", "-F", "-f", str(tmp)])
        mnt.mkdir(exist_ok=True)
        run(["ntfs-3g", "-o", "compression", str(tmp), str(mnt)])
        try:
            fill_rich(mnt, NTFS3G)
            _ntfs_extras(mnt)
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    elif kind in ("fat32", "fat16", "fat12"):
        need("mkfs.vfat", "mcopy")
        bits = kind[3:]
        _blank(tmp, size)
        run(["mkfs.vfat", "-F", bits, "-n", f"F{bits}LABEL", str(tmp)])
        staging = base / f"files-stage-{kind}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        fill_rich(staging, dataclasses.replace(FAT, big=1 << 20) if kind == "fat12" else FAT)
        run(["mcopy", "-s", "-m", "-i", str(tmp)] + [str(x) for x in sorted(staging.iterdir())] + ["::"])
        shutil.rmtree(staging, ignore_errors=True)
    elif kind == "exfat":
        need("mkfs.exfat", "mount.exfat-fuse")
        _blank(tmp, size)
        run(["mkfs.exfat", "-L", "EXLABEL", str(tmp)])
        mnt.mkdir(exist_ok=True)
        with loop_device(tmp) as dev:
            run(["mount.exfat-fuse", dev, str(mnt)])
            try:
                fill_rich(mnt, FAT)
                with open(mnt / "prealloc.bin", "wb") as f:       # valid data length < size
                    f.write(b"valid" * 100)
                    f.truncate(1 << 20)
            finally:
                subprocess.run(["umount", str(mnt)], check=False)
    else:
        raise ValueError(kind)
    tmp.rename(raw)
    return raw


def _ntfs_extras(mnt: Path) -> None:
    """Named data streams, a compressed directory's file, a read-only file."""
    f = mnt / "docs" / "numbers.txt"
    os.setxattr(f, "user.stream-one", b"the first named stream\n")
    os.setxattr(f, "user.second", b"x" * 60000)                # non-resident stream
    comp = mnt / "compressed"
    comp.mkdir()
    # FILE_ATTRIBUTE_COMPRESSED on the directory: ntfs-3g -o compression then
    # compresses the files created in it.
    os.setxattr(comp, "system.ntfs_attrib_be", (0x800 | 0x10).to_bytes(4, "big"))
    text = "".join(f"compressible {i % 50}\n" for i in range(80000)).encode()
    (comp / "text.txt").write_bytes(text)
    with open(comp / "sparse-compressed.bin", "wb") as fh:
        fh.write(text[:70000])
        fh.seek(1 << 20)
        fh.write(text[:5000])


class FilesFactory:
    """Sources and partclone/ntfsclone images of the rich trees, once per session."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.base = factory.base
        self._images: dict[str, Image] = {}

    @classmethod
    def of(cls, factory: Factory) -> "FilesFactory":
        """The one FilesFactory of a session's Factory (test modules share it)."""
        with factory._lock:
            ff = getattr(factory, "_files_factory", None)
            if ff is None:
                ff = cls(factory)
                factory._files_factory = ff  # type: ignore[attr-defined]
            return ff

    def source(self, kind: str) -> Path:
        size = {"fat12": 8, "fat16": 64, "btrfs": 160, "xfs": 300, "xfs-v4": 300,
                "xfs-proto": 300}.get(kind, 64)
        with self.factory._lock:
            return make_source(self.base, kind, size)

    def image(self, kind: str) -> Image:
        """The partclone image (ntfsclone for ``ntfsclone``) of the rich source ``kind``."""
        with self.factory._lock:
            if kind in self._images:
                return self._images[kind]
            src_kind = {"ntfsclone": "ntfs", "fat12-pc": "fat12"}.get(kind, kind)
            raw = self.source(src_kind)
            out = self.base / f"files-{kind}.img"
            gt = self.base / f"files-gt-{kind}.raw"
            size = raw.stat().st_size
            out.unlink(missing_ok=True)
            if kind == "ntfsclone":
                need("ntfsclone")
                run(["ntfsclone", "--save-image", "-f", "-O", str(out), str(raw)])
                _blank(gt, size)
                run(["ntfsclone", "--restore-image", "-f", "-O", str(gt), str(out)])
            else:
                # Straight from and to files (no loop devices): partclone
                # reads an image file as it reads a device, and -O restores
                # into a zero-filled file of the device size (an odd size
                # cannot be a loop device: losetup rounds it down).
                prog = PARTCLONE[kind]
                need(prog, "partclone.restore")
                run([prog, "-c", "-s", str(raw), "-o", str(out)])
                from imagefs.formats import probe
                from imagefs.io import FileSource
                _blank(gt, probe(FileSource(str(out))).device_size)
                run(["partclone.restore", "-s", str(out), "-O", str(gt)])
            img = Image(f"files-{kind}", out, gt, Source(src_kind, raw, size), kind)
            self._images[kind] = img
            return img


@contextlib.contextmanager
def reference_mount(kind: str, raw: Path, mnt: Path) -> Iterator[Path]:
    """A read-only mount of ``raw`` by the reference driver for ``kind``."""
    need_root()
    mnt.mkdir(parents=True, exist_ok=True)
    if kind.startswith("ntfs"):
        need("ntfs-3g")
        run(["ntfs-3g", "-o", "ro", str(raw), str(mnt)])
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    elif kind == "exfat":
        need("mount.exfat-fuse")
        with loop_device(raw, read_only=True) as dev:
            run(["mount.exfat-fuse", "-o", "ro", dev, str(mnt)])
            try:
                yield mnt
            finally:
                subprocess.run(["umount", str(mnt)], check=False)
    else:
        opts = "ro,norecovery" if kind.startswith("xfs") else "ro,noload" if kind in ("ext3", "ext4", "ext4-1k") else "ro"
        with loop_device(raw, read_only=True) as dev, mounted(dev, mnt, options=opts):
            yield mnt


def materialise(read_into: Callable[[int, memoryview], int], size: int, out: Path) -> Path:
    """Write a partition's bytes (from ``read_into``) to ``out``, sparse where zero."""
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    with open(out, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            n = read_into(pos, view[:min(len(buf), size - pos)])
            chunk = view[:n]
            if chunk.tobytes().count(0) != n:
                f.seek(pos)
                f.write(chunk)
            pos += n
    return out


__all__ = ["Caps", "POSIX", "NTFS3G", "FAT", "fill_rich", "make_source", "FilesFactory",
           "reference_mount", "materialise", "realimages"]
