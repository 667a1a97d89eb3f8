"""NTFS through dissect.ntfs, shown the way ntfs-3g shows it by default.

dissect.ntfs parses the boot sector, MFT records (fixups, attribute lists),
attributes, run lists and index nodes.  Here:

* directories are walked as the B+tree they are (each entry's child node
  before it), entries decoded with ``struct``: the library's linear scan of
  every index buffer would also list stale entries of freed buffers, skips
  damaged ones silently and costs ~100 µs an entry;
* what ntfs-3g shows: DOS-only names and the metadata files (MFT records
  below 16) are hidden; Interix files (what ntfs-3g makes for symlinks,
  devices, FIFOs and sockets) and symlink/junction reparse points get their
  POSIX types; mode 0777 and owner 0:0 (ntfs-3g without a user mapping);
  nlink from the record's link count (1 for directories); mtime = last data
  change, ctime = last MFT change, 100 ns precision;
* data beyond the valid data length reads as zeros; compressed (LZNT1)
  units are decoded here with dissect.util's decompressor, zero-padded to
  the unit as ntfs-3g does (the library's stream would shift the data);
* named data streams are the xattrs ``user.NAME`` (ntfs-3g's default
  ``streams_interface=xattr``).
"""

from __future__ import annotations

import io
import os
import stat as st
import struct
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

from dissect.ntfs import NTFS
from dissect.ntfs.c_ntfs import ATTRIBUTE_TYPE_CODE as AT
from dissect.ntfs.mft import Mft
from dissect.ntfs.util import apply_fixup
from dissect.util.compression import lznt1

from imagefs.files.datamap import DataMap, Run, block_runs
from imagefs.files.errors import FilesError, FilesUnavailable
from imagefs.files.filestat import FileStat
from imagefs.files.partition import Partition, PartitionFile, check_range
from imagefs.files.tree import FileTree

ROOT = 5
FIRST_USER = 16
# Attribute type codes as plain ints (the library's enum compares ~10x slower).
_SI, _ATTR_LIST, _DATA, _INDEX_ROOT, _INDEX_ALLOC, _REPARSE = 0x10, 0x20, 0x80, 0x90, 0xA0, 0xC0
_I30 = "$I30".encode("utf-16-le")  # records below are the file system's own ($MFT ... $Extend)
_FILETIME_EPOCH = 116_444_736_000_000_000  # 100 ns ticks from 1601 to 1970
_DOS_NAME = 2  # $FILE_NAME namespace: DOS 8.3 only
_IN_USE = 0x1
_ATTR_SYSTEM = 0x4
_ATTR_REPARSE = 0x400
_COMPRESSED = 0x1
_ENCRYPTED = 0x4000
_TAG_SYMLINK = 0xA000000C
_TAG_MOUNT_POINT = 0xA0000003
_MODE = 0o777  # ntfs-3g without "permissions" or a user mapping
#: MFT records kept parsed (a record with its attributes is ~5-10 KB; the
#: library's default of 4,096 would be 20-40 MB per open tree).
RECORD_CACHE = 256


def _ns(filetime: int) -> int:
    return (filetime - _FILETIME_EPOCH) * 100


