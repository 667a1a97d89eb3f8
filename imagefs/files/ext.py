"""ext2/ext3/ext4 through dissect.extfs.

dissect.extfs validates the superblock and reads the group descriptors
(64bit, flex_bg, any block size from 1 KiB to 64 KiB); the inode itself is
decoded here with one ``struct`` call, because the library's inode object
gets several things wrong that a mount must get right (measured against the
kernel in tests/test_files_ext.py):

* inline data longer than 60 bytes lives in the ``system.data`` xattr, and
  inline directories have their own layout — the library reads neither;
* uninitialised (fallocated) extents must read as zeros, and the library
  misplaces them after a hole; an indirect block pointer of 0 above level 1
  is a hole, which the library reads as block 0;
* names are bytes (non-UTF-8 kept), the highest inode number is valid, and
  64 KiB blocks encode ``rec_len`` 65536 as 0/65535;
* in-inode xattrs of 128-byte and >256-byte inodes, and ACLs in the
  format getxattr returns.

A ``struct`` unpack also costs ~2 µs where the library's parse costs ~60 µs,
which is what keeps ``ls -lR`` of 100,000 files near the kernel's speed.
"""

from __future__ import annotations

import os
import stat as st
import struct
from functools import lru_cache, partial
from typing import NamedTuple

from dissect.extfs import ExtFS
from dissect.extfs.c_ext import c_ext

from imagefs.files import acl
from imagefs.files.datamap import DataMap, Run, block_runs
from imagefs.files.errors import FilesError, FilesUnavailable
from imagefs.files.filestat import FileStat
from imagefs.files.partition import Partition, PartitionFile
from imagefs.files.tree import LRU, FileTree

ROOT_INO = 2

_INODE = struct.Struct("<HHIIIIIHHIII60sIIIIHHHHHH")  # the first 128 bytes
_EXTRA = struct.Struct("<HHIII")  # i_extra_isize .. i_atime_extra

_INLINE_DATA_FL = 0x10000000
_EXTENTS_FL = 0x80000
_HUGE_FILE_FL = 0x40000
_INCOMPAT_FILETYPE = 0x2
_INCOMPAT_RECOVER = 0x4
_INCOMPAT_JOURNAL_DEV = 0x8
_INCOMPAT_META_BG = 0x10
_INCOMPAT_ENCRYPT = 0x10000
_RO_COMPAT_HUGE_FILE = 0x8

#: e_name_index -> prefix (linux/fs/ext4/xattr.h); 7 is system.data (inline
#: data), which the kernel does not list; unknown indexes are not listed either.
_XATTR_PREFIX = {1: b"user.", 4: b"trusted.", 6: b"security.", 8: b"system.richacl"}
_XATTR_MAGIC = 0xEA020000


class _Inode(NamedTuple):
    mode: int
    uid: int
    gid: int
    size: int
    links: int
    blocks: int
    flags: int
    block: bytes  # i_block, 60 bytes
    acl_block: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    extra: bytes  # in-inode xattr area (may be empty)


def _ts(sec: int, extra: int | None) -> int:
    sec = sec - (1 << 32) if sec & 0x80000000 else sec  # signed 32-bit seconds
    if extra is None:
        return sec * 1_000_000_000
    sec += (extra & 3) << 32  # epoch bits extend to 2446
    return sec * 1_000_000_000 + (extra >> 2)


