"""btrfs through dissect.btrfs: the default subvolume, with nested
subvolumes and snapshots as directories the way the kernel shows them.

dissect.btrfs reads the superblock, the chunk tree, the root tree and each
subvolume's B-tree, and decodes zlib/lzo/zstd extents (``decode_extent``,
a pure function).  Items are decoded here with ``struct`` (names and xattr
values as raw bytes); file data is mapped from logical to physical
addresses with the library's chunk list and read straight from the
partition; compressed extents are read whole and decoded outside the tree
lock, prealloc extents are zeros.

Inode ids: ``(subvolume << 32) | objectid`` where ``subvolume`` is 0 for
the top-level tree (id 5) and ``id - 255`` for subvolumes (ids from 256), as
long as both fit (16 + 32 bits); a subvolume's root directory is its
objectid 256, as the kernel shows it.
"""

from __future__ import annotations

import os
import stat as st
import struct
from functools import lru_cache, partial
from typing import Any

from dissect.btrfs import Btrfs
from dissect.btrfs.btrfs import Btrfs as _Btrfs
from dissect.btrfs.btrfs import Subvolume
from dissect.btrfs.stream import decode_extent

from imagefs.files.datamap import DataMap, Run
from imagefs.files.errors import FilesError, FilesUnavailable
from imagefs.files.filestat import FileStat
from imagefs.files.partition import Partition, PartitionFile, check_range
from imagefs.files.tree import FileTree

INODE_ITEM, XATTR_ITEM, DIR_INDEX, EXTENT_DATA, ROOT_ITEM, ROOT_REF = 1, 24, 96, 108, 132, 156
TOP_LEVEL = 5
FIRST_FREE = 256
#: What the kernel shows for a subvolume entry copied into a snapshot (the
#: snapshot does not contain the nested subvolume): an empty directory
#: with inode 2 (BTRFS_EMPTY_SUBVOL_DIR_OBJECTID).
EMPTY_SUBVOL = 2
_INODE = struct.Struct("<QQQQQIIIIQQQ32sqIqIqI")
_DIR_ITEM = struct.Struct("<QBQQHHB")  # location key, transid, data_len, name_len, type
_EXTENT = struct.Struct("<QQBBHB")  # generation, ram_bytes, compression, encryption, other, type
_REG = struct.Struct("<QQQQ")  # disk_bytenr, disk_num_bytes, offset, num_bytes
#: B-tree nodes kept per tree (16 KiB each); the library keeps 8,192 (128 MB).
NODE_CACHE = 128