class NtfsTree(FileTree):
    """An NTFS volume."""

    fs_name = "ntfs"

    def __init__(self, partition: Partition, name: str) -> None:
        super().__init__(partition, name)
        self._fh = PartitionFile(partition, name)
        try:
            self.fs = NTFS(self._fh)
        except Exception as exc:  # noqa: BLE001 - the parser raises anything on damage
            raise FilesUnavailable(
                f"the NTFS boot sector or $MFT is damaged ({' '.join(str(exc).split())})"
            ) from None
        mft = self.fs.mft
        # The library re-reads a record on every get; keep a bounded cache of them.
        mft.get = lru_cache(RECORD_CACHE)(partial(Mft.get, mft))
        self.cluster = self.fs.cluster_size
        self.root = ROOT
        self._record(ROOT)

    # ------------------------------------------------------------ records
    def _record(self, ino: int) -> Any:
        r = self.fs.mft.get(ino)
        if not r.header.Flags & _IN_USE:
            raise FilesError(
                self.path_of(ino), f"its MFT record {ino} is not in use (a damaged directory)"
            )
        return r

    def _si(self, r: Any) -> Any:
        si = r.attributes[AT.STANDARD_INFORMATION]
        if not si:
            raise FilesError(self.path_of(r.segment), "its MFT record has no $STANDARD_INFORMATION")
        return si[0].attribute.attr

    def _kind(self, ino: int, r: Any) -> tuple[int, bytes | int | None]:
        """(S_IFMT type, symlink target or rdev) as ntfs-3g decides it."""
        rp = r.attributes[AT.REPARSE_POINT]
        if rp:
            tag = rp.tag
            if tag in (_TAG_SYMLINK, _TAG_MOUNT_POINT):
                return st.S_IFLNK, _reparse_target(rp)
        if r.is_dir():
            return st.S_IFDIR, None
        si = self._si(r)
        if si.FileAttributes & _ATTR_SYSTEM and self._data_attrs(r, ""):
            size = self._data_size(r)
            if size == 0:
                return st.S_IFIFO, None
            if size == 1:
                return st.S_IFSOCK, None
            if size <= 1024:
                head = self._stream_map(ino, r, "").read(self.partition, 0, size)
                if head.startswith(b"IntxLNK\x01"):
                    return st.S_IFLNK, head[8:].decode("utf-16-le", "surrogatepass").encode(
                        "utf-8", "surrogateescape"
                    )
                if size == 24 and head[:8] in (b"IntxCHR\x00", b"IntxBLK\x00"):
                    major, minor = struct.unpack_from("<QQ", head, 8)
                    kind = st.S_IFCHR if head[4:7] == b"CHR" else st.S_IFBLK
                    return kind, os.makedev(major, minor)
        return st.S_IFREG, None

    def _data_attrs(self, r: Any, name: str, kind: int = AT.DATA) -> Any:
        return r.attributes.find(name, kind)

    def _data_size(self, r: Any, name: str = "") -> int:
        attrs = self._data_attrs(r, name)
        return attrs.size() if attrs else 0

    def _fast_stat(self, ino: int, r: Any) -> FileStat | None:
        """stat from the record's attribute headers with ``struct`` (~30x faster than
        the library's attribute objects); None for the records that need the full
        path (attribute lists, reparse points, Interix candidates)."""
        data = r.data
        pos = r.header.FirstAttributeOffset
        si = None
        size = alloc = total = 0
        have_data = compressed = resident = False
        index_size = index_alloc = 0
        end = min(len(data), r.header.BytesInUse or len(data))
        while pos + 16 <= end:
            kind, length = struct.unpack_from("<II", data, pos)
            if kind == 0xFFFFFFFF:
                break
            if length < 16 or pos + length > end:
                return None  # let the library report the damage
            nonres, name_len, _name_off, flags = struct.unpack_from("<BBHH", data, pos + 8)
            if kind == _ATTR_LIST or kind == _REPARSE:
                return None
            if kind == _SI and not nonres:
                vlen, voff = struct.unpack_from("<IH", data, pos + 16)
                si = struct.unpack_from("<qqqqI", data, pos + voff)
            elif kind == _DATA and name_len == 0:
                have_data = True
                compressed = bool(flags & _COMPRESSED)
                if nonres:
                    lowest = struct.unpack_from("<q", data, pos + 16)[0]
                    if lowest == 0:
                        alloc, size = struct.unpack_from("<qq", data, pos + 40)
                        total = struct.unpack_from("<q", data, pos + 64)[0] if compressed else alloc
                else:
                    resident = True
                    size = struct.unpack_from("<I", data, pos + 16)[0]
            elif (
                kind == _INDEX_ALLOC
                and nonres
                and name_len == 4
                and data[pos + _name_off : pos + _name_off + 8] == _I30
            ):
                index_alloc, index_size = struct.unpack_from("<qq", data, pos + 40)
            pos += length
        if si is None:
            return None
        times = (_ns(si[3]), _ns(si[1]), _ns(si[2]))
        if r.header.Flags & 0x2:  # FILE_NAME_INDEX_PRESENT: a directory
            return FileStat(
                st.S_IFDIR | _MODE, ino, 1, 0, 0, index_size, index_alloc // 512, *times
            )
        if si[4] & _ATTR_SYSTEM and have_data and size <= 1024:
            return None  # maybe an Interix special file
        blocks = 0 if resident else total // 512
        return FileStat(
            st.S_IFREG | _MODE, ino, r.header.ReferenceCount, 0, 0, size, blocks, *times
        )

    def _stat(self, ino: int) -> FileStat:
        r = self._record(ino)
        fast = self._fast_stat(ino, r)
        if fast is not None:
            return fast
        si = self._si(r)
        kind, extra = self._kind(ino, r)
        rdev = extra if isinstance(extra, int) else 0
        nlink = 1 if kind == st.S_IFDIR else r.header.ReferenceCount
        size = blocks = 0
        if kind == st.S_IFDIR:
            ia = r.attributes.find("$I30", AT.INDEX_ALLOCATION)
            if ia:
                size = ia.size()
                blocks = ia.size(allocated=True) // 512
        elif kind == st.S_IFLNK:
            size = len(extra) if isinstance(extra, bytes) else 0
        elif kind != st.S_IFREG:
            size = self._data_size(r)  # ntfs-3g shows the Interix file's size
        elif kind == st.S_IFREG:
            attrs = self._data_attrs(r, "")
            if attrs:
                size = attrs.size()
                h = attrs[0].header
                if h.resident:
                    blocks = 0  # the data is inside the MFT record
                elif h.flags & _COMPRESSED:
                    blocks = h.header.Form.Nonresident.TotalAllocated // 512
                else:
                    blocks = attrs.size(allocated=True) // 512
        return FileStat(
            kind | _MODE,
            ino,
            nlink,
            0,
            0,
            size,
            blocks,
            _ns(si.LastAccessTime),
            _ns(si.LastModificationTime),
            _ns(si.LastChangeTime),
            rdev,
        )

    def _readlink(self, ino: int) -> bytes:
        kind, target = self._kind(ino, self._record(ino))
        if not isinstance(target, bytes):
            raise FilesError(self.path_of(ino), "is not a symbolic link", "")
        return target

    # ------------------------------------------------------------ directories
    def _listdir(self, ino: int) -> list[tuple[bytes, int]]:
        """The $I30 B+tree in order, entries decoded with ``struct`` (the library's
        per-entry attribute objects cost ~100 µs each)."""
        r = self._record(ino)
        root_attr = r.attributes.find("$I30", AT.INDEX_ROOT)
        if not root_attr:
            raise FilesError(self.path_of(ino), "its directory has no $I30 index root")
        root = root_attr[0].data()
        buf_size = struct.unpack_from("<I", root, 8)[0]
        alloc: DataMap | None = None
        if r.attributes.find("$I30", AT.INDEX_ALLOCATION):
            alloc = self._stream_map(ino, r, "$I30", AT.INDEX_ALLOCATION)
            alloc.check(self.partition)
        vcn_size = self.cluster if self.cluster <= buf_size else 512
        out: list[tuple[bytes, int]] = []
        seen: set[int] = set()

        def node(vcn: int) -> tuple[bytes, int, int]:
            if alloc is None or vcn in seen or len(seen) > 1 << 20:
                raise FilesError(self.path_of(ino), f"its directory index is damaged (node {vcn})")
            seen.add(vcn)
            raw = alloc.read(self.partition, vcn * vcn_size, buf_size)
            if len(raw) < buf_size or raw[:4] != b"INDX":
                raise FilesError(self.path_of(ino), f"its directory index node {vcn} is damaged")
            raw = apply_fixup(raw)
            first, used = struct.unpack_from("<II", raw, 24)
            return raw, 24 + first, min(24 + used, buf_size)

        def walk(data: bytes, pos: int, end: int, depth: int) -> None:
            if depth > 32:
                raise FilesError(self.path_of(ino), "its directory index is too deep (damaged)")
            while pos + 16 <= end:
                ref, length, key_len, flags = struct.unpack_from("<QHHH", data, pos)
                if length < 16 or pos + length > end:
                    raise FilesError(self.path_of(ino), "its directory index has a damaged entry")
                if flags & 1:  # a child node before this entry
                    walk(*node(struct.unpack_from("<Q", data, pos + length - 8)[0]), depth + 1)
                if flags & 2:  # the end entry
                    return
                key = pos + 16
                if key_len >= 66:
                    name_len, space = data[key + 64], data[key + 65]
                    child = ref & 0xFFFFFFFFFFFF
                    if space != _DOS_NAME and child >= FIRST_USER:
                        try:
                            name = (
                                data[key + 66 : key + 66 + 2 * name_len]
                                .decode("utf-16-le")
                                .encode("utf-8")
                            )
                        except UnicodeError:
                            name = b""  # an unpaired UTF-16 surrogate: ntfs-3g skips the entry too
                        if name:
                            out.append((name, child))
                pos += length

        first, used = struct.unpack_from("<II", root, 16)
        walk(root, 16 + first, min(16 + used, len(root)), 0)
        return out

    # ------------------------------------------------------------ data
    def _stream_map(
        self,
        ino: int,
        r: Any,
        name: str,
        kind: int = AT.DATA,
    ) -> DataMap:
        attrs = self._data_attrs(r, name, kind)

        def what() -> str:
            return self.path_of(ino) + (f":{name}" if name else "")

        if not attrs:
            return DataMap(0, [], what)
        h = attrs[0].header
        size = attrs.size()
        if h.resident:
            data = attrs[0].data()
            return DataMap(size, [Run(0, size, decode=lambda: data)], what)
        if h.flags & _ENCRYPTED:
            raise FilesError(
                what(), "is encrypted (EFS); its data cannot be read without Windows' keys", ""
            )
        runs = attrs.dataruns()
        valid = min(
            size,
            max(
                (
                    a.header.header.Form.Nonresident.ValidDataLength
                    for a in attrs
                    if not a.header.resident and a.header.lowest_vcn == 0
                ),
                default=size,
            ),
        )
        if h.flags & _COMPRESSED and h.compression_unit:
            out = self._compressed_runs(runs, h.compression_unit, size, (ino, name), what)
        else:
            out = block_runs(runs, self.cluster, size)
        if valid < size:
            out = _clip(out, valid)
        return DataMap(size, out, what)

    def _compressed_runs(
        self,
        runs: list[tuple[int | None, int]],
        unit_log: int,
        size: int,
        key: object,
        what: Callable[[], str],
    ) -> list[Run]:
        cs = self.cluster
        per = 1 << unit_log
        unit = per * cs
        # Split the run list into compression units of `per` clusters each.
        units: list[list[tuple[int | None, int]]] = [[]]
        left = per
        for lcn, count in runs:
            while count:
                take = min(count, left)
                units[-1].append((lcn, take))
                count -= take
                left -= take
                if lcn is not None:
                    lcn += take
                if left == 0:
                    units.append([])
                    left = per
        out: list[Run] = []
        part = self.partition
        for k, u in enumerate(units):
            start = k * unit
            if start >= size or not u:
                break
            stored = [(lcn, n) for lcn, n in u if lcn is not None]
            if not stored:
                continue  # a sparse unit: a hole
            for lcn, n in stored:
                check_range(part, lcn * cs, n * cs, what)
            if sum(n for _, n in stored) == per:  # stored whole: not compressed
                pos = start
                for lcn, n in stored:
                    out.append(Run(pos, n * cs, lcn * cs))
                    pos += n * cs
                continue

            def decode(stored: Any = stored, unit: Any = unit) -> bytes:
                raw = b"".join(part.read(lcn * cs, n * cs) for lcn, n in stored)
                data = lznt1.decompress(io.BytesIO(raw))
                if len(data) > unit:
                    raise ValueError("a compression unit decodes to more than its size")
                return data.ljust(unit, b"\0")  # the rest of a short unit is zeros

            out.append(Run(start, unit, decode=decode, key=(key, k)))
        return out

    def _datamap(self, ino: int, size: int) -> DataMap:
        return self._stream_map(ino, self._record(ino), "")

    # ------------------------------------------------------------ xattrs
    def _xattrs(self, ino: int) -> dict[bytes, bytes]:
        r = self._record(ino)
        out = {}
        names = sorted({a.name for a in r.attributes[AT.DATA] if a.name})
        for n in names:
            m = self._stream_map(ino, r, n)
            m.check(self.partition)
            out[b"user." + n.encode("utf-8", "surrogatepass")] = m.read(
                self.partition, 0, m.size, self._decoded
            )
        return out

    # ------------------------------------------------------------ describe
    def _describe(self) -> list[tuple[str, str]]:
        bs = self.fs.boot_sector
        total = bs.NumberSectors * self.fs.sector_size
        rows = [
            ("file system", "ntfs"),
            ("label", self.fs.volume_name or "(none)"),
            ("serial number", f"{self.fs.serial:016X}" if self.fs.serial is not None else "?"),
            ("cluster size", f"{self.cluster:,} bytes"),
            ("size", f"{total:,} bytes"),
        ]
        try:
            bitmap = self._stream_map(6, self._record(6), "")  # $Bitmap: one bit per cluster
            bitmap.check(self.partition)
            data = bitmap.read(self.partition, 0, bitmap.size)
            clusters = total // self.cluster
            used = (
                sum(bin(b).count("1") for b in data[: clusters // 8])
                + bin(data[clusters // 8] & ((1 << (clusters % 8)) - 1)).count("1")
                if clusters % 8
                else sum(bin(b).count("1") for b in data[: clusters // 8])
            )
            rows.append(("free space", f"{(clusters - used) * self.cluster:,} bytes"))
        except Exception:  # noqa: BLE001 - free space is a nicety, not a reason to fail
            pass
        return rows


def _reparse_target(rp: Any) -> bytes:
    name = rp.print_name or rp.substitute_name or ""
    if rp.relative:
        return name.replace("\\", "/").encode("utf-8", "surrogatepass")
    if name.startswith("\\??\\"):
        name = name[4:]
    if len(name) >= 2 and name[1] == ":":
        name = name[2:]  # a drive letter means nothing inside one volume's tree
    return name.replace("\\", "/").encode("utf-8", "surrogatepass")


def _clip(runs: list[Run], valid: int) -> list[Run]:
    """Runs with everything at or past ``valid`` turned into holes."""
    out = []
    for r in runs:
        if r.offset >= valid:
            continue
        if r.offset + r.length > valid and r.where is not None:
            r = Run(r.offset, valid - r.offset, r.where)
        out.append(r)
    return out