class ExtTree(FileTree):
    """An ext2/3/4 file system."""

    def __init__(self, partition: Partition, name: str) -> None:
        super().__init__(partition, name)
        self._fh = PartitionFile(partition, name)
        try:
            fs = ExtFS(self._fh)
        except NotImplementedError as exc:
            raise FilesUnavailable(
                f"the ext file system uses a feature imagefs cannot read ({exc})"
            ) from None
        except Exception as exc:  # noqa: BLE001 - the parser raises anything on damage
            raise FilesUnavailable(
                f"the ext superblock is damaged ({' '.join(str(exc).split())})"
            ) from None
        sb = fs.sb
        incompat = sb.s_feature_incompat
        if incompat & _INCOMPAT_JOURNAL_DEV:
            raise FilesUnavailable("this is an external ext journal device, which holds no files")
        if incompat & _INCOMPAT_META_BG:
            raise FilesUnavailable(
                "the ext file system uses meta_bg group descriptors, which imagefs "
                "cannot read yet; loop-mount the virtual partition instead"
            )
        self.fs = fs
        self.fs_name = f"ext{fs.type}"  # dissect: 2, 3 or 4 from the feature flags
        self.block_size = fs.block_size
        self._inode_size = sb.s_inode_size if sb.s_rev_level else 128
        self._inodes_count = sb.s_inodes_count
        self._filetype = bool(incompat & _INCOMPAT_FILETYPE)
        self._huge = bool(sb.s_feature_ro_compat & _RO_COMPAT_HUGE_FILE)
        self._table = lru_cache(1024)(self._table_block)
        # Inode-table blocks: a directory's inodes sit together (16 to a 4 KiB
        # block), and one slice is cheaper than one partition read per inode.
        self._itable: LRU[int, bytes] = LRU(64)
        self.root = ROOT_INO
        self._inode(ROOT_INO)  # the root must be readable for the tree to exist

    # ------------------------------------------------------------ inodes
    def _table_block(self, group: int) -> int:
        gd = self.fs._read_group_desc(group)
        lo = gd.bg_inode_table_lo
        hi = (
            getattr(gd, "bg_inode_table_hi", 0)
            if self.fs._group_desc_struct is c_ext.ext4_group_desc
            else 0
        )
        return (hi << 32) | lo

    def _inode(self, ino: int) -> _Inode:
        if not 1 <= ino <= self._inodes_count:
            raise FilesError(
                self.path_of(ino), f"inode {ino} is out of range (1..{self._inodes_count})"
            )
        group, index = divmod(ino - 1, self.fs.sb.s_inodes_per_group)
        off = self._table(group) * self.block_size + index * self._inode_size
        blk, within = divmod(off, self.block_size)
        block = self._itable.get(blk)
        if block is None:
            block = self.partition.read(blk * self.block_size, self.block_size)
            self._itable.put(blk, block)
        raw = block[within : within + self._inode_size]
        if len(raw) < self._inode_size:
            raise FilesError(self.path_of(ino), "its inode lies past the end of the partition")
        (
            mode,
            uid,
            size_lo,
            atime,
            ctime,
            mtime,
            _dtime,
            gid,
            links,
            blocks_lo,
            flags,
            _osd1,
            block,
            _gen,
            acl_lo,
            size_hi,
            _faddr,
            blocks_hi,
            acl_hi,
            uid_hi,
            gid_hi,
            _csum,
            _res,
        ) = _INODE.unpack_from(raw)
        times: list[int | None] = [None, None, None]
        extra = b""
        if self._inode_size > 128:
            isize, _, c_x, m_x, a_x = _EXTRA.unpack_from(raw, 128)
            if 128 + isize > self._inode_size or isize % 4:
                raise FilesError(self.path_of(ino), f"its inode is damaged (extra size {isize})")
            times = [
                a_x if isize >= 16 else None,
                m_x if isize >= 12 else None,
                c_x if isize >= 8 else None,
            ]
            extra = raw[128 + isize :]
        blocks = blocks_lo | (blocks_hi << 32)
        if self._huge and flags & _HUGE_FILE_FL:
            blocks *= self.block_size // 512
        return _Inode(
            mode,
            uid | (uid_hi << 16),
            gid | (gid_hi << 16),
            size_lo | (size_hi << 32),
            links,
            blocks,
            flags,
            block,
            acl_lo | (acl_hi << 32),
            _ts(atime, times[0]),
            _ts(mtime, times[1]),
            _ts(ctime, times[2]),
            extra,
        )

    def _stat(self, ino: int) -> FileStat:
        i = self._inode(ino)
        if i.mode == 0 and i.links == 0:
            raise FilesError(
                self.path_of(ino), f"its inode {ino} is not in use (a damaged directory entry)"
            )
        rdev = 0
        if st.S_ISCHR(i.mode) or st.S_ISBLK(i.mode):
            old, new = struct.unpack_from("<II", i.block)
            rdev = (
                os.makedev((old >> 8) & 0xFF, old & 0xFF)
                if old
                else os.makedev((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))
            )
        links = i.links
        if st.S_ISDIR(i.mode) and links == 1:
            links = 1  # dir_nlink: more than 65,000 subdirectories, shown as 1 like the kernel
        size = (
            i.size
            if not (
                st.S_ISCHR(i.mode)
                or st.S_ISBLK(i.mode)
                or st.S_ISFIFO(i.mode)
                or st.S_ISSOCK(i.mode)
            )
            else 0
        )
        return FileStat(
            i.mode,
            ino,
            links,
            i.uid,
            i.gid,
            size,
            i.blocks,
            i.atime_ns,
            i.mtime_ns,
            i.ctime_ns,
            rdev,
        )

    # ------------------------------------------------------------ data
    def _runs(self, ino: int, i: _Inode) -> list[Run]:
        bs = self.block_size
        if i.flags & _EXTENTS_FL:
            out = []
            for lblock, length, pblock, uninit in self._extents(ino, i.block, 0):
                if not uninit:
                    out.append(Run(lblock * bs, length * bs, pblock * bs))
            return out
        nblocks = -(-i.size // bs)
        ptrs = struct.unpack_from("<15I", i.block)
        runs: list[tuple[int | None, int]] = []
        per = bs // 4
        lb = 0
        for b in ptrs[:12]:
            if lb >= nblocks:
                break
            runs.append((b or None, 1))
            lb += 1
        for level, b in enumerate(ptrs[12:15], start=1):
            if lb >= nblocks:
                break
            span = per**level
            take = min(span, nblocks - lb)
            self._indirect(b, level, take, runs)
            lb += take
        return block_runs(_merge(runs), bs, i.size)

    def _indirect(
        self, block: int, level: int, count: int, out: list[tuple[int | None, int]]
    ) -> None:
        if block == 0:
            out.append((None, count))
            return
        per = self.block_size // 4
        ptrs = struct.unpack_from(
            f"<{per}I", self.partition.read(block * self.block_size, self.block_size)
        )
        if level == 1:
            out.extend((p or None, 1) for p in ptrs[:count])
            return
        span = per ** (level - 1)
        for p in ptrs:
            if count <= 0:
                break
            take = min(span, count)
            self._indirect(p, level - 1, take, out)
            count -= take

    def _extents(self, ino: int, node: bytes, depth_seen: int) -> list[tuple[int, int, int, bool]]:
        magic, entries, _max, depth, _gen = struct.unpack_from("<HHHHI", node)
        if magic != 0xF30A or depth > 5 or depth_seen > 5 or 12 + 12 * entries > len(node):
            raise FilesError(self.path_of(ino), "its extent tree is damaged")
        out = []
        for k in range(entries):
            a, b, c, d = struct.unpack_from("<IHHI", node, 12 + 12 * k)
            if depth == 0:
                uninit = b > 32768
                out.append((a, b - 32768 if uninit else b, (c << 32) | d, uninit))
            else:
                _first, leaf_lo, leaf_hi = struct.unpack_from("<IIH", node, 12 + 12 * k)
                child = leaf_lo | (leaf_hi << 32)
                out.extend(
                    self._extents(
                        ino,
                        self.partition.read(child * self.block_size, self.block_size),
                        depth_seen + 1,
                    )
                )
        return out

    def _inline(self, ino: int, i: _Inode) -> bytes:
        """All inline bytes: i_block, then the system.data xattr's value."""
        rest = self._raw_xattrs(ino, i).get((7, b"data"), b"")
        return i.block + rest

    def _datamap(self, ino: int, size: int) -> DataMap:
        i = self._inode(ino)
        if i.flags & _INLINE_DATA_FL:
            data = self._inline(ino, i)[:size]
            if len(data) < size:
                raise FilesError(self.path_of(ino), "its inline data is shorter than its size")
            return DataMap(size, [Run(0, size, decode=lambda: data)], partial(self.path_of, ino))
        return DataMap(size, self._runs(ino, i), partial(self.path_of, ino))

    def _content(self, ino: int, i: _Inode) -> bytes:
        m = self._datamap(ino, i.size)
        m.check(self.partition)
        return m.read(self.partition, 0, i.size)

    def _readlink(self, ino: int) -> bytes:
        i = self._inode(ino)
        if i.flags & _INLINE_DATA_FL:
            return self._inline(ino, i)[: i.size]
        # As ext4_inode_is_fast_symlink: no data blocks besides an xattr block
        # means the target is stored in i_block itself.
        ea_blocks = self.block_size // 512 if i.acl_block else 0
        if i.blocks - ea_blocks == 0:
            return i.block[: i.size]
        return self._content(ino, i)

    # ------------------------------------------------------------ directories
    def _listdir(self, ino: int) -> list[tuple[bytes, int]]:
        i = self._inode(ino)
        if i.flags & _INLINE_DATA_FL:
            data = self._inline(ino, i)
            out = self._dirents(ino, data[4:60], len(data[4:60]))
            rest = data[60:]
            if rest:
                out += self._dirents(ino, rest, len(rest))
            return out
        data = self._content(ino, i)
        return self._dirents(ino, data, self.block_size)

    def _dirents(self, ino: int, data: bytes, block: int) -> list[tuple[bytes, int]]:
        out = []
        pos = 0
        n = len(data)
        big = self.block_size == 65536
        limit = self._inodes_count
        while pos + 8 <= n:
            child, rec_len, name_len, ftype = struct.unpack_from("<IHBB", data, pos)
            if big:
                rec_len = (
                    self.block_size
                    if rec_len in (0, 65535)
                    else (rec_len & 65532) | ((rec_len & 3) << 16)
                )
            if not self._filetype:
                name_len |= ftype << 8
            if (
                rec_len < 8
                or rec_len % 4
                or pos % block + rec_len > block
                or 8 + name_len > rec_len
            ):
                raise FilesError(
                    self.path_of(ino),
                    f"its directory entry at byte {pos} is damaged (record length {rec_len})",
                )
            if child:
                name = data[pos + 8 : pos + 8 + name_len]
                if child > limit:
                    raise FilesError(
                        self.path_of(ino),
                        f"its entry {name!r} names inode {child}, past the last ({limit})",
                    )
                if name not in (b".", b".."):
                    out.append((name, child))
            pos += rec_len
        return out

    # ------------------------------------------------------------ xattrs
    def _raw_xattrs(self, ino: int, i: _Inode) -> dict[tuple[int, bytes], bytes]:
        found: dict[tuple[int, bytes], bytes] = {}
        if len(i.extra) >= 4 and struct.unpack_from("<I", i.extra)[0] == _XATTR_MAGIC:
            self._xattr_entries(ino, i.extra, 4, 4, found)
        if i.acl_block:
            blk = self.partition.read(i.acl_block * self.block_size, self.block_size)
            if len(blk) < 32 or struct.unpack_from("<I", blk)[0] != _XATTR_MAGIC:
                raise FilesError(self.path_of(ino), "its extended attribute block is damaged")
            self._xattr_entries(ino, blk, 32, 0, found)
        return found

    def _xattr_entries(
        self, ino: int, buf: bytes, pos: int, base: int, found: dict[tuple[int, bytes], bytes]
    ) -> None:
        while pos + 16 <= len(buf) and struct.unpack_from("<I", buf, pos)[0] != 0:
            name_len, index, voff, vinum, vsize, _hash = struct.unpack_from("<BBHIII", buf, pos)
            name = buf[pos + 16 : pos + 16 + name_len]
            if vinum:
                vi = self._inode(vinum)  # ea_inode: the value is the inode's data
                value = self._content(vinum, vi)[:vsize]
            else:
                if base + voff + vsize > len(buf):
                    raise FilesError(
                        self.path_of(ino), "an extended attribute's value lies outside its block"
                    )
                value = buf[base + voff : base + voff + vsize]
            found[(index, name)] = value
            pos += (16 + name_len + 3) & ~3

    def _xattrs(self, ino: int) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for (index, name), value in self._raw_xattrs(ino, self._inode(ino)).items():
            if index == 2:
                out[acl.ACL_ACCESS] = acl.from_ext4(value)
            elif index == 3:
                out[acl.ACL_DEFAULT] = acl.from_ext4(value)
            elif index in _XATTR_PREFIX:
                out[_XATTR_PREFIX[index] + name] = value
        return out

    # ------------------------------------------------------------ describe
    def _describe(self) -> list[tuple[str, str]]:
        sb = self.fs.sb
        total = (
            ((sb.s_blocks_count_hi << 32) | sb.s_blocks_count_lo)
            if sb.s_feature_incompat & 0x80
            else sb.s_blocks_count_lo
        )
        free = (
            ((sb.s_free_blocks_count_hi << 32) | sb.s_free_blocks_count_lo)
            if sb.s_feature_incompat & 0x80
            else sb.s_free_blocks_count_lo
        )
        rows = [
            ("file system", self.fs_name),
            ("label", self.fs.volume_name or "(none)"),
            ("UUID", str(self.fs.uuid)),
            ("block size", f"{self.block_size:,} bytes"),
            ("size", f"{total * self.block_size:,} bytes"),
            ("free space", f"{free * self.block_size:,} bytes"),
            (
                "inodes",
                f"{sb.s_inodes_count - sb.s_free_inodes_count:,} used of {sb.s_inodes_count:,}",
            ),
        ]
        if sb.s_feature_incompat & _INCOMPAT_RECOVER:
            rows.append(
                (
                    "note",
                    "the journal holds changes not yet written (the file system was not "
                    "unmounted cleanly); they are not shown",
                )
            )
        if sb.s_feature_incompat & _INCOMPAT_ENCRYPT:
            rows.append(("note", "some directories are encrypted; their names are shown as stored"))
        return rows


def _merge(runs: list[tuple[int | None, int]]) -> list[tuple[int | None, int]]:
    """Join consecutive blocks (and consecutive holes) into runs."""
    out: list[tuple[int | None, int]] = []
    for b, n in runs:
        if out:
            pb, pn = out[-1]
            if (b is None and pb is None) or (b is not None and pb is not None and pb + pn == b):
                out[-1] = (pb, pn + n)
                continue
        out.append((b, n))
    return out