class BtrfsTree(FileTree):
    """A btrfs file system (its default subvolume and everything below it)."""

    fs_name = "btrfs"

    def __init__(self, partition: Partition, name: str) -> None:
        super().__init__(partition, name)
        try:
            fs = Btrfs(PartitionFile(partition, name))
        except Exception as exc:  # noqa: BLE001 - the parser raises anything on damage
            raise FilesUnavailable(
                f"the btrfs superblock or chunk tree is damaged ({' '.join(str(exc).split())})"
            ) from None
        if fs.sb.num_devices > 1:
            raise FilesUnavailable(
                f"the btrfs file system spans {fs.sb.num_devices} devices and this "
                "backup holds one of them"
            )
        self.fs = fs
        _shrink(fs._root_tree)
        original = partial(_Btrfs._open_tree, fs)

        def open_tree(objectid: int) -> Any:
            return _shrink(original(objectid))

        fs._open_tree = lru_cache(32)(open_tree)
        self.sector = fs.sector_size
        self._chunks = sorted(fs._logical_fh.chunks, key=lambda c: c.offset)
        self.default = fs.default_subvolume.objectid
        self.root = self._ino(self.default, FIRST_FREE)
        self._stat(self.root)

    # ------------------------------------------------------------ ids
    def _ino(self, subvol: int, objectid: int) -> int:
        key = 0 if subvol == TOP_LEVEL else subvol - 255
        if not 0 <= key < 1 << 16 or objectid >= 1 << 32:
            raise FilesError(
                self.name, f"subvolume {subvol} or inode {objectid} is too large to number"
            )
        return (key << 32) | objectid

    def _split(self, ino: int) -> tuple[Subvolume, int]:
        key, objectid = ino >> 32, ino & 0xFFFFFFFF
        subvol = TOP_LEVEL if key == 0 else key + 255
        return self.fs.open_subvolume(subvol), objectid

    def _items(self, ino: int, kind: int, start: int = 0) -> Any:
        sv, objectid = self._split(ino)
        return sv.tree.cursor().iter(objectid, kind, start, ignore_offset=True)

    # ------------------------------------------------------------ inodes
    def _inode(self, ino: int) -> tuple[Any, ...]:
        sv, objectid = self._split(ino)
        try:
            _item, data = sv.tree.find(objectid, INODE_ITEM, 0)
        except KeyError:
            raise FilesError(
                self.path_of(ino), f"its inode item ({sv.objectid}, {objectid}) is missing"
            ) from None
        return _INODE.unpack_from(bytes(data))

    def _has_ref(self, parent: int, child: int, dirid: int, name: bytes) -> bool:
        """Whether the root tree links subvolume ``child`` into ``parent`` at this entry."""
        try:
            _item, data = self.fs._root_tree.find(parent, ROOT_REF, child)
        except KeyError:
            return False
        raw = bytes(data)
        ref_dir, _seq, nlen = struct.unpack_from("<QQH", raw)
        return ref_dir == dirid and raw[18 : 18 + nlen] == name

    def _stat(self, ino: int) -> FileStat:
        if ino & 0xFFFFFFFF == EMPTY_SUBVOL:
            # The kernel stamps this placeholder with the time of the lookup;
            # the subvolume root's times are the closest stable choice.
            root = self._stat((ino >> 32) << 32 | FIRST_FREE)
            return FileStat(
                st.S_IFDIR | 0o755, ino, 1, 0, 0, 0, 0, root.atime_ns, root.mtime_ns, root.ctime_ns
            )
        (
            _gen,
            _tid,
            size,
            nbytes,
            _bg,
            nlink,
            uid,
            gid,
            mode,
            rdev,
            _flags,
            _seq,
            _res,
            a_s,
            a_n,
            c_s,
            c_n,
            m_s,
            m_n,
        ) = self._inode(ino)
        dev = 0
        if st.S_ISCHR(mode) or st.S_ISBLK(mode):
            dev = os.makedev(rdev >> 20, rdev & 0xFFFFF)  # the kernel's internal dev_t, as stored
        return FileStat(
            mode,
            ino,
            nlink,
            uid,
            gid,
            size,
            nbytes // 512,
            a_s * 10**9 + a_n,
            m_s * 10**9 + m_n,
            c_s * 10**9 + c_n,
            dev,
        )

    # ------------------------------------------------------------ directories
    def _listdir(self, ino: int) -> list[tuple[bytes, int]]:
        sv, _objectid = self._split(ino)
        out: list[tuple[bytes, int]] = []
        if _objectid == EMPTY_SUBVOL:
            return out
        for _item, data in self._items(ino, DIR_INDEX, 2):
            raw = bytes(data)
            loc_id, loc_type, _loc_off, _tid, _dlen, nlen, _ft = _DIR_ITEM.unpack_from(raw)
            name = raw[30 : 30 + nlen]
            if loc_type == ROOT_ITEM:
                if not self._has_ref(sv.objectid, loc_id, _objectid, name):
                    out.append((name, self._ino(sv.objectid, EMPTY_SUBVOL)))
                    continue
                child_sv = self.fs.open_subvolume(loc_id)
                out.append((name, self._ino(loc_id, child_sv.tree.root_item.root_dirid)))
            else:
                out.append((name, self._ino(sv.objectid, loc_id)))
        return out

    # ------------------------------------------------------------ data
    def _physical(self, ino: int, logical: int, length: int) -> list[tuple[int, int]]:
        """Partition ranges of a logical range (single and DUP profiles: the first stripe)."""
        out = []
        while length > 0:
            chunk = None
            for c in self._chunks:
                if c.offset <= logical < c.offset + c.length:
                    chunk = c
                    break
            if chunk is None:
                raise FilesError(
                    self.path_of(ino), f"its data at logical address {logical:#x} is in no chunk"
                )
            take = min(length, chunk.offset + chunk.length - logical)
            out.append((chunk.stripes[0].offset + logical - chunk.offset, take))
            logical += take
            length -= take
        return out

    def _datamap(self, ino: int, size: int) -> DataMap:
        runs: list[Run] = []
        part = self.partition
        what = partial(self.path_of, ino)
        for item, data in self._items(ino, EXTENT_DATA, 0):
            raw = bytes(data)
            pos = item.key.offset
            _gen, ram, comp, enc, _other, kind = _EXTENT.unpack_from(raw)
            if enc:
                raise FilesError(what(), "its data is encrypted")
            if kind == 0:  # inline
                payload = raw[21:]
                def inline(payload: bytes = payload, comp: int = comp,
                           sector: int = self.sector) -> bytes:
                    return payload if comp == 0 else decode_extent(payload, comp, 0, sector)

                runs.append(Run(pos, min(ram, size - pos), decode=inline, key=(ino, pos)))
                continue
            bytenr, disk_len, off, num = _REG.unpack_from(raw, 21)
            if kind == 2 or bytenr == 0:  # prealloc or a hole
                continue
            if comp == 0:
                for where, n in self._physical(ino, bytenr + off, num):
                    runs.append(Run(pos, n, where))
                    pos += n
                continue
            pieces = self._physical(ino, bytenr, disk_len)
            for where, n in pieces:
                check_range(part, where, n, what)

            def decode(pieces: Any = pieces, comp: int = comp) -> bytes:
                return decode_extent(
                    b"".join(part.read(w, n) for w, n in pieces), comp, 0, self.sector
                )

            runs.append(Run(pos, num, decode=decode, skip=off, key=("btrfs", bytenr)))
        return DataMap(size, runs, what)

    def _readlink(self, ino: int) -> bytes:
        s = self._stat(ino)
        m = self._datamap(ino, s.size)
        m.check(self.partition)
        return m.read(self.partition, 0, s.size)

    # ------------------------------------------------------------ xattrs
    def _xattrs(self, ino: int) -> dict[bytes, bytes]:
        out = {}
        for _item, data in self._items(ino, XATTR_ITEM, 0):
            raw = bytes(data)
            pos = 0
            while pos + 30 <= len(raw):  # one item may hold colliding names
                _a, _b, _c, _tid, dlen, nlen, _ft = _DIR_ITEM.unpack_from(raw, pos)
                out[raw[pos + 30 : pos + 30 + nlen]] = raw[pos + 30 + nlen : pos + 30 + nlen + dlen]
                pos += 30 + nlen + dlen
        return out

    # ------------------------------------------------------------ describe
    def _describe(self) -> list[tuple[str, str]]:
        sb = self.fs.sb
        rows = [
            ("file system", "btrfs"),
            ("label", self.fs.label or "(none)"),
            ("UUID", str(self.fs.uuid)),
            ("sector size", f"{self.sector:,} bytes"),
            ("size", f"{sb.total_bytes:,} bytes"),
            ("free space", f"{sb.total_bytes - sb.bytes_used:,} bytes (unallocated and unused)"),
        ]
        if self.default != TOP_LEVEL:
            rows.append(("default subvolume", str(self.default)))
        return rows


def _shrink(tree: Any) -> Any:
    """Give a library B-tree a small node cache instead of its 8,192 nodes."""
    fn = getattr(tree._read_node, "__wrapped__", None)
    if fn is not None:
        tree._read_node = lru_cache(NODE_CACHE)(fn)
    return tree
