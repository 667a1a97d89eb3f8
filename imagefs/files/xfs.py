"""xfs (v4 and v5) through dissect.xfs.

dissect.xfs reads the superblock, locates inodes, walks extent B+trees and
decodes shortform, block, leaf and node directories and symlinks.  Here:

* the inode core is decoded with one ``struct`` call for ``stat`` (the
  library's parse costs ~25x more per inode);
* unwritten (preallocated) extents read as zeros — the library reads
  whatever the blocks hold;
* extended attributes (the library has none): shortform, leaf and node
  attribute forks, remote values, the user/trusted/security namespaces and
  the SGI ACLs as ``system.posix_acl_*``;
* directory blocks larger than the file system block (``mkfs.xfs -n
  size=``) are refused at open: the library would skip their entries.
"""

from __future__ import annotations

import os
import stat as st
import struct
from functools import partial
from typing import Any

from dissect.xfs import XFS
from dissect.xfs.xfs import parse_fsblock

from imagefs.files import acl
from imagefs.files.datamap import DataMap, Run
from imagefs.files.errors import FilesError, FilesUnavailable
from imagefs.files.filestat import FileStat
from imagefs.files.partition import Partition, PartitionFile
from imagefs.files.tree import INO_LIMIT, FileTree

_CORE = struct.Struct(">HHBBHIIIHH6sH8s8s8sQQIIHBbIHHII")  # the first 100 bytes
_V3 = struct.Struct(">IQQQ")  # crc, changecount, lsn, flags2 at 100
_FMT_DEV, _FMT_LOCAL, _FMT_EXTENTS, _FMT_BTREE = 0, 1, 2, 3
_BIGTIME, _NREXT64 = 1 << 3, 1 << 4
_ATTR_LOCAL, _ATTR_ROOT, _ATTR_SECURE, _ATTR_INCOMPLETE = 0x01, 0x02, 0x04, 0x80
_LEAF_MAGIC = {0xFBEE: 32, 0x3BEE: 80}  # attr leaf magic -> header size
_BIGTIME_EPOCH = 1 << 31


def _ts(raw: bytes, big: bool) -> int:
    if big:
        ns = struct.unpack(">Q", raw)[0]
        return ns - _BIGTIME_EPOCH * 1_000_000_000
    sec, nsec = struct.unpack(">iI", raw)
    return sec * 1_000_000_000 + nsec


class XfsTree(FileTree):
    """An xfs file system."""

    fs_name = "xfs"

    def __init__(self, partition: Partition, name: str) -> None:
        super().__init__(partition, name)
        try:
            self.fs = XFS(PartitionFile(partition, name))
        except Exception as exc:  # noqa: BLE001 - the parser raises anything on damage
            raise FilesUnavailable(
                f"the xfs superblock is damaged ({' '.join(str(exc).split())})"
            ) from None
        sb = self.fs.sb
        if sb.sb_dirblklog:
            raise FilesUnavailable(
                f"the xfs directory blocks are {sb.sb_blocksize << sb.sb_dirblklog:,} "
                "bytes (mkfs.xfs -n size=), which imagefs cannot read yet; loop-mount "
                "the virtual partition instead"
            )
        self.fs_name = f"xfs (v{self.fs.version})"
        self.block_size = sb.sb_blocksize
        self.inode_size = sb.sb_inodesize
        self.root = sb.sb_rootino
        if self.root >= INO_LIMIT:
            raise FilesUnavailable(
                "the xfs inode numbers are wider than 48 bits, which imagefs cannot show"
            )
        self._stat(self.root)

    # ------------------------------------------------------------ inodes
    def _block(self, fsb: int) -> int:
        """A file system block number (AG number in the high bits) to a partition block."""
        sb = self.fs.sb
        return (fsb >> sb.sb_agblklog) * sb.sb_agblocks + (fsb & ((1 << sb.sb_agblklog) - 1))

    def _raw(self, ino: int) -> bytes:
        sb = self.fs.sb
        bits = sb.sb_agblklog + sb.sb_inopblog
        ag, rel = ino >> bits, ino & ((1 << bits) - 1)
        if ag >= sb.sb_agcount or rel >= sb.sb_agblocks * sb.sb_inopblock:
            raise FilesError(self.path_of(ino), f"inode {ino} is outside the file system")
        off = ag * sb.sb_agblocks * self.block_size + rel * self.inode_size
        raw = self.partition.read(off, self.inode_size)
        if len(raw) < self.inode_size or raw[:2] != b"IN":
            raise FilesError(self.path_of(ino), f"inode {ino} is damaged (no inode magic)")
        return raw

    def _core(self, ino: int) -> tuple[bytes, tuple[Any, ...], int]:
        raw = self._raw(ino)
        c = _CORE.unpack_from(raw)
        flags2 = _V3.unpack_from(raw, 100)[3] if c[2] >= 3 else 0
        return raw, c, flags2

    def _stat(self, ino: int) -> FileStat:
        raw, c, flags2 = self._core(ino)
        (
            _magic,
            mode,
            version,
            fmt,
            onlink,
            uid,
            gid,
            nlink,
            _plo,
            _phi,
            _pad,
            _fl,
            atime,
            mtime,
            ctime,
            size,
            nblocks,
            *_rest,
        ) = c
        big = bool(flags2 & _BIGTIME)
        if version == 1:
            nlink = onlink
        rdev = 0
        lit = 176 if version >= 3 else 100
        if fmt == _FMT_DEV:
            dev = struct.unpack_from(">I", raw, lit)[0]
            rdev = os.makedev((dev >> 18) & 0x1FF, dev & 0x3FFFF)
        if not (st.S_ISREG(mode) or st.S_ISDIR(mode) or st.S_ISLNK(mode)):
            size = 0
        return FileStat(
            mode,
            ino,
            nlink,
            uid,
            gid,
            size,
            nblocks * (self.block_size // 512),
            _ts(atime, big),
            _ts(mtime, big),
            _ts(ctime, big),
            rdev,
        )

    # ------------------------------------------------------------ data
    def _extents(self, ino: int) -> list[tuple[int, int, int, int]]:
        """(file block, partition block, count, unwritten) of the data fork."""
        node = self.fs.get_inode(ino)
        return [(off, self._block(fsb), n, flag) for off, fsb, n, flag in node._iter_blocks()]

    def _datamap(self, ino: int, size: int) -> DataMap:
        raw, c, _f2 = self._core(ino)
        fmt = c[3]
        what = partial(self.path_of, ino)
        if fmt == _FMT_LOCAL:
            lit = 176 if c[2] >= 3 else 100
            data = raw[lit : lit + size]
            return DataMap(size, [Run(0, size, decode=lambda: data)], what)
        if fmt not in (_FMT_EXTENTS, _FMT_BTREE):
            raise FilesError(
                what(), f"its data fork has format {fmt}, which a regular file cannot have"
            )
        bs = self.block_size
        runs = [
            Run(off * bs, n * bs, blk * bs)
            for off, blk, n, unwritten in self._extents(ino)
            if not unwritten
        ]
        return DataMap(size, runs, what)

    def _readlink(self, ino: int) -> bytes:
        return self.fs.get_inode(ino).link.encode("utf-8", "surrogateescape")

    # ------------------------------------------------------------ directories
    def _listdir(self, ino: int) -> list[tuple[bytes, int]]:
        out = []
        for e in self.fs.get_inode(ino).iterdir():
            name = e.filename.encode("utf-8", "surrogateescape")
            if name in (b".", b".."):
                continue
            if e.inum >= INO_LIMIT:
                raise FilesError(
                    self.path_of(ino),
                    f"its entry {name!r} names inode {e.inum}, wider than 48 bits",
                )
            out.append((name, e.inum))
        return out

    # ------------------------------------------------------------ xattrs
    def _xattrs(self, ino: int) -> dict[bytes, bytes]:
        raw, c, flags2 = self._core(ino)
        forkoff, aformat = c[20], c[21]
        if forkoff == 0:
            return {}
        lit = 176 if c[2] >= 3 else 100
        fork = raw[lit + forkoff * 8 :]
        found: list[tuple[int, bytes, bytes]] = []
        if aformat == _FMT_LOCAL:
            total, count = struct.unpack_from(">HB", fork)
            pos = 4
            for _ in range(count):
                nlen, vlen, flags = fork[pos], fork[pos + 1], fork[pos + 2]
                name = fork[pos + 3 : pos + 3 + nlen]
                value = fork[pos + 3 + nlen : pos + 3 + nlen + vlen]
                if pos + 3 + nlen + vlen > min(total, len(fork)):
                    raise FilesError(self.path_of(ino), "its shortform attribute fork is damaged")
                found.append((flags, name, value))
                pos += 3 + nlen + vlen
        elif aformat in (_FMT_EXTENTS, _FMT_BTREE):
            found = self._attr_blocks(ino, c, flags2, fork, aformat)
        else:
            raise FilesError(self.path_of(ino), f"its attribute fork has format {aformat}")
        out = {}
        for flags, name, value in found:
            if flags & _ATTR_INCOMPLETE:
                continue
            if flags & _ATTR_ROOT:
                # The kernel lists ACLs twice: as stored (trusted.SGI_ACL_*)
                # and converted (system.posix_acl_*).
                out[b"trusted." + name] = value
                if name == b"SGI_ACL_FILE":
                    out[acl.ACL_ACCESS] = acl.from_xfs(value)
                elif name == b"SGI_ACL_DEFAULT":
                    out[acl.ACL_DEFAULT] = acl.from_xfs(value)
            elif flags & _ATTR_SECURE:
                out[b"security." + name] = value
            elif not flags & ~(_ATTR_LOCAL | _ATTR_INCOMPLETE):
                out[b"user." + name] = value
        return out

    def _attr_map(
        self,
        c: tuple,
        flags2: int,
        fork: bytes,
        aformat: int,
    ) -> dict[int, int]:
        """Attribute-fork block -> partition block."""
        recs: list[bytes] = []
        if aformat == _FMT_EXTENTS:
            # di_anextents: u16 at 80, or with large extent counts u32 at 76
            n = c[18] if flags2 & _NREXT64 else c[19]
            recs = [fork[16 * k : 16 * k + 16] for k in range(n)]
        else:
            level, numrecs = struct.unpack_from(">HH", fork)
            maxrecs = (len(fork) - 4) // 16
            for k in range(numrecs):
                ptr = struct.unpack_from(">Q", fork, 4 + maxrecs * 8 + 8 * k)[0]
                recs += self.fs.walk_large_tree(self._block(ptr), 16, None)
        mapping = {}
        for rec in recs:
            off, fsb, count, _flag = parse_fsblock(rec)
            for k in range(count):
                mapping[off + k] = self._block(fsb) + k
        return mapping

    def _attr_blocks(
        self,
        ino: int,
        c: tuple,
        flags2: int,
        fork: bytes,
        aformat: int,
    ) -> list[tuple[int, bytes, bytes]]:
        bs = self.block_size
        mapping = self._attr_map(c, flags2, fork, aformat)
        found = []
        for lblk in sorted(mapping):
            blk = self.partition.read(mapping[lblk] * bs, bs)
            magic = struct.unpack_from(">H", blk, 8)[0]
            hdr = _LEAF_MAGIC.get(magic)
            if hdr is None:
                continue  # a node block or a remote value block
            count = struct.unpack_from(">H", blk, 12 if magic == 0xFBEE else 56)[0]  # after blkinfo
            for k in range(count):
                _hash, nameidx, flags = struct.unpack_from(">IHB", blk, hdr + 8 * k)
                if flags & _ATTR_LOCAL:
                    vlen, nlen = struct.unpack_from(">HB", blk, nameidx)
                    name = blk[nameidx + 3 : nameidx + 3 + nlen]
                    value = blk[nameidx + 3 + nlen : nameidx + 3 + nlen + vlen]
                else:
                    vblk, vlen, nlen = struct.unpack_from(">IIB", blk, nameidx)
                    name = blk[nameidx + 9 : nameidx + 9 + nlen]
                    value = self._remote(ino, mapping, vblk, vlen, magic == 0x3BEE)
                found.append((flags, name, value))
        return found

    def _remote(
        self, ino: int, mapping: dict[int, int], first: int, length: int, crc: bool
    ) -> bytes:
        bs = self.block_size
        out = []
        lblk = first
        left = length
        while left > 0:
            if lblk not in mapping:
                raise FilesError(
                    self.path_of(ino), "an extended attribute's remote value is missing"
                )
            blk = self.partition.read(mapping[lblk] * bs, bs)
            if crc:
                if blk[:4] != b"XARM":
                    raise FilesError(
                        self.path_of(ino), "an extended attribute's remote block is damaged"
                    )
                n = struct.unpack_from(">I", blk, 8)[0]
                out.append(blk[56 : 56 + min(n, left)])
                left -= min(n, left)
            else:
                out.append(blk[: min(bs, left)])
                left -= min(bs, left)
            lblk += 1
        return b"".join(out)

    # ------------------------------------------------------------ describe
    def _describe(self) -> list[tuple[str, str]]:
        sb = self.fs.sb
        return [
            ("file system", self.fs_name),
            ("label", self.fs.name or "(none)"),
            ("UUID", str(self.fs.uuid)),
            ("block size", f"{self.block_size:,} bytes"),
            ("size", f"{sb.sb_dblocks * self.block_size:,} bytes"),
            ("free space", f"{sb.sb_fdblocks * self.block_size:,} bytes"),
            ("inodes", f"{sb.sb_icount - sb.sb_ifree:,} used of {sb.sb_icount:,} allocated"),
        ]
