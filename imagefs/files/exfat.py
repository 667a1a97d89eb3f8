"""exFAT: a small reader of its own (Microsoft's published specification).

dissect.fat has an exFAT class, but it parses the whole directory tree when
it opens (every directory of the volume, before the first ``ls``) and reads
only the first cluster of a contiguous (NoFatChain) directory, so listings
of directories over one cluster come out short.  exFAT is small enough to
read directly: a boot sector, a FAT of 32-bit entries, directory entry sets
(file, stream extension, names) with a checksum.

Shown as exfat-fuse shows it by default: mode 0777 (0555 for read-only
files), owner 0:0, nlink 1, sizes from the stream extension; bytes past the
valid data length read as zeros; times in UTC using the stored UTC offset
(10 ms precision, which the kernel's exfat driver keeps; exfat-fuse rounds
to seconds).  Inode ids are the entry set's byte offset divided by 32.
"""

from __future__ import annotations

import calendar
import stat as st
import struct
from functools import partial

from imagefs.files.datamap import DataMap, Run
from imagefs.files.errors import FilesError, FilesUnavailable
from imagefs.files.filestat import FileStat
from imagefs.files.partition import Partition
from imagefs.files.tree import LRU, STAT_ENTRIES, FileTree

ROOT = 1
_EOC = 0xFFFFFFFF
_BAD = 0xFFFFFFF7
_ATTR_RO, _ATTR_DIR = 0x01, 0x10
_FILE, _STREAM, _NAME, _LABEL, _BITMAP = 0x85, 0xC0, 0xC1, 0x83, 0x81


def _ts(stamp: int, centis: int, utc: int) -> int:
    sec = (stamp & 0x1F) * 2
    minute, hour = (stamp >> 5) & 0x3F, (stamp >> 11) & 0x1F
    day, month, year = (stamp >> 16) & 0x1F, (stamp >> 21) & 0xF, 1980 + (stamp >> 25)
    try:
        t = calendar.timegm((year, max(1, month), max(1, day), hour, minute, sec, 0, 0, 0))
    except (ValueError, OverflowError):
        t = 315_532_800
    if utc & 0x80:  # offset valid: 7-bit signed 15-minute steps
        off = utc & 0x7F
        off = off - 0x80 if off & 0x40 else off
        t -= off * 15 * 60
    return t * 1_000_000_000 + min(centis, 199) * 10_000_000


def _checksum(entries: bytes) -> int:
    c = 0
    for i, b in enumerate(entries):
        if i in (2, 3):
            continue
        c = (((c << 15) | (c >> 1)) + b) & 0xFFFF
    return c


class ExfatTree(FileTree):
    """An exFAT volume."""

    fs_name = "exfat"

    def __init__(self, partition: Partition, name: str) -> None:
        super().__init__(partition, name)
        boot = partition.read(0, 512)
        if boot[3:11] != b"EXFAT   ":
            raise FilesUnavailable("the exFAT boot sector is damaged (no EXFAT signature)")
        (
            self.volume_sectors,
            fat_off,
            fat_len,
            heap_off,
            self.clusters,
            self.root_cluster,
            self.serial,
            _rev,
            _flags,
            bps_shift,
            spc_shift,
            nfats,
        ) = struct.unpack_from("<QIIIIIIHHBBB", boot, 72)
        if not 9 <= bps_shift <= 12 or bps_shift + spc_shift > 25 or nfats not in (1, 2):
            raise FilesUnavailable(
                f"the exFAT boot sector is damaged (sector shift {bps_shift}, "
                f"cluster shift {spc_shift}, {nfats} FATs)"
            )
        self.sector = 1 << bps_shift
        self.cluster = self.sector << spc_shift
        self.fat_start = fat_off * self.sector
        self.heap = heap_off * self.sector
        if self.heap + self.clusters * self.cluster > partition.size + self.cluster:
            raise FilesUnavailable(
                "the exFAT boot sector is damaged (its cluster heap is larger than the partition)"
            )
        self.root = ROOT
        self._label = ""
        self._bitmap: tuple[int, int] | None = None
        self._sets: LRU[int, bytes] = LRU(STAT_ENTRIES)  # ino -> raw entry set, from listings
        self.listdir(ROOT)

    # ------------------------------------------------------------ clusters
    def _next(self, c: int) -> int:
        raw = self.partition.read(self.fat_start + 4 * c, 4)
        if len(raw) != 4:
            raise FilesError(self.name, f"the FAT entry of cluster {c} lies past the partition")
        return struct.unpack("<I", raw)[0]

    def _runs(self, ino: int, first: int, length: int, contiguous: bool) -> list[Run]:
        """Byte runs of ``length`` bytes from cluster ``first`` (FAT chain or contiguous)."""
        if first == 0 or length == 0:
            return []
        need = -(-length // self.cluster)
        if not 2 <= first < self.clusters + 2:
            raise FilesError(
                self.path_of(ino), f"its data starts at cluster {first}, outside the volume"
            )
        if contiguous:
            if first + need > self.clusters + 2:
                raise FilesError(self.path_of(ino), "its data runs past the last cluster")
            return [Run(0, need * self.cluster, self.heap + (first - 2) * self.cluster)]
        runs: list[Run] = []
        c = first
        pos = 0
        for _ in range(need):
            if not 2 <= c < self.clusters + 2:
                raise FilesError(
                    self.path_of(ino),
                    f"its cluster chain points at cluster {c:#x}, outside the volume",
                )
            where = self.heap + (c - 2) * self.cluster
            if runs and runs[-1].where is not None and runs[-1].where + runs[-1].length == where:
                last = runs.pop()
                runs.append(Run(last.offset, last.length + self.cluster, last.where))
            else:
                runs.append(Run(pos, self.cluster, where))
            pos += self.cluster
            c = self._next(c)
            if c in (_EOC, _BAD) and pos < length:
                raise FilesError(
                    self.path_of(ino), f"its cluster chain ends after {pos:,} of {length:,} bytes"
                )
        return runs

    def _chain_length(self, first: int) -> int:
        n = 0
        c = first
        while 2 <= c < self.clusters + 2 and n <= self.clusters:
            n += 1
            c = self._next(c)
        if c != _EOC:
            raise FilesError(
                self.name, f"the root directory's cluster chain is broken at cluster {c:#x}"
            )
        return n * self.cluster

    # ------------------------------------------------------------ entries
    def _set(self, ino: int) -> tuple[bytes, bytes, str]:
        """The file entry, the stream extension and the name of the set at ``ino * 32``."""
        raw = self._sets.get(ino)
        if raw is None:
            head = self.partition.read(ino * 32, 32)
            if len(head) < 32 or head[0] != _FILE:
                raise FilesError(self.path_of(ino), "its directory entry is gone (a stale inode)")
            length = 32 * (head[1] + 1)
            if (ino * 32 - self.heap) % self.cluster + length <= self.cluster:
                raw = self.partition.read(ino * 32, length)
            else:
                # The set crosses into the directory's next cluster, which need
                # not follow on disk: read it through the parent directory.
                parent = self.parent_of(ino)
                if parent is not None:
                    self._listdir(parent[0])
                raw = self._sets.get(ino)
                if raw is None:
                    raise FilesError(
                        self.path_of(ino), "its directory entry set cannot be found again"
                    )
        return self._decode_set(ino, raw)

    def _decode_set(self, ino: int, raw: bytes) -> tuple[bytes, bytes, str]:
        count = raw[1]
        if count < 2 or len(raw) < 32 * (count + 1):
            raise FilesError(
                self.path_of(ino), f"its directory entry set is damaged ({count} secondaries)"
            )
        if _checksum(raw[: 32 * (count + 1)]) != struct.unpack_from("<H", raw, 2)[0]:
            raise FilesError(self.path_of(ino), "its directory entry set fails its checksum")
        stream = raw[32:64]
        name_len = stream[3]
        units = b"".join(
            raw[32 * k + 2 : 32 * k + 32] for k in range(2, count + 1) if raw[32 * k] == _NAME
        )
        name = units[: 2 * name_len].decode("utf-16-le", "surrogatepass")
        return raw[:32], stream, name

    def _listdir(self, ino: int) -> list[tuple[bytes, int]]:
        if ino == ROOT:
            runs = self._runs(ino, self.root_cluster, self._chain_length(self.root_cluster), False)
        else:
            _f, s, _n = self._set(ino)
            runs = self._stream_runs(ino, s)
        size = sum(r.length for r in runs)
        m = DataMap(size, runs, partial(self.path_of, ino))
        m.check(self.partition)
        data = m.read(self.partition, 0, size)
        out = []
        pos = 0
        while pos + 32 <= len(data):
            t = data[pos]
            if t == 0:
                break
            if t == _FILE:
                count = data[pos + 1]
                where = _where(runs, pos)
                raw = data[pos : pos + 32 * (count + 1)]
                _f, _s, name = self._decode_set(where // 32, raw)
                self._sets.put(where // 32, raw)
                try:
                    out.append((name.encode("utf-8"), where // 32))
                except UnicodeEncodeError:
                    pass  # an unpaired surrogate cannot be shown in UTF-8
                pos += 32 * (count + 1)
                continue
            if ino == ROOT and t == _LABEL:
                n = min(data[pos + 1], 11)
                self._label = data[pos + 2 : pos + 2 + 2 * n].decode("utf-16-le", "replace")
            elif ino == ROOT and t == _BITMAP:
                self._bitmap = struct.unpack_from("<IQ", data, pos + 20)
            pos += 32
        return out

    def _stream_runs(self, ino: int, stream: bytes) -> list[Run]:
        first, length = struct.unpack_from("<IQ", stream, 20)
        return self._runs(ino, first, length, bool(stream[1] & 0x2))  # bit 1: NoFatChain

    # ------------------------------------------------------------ inodes
    def _stat(self, ino: int) -> FileStat:
        if ino == ROOT:
            size = self._chain_length(self.root_cluster)
            t = 315_532_800 * 1_000_000_000
            return FileStat(st.S_IFDIR | 0o777, ino, 1, 0, 0, size, size // 512, t, t, t)
        f, s, _name = self._set(ino)
        attr = struct.unpack_from("<H", f, 4)[0]
        _create, mtime, atime = struct.unpack_from("<III", f, 8)
        m_cs, m_utc, a_utc = f[21], f[23], f[24]
        length = struct.unpack_from("<Q", s, 24)[0]
        m = _ts(mtime, m_cs, m_utc)
        a = _ts(atime, 0, a_utc)
        alloc = -(-length // self.cluster) * self.cluster
        if attr & _ATTR_DIR:
            return FileStat(st.S_IFDIR | 0o777, ino, 1, 0, 0, length, alloc // 512, a, m, m)
        mode = st.S_IFREG | (0o555 if attr & _ATTR_RO else 0o777)
        return FileStat(mode, ino, 1, 0, 0, length, alloc // 512, a, m, m)

    def _datamap(self, ino: int, size: int) -> DataMap:
        _f, s, _n = self._set(ino)
        valid = struct.unpack_from("<Q", s, 8)[0]
        runs = self._stream_runs(ino, s)
        if valid < size:  # past the valid data length: zeros, whatever is stored
            runs = [
                r if r.offset + r.length <= valid else Run(r.offset, valid - r.offset, r.where)
                for r in runs
                if r.offset < valid
            ]
        return DataMap(size, runs, partial(self.path_of, ino))

    def _readlink(self, ino: int) -> bytes:
        raise FilesError(self.path_of(ino), "exFAT has no symbolic links", "")

    def _describe(self) -> list[tuple[str, str]]:
        rows = [
            ("file system", "exfat"),
            ("label", self._label or "(none)"),
            ("serial number", f"{self.serial:08X}"),
            ("cluster size", f"{self.cluster:,} bytes"),
            ("size", f"{self.volume_sectors * self.sector:,} bytes"),
        ]
        if self._bitmap is not None:
            first, length = self._bitmap
            runs = self._runs(self.root, first, length, False)
            m = DataMap(length, runs, f"{self.name}:<allocation bitmap>")
            m.check(self.partition)
            bits = int.from_bytes(m.read(self.partition, 0, length), "little")
            used = bin(bits & ((1 << self.clusters) - 1)).count("1")
            rows.append(("free space", f"{(self.clusters - used) * self.cluster:,} bytes"))
        return rows


def _where(runs: list[Run], off: int) -> int:
    for r in runs:
        if r.offset <= off < r.offset + r.length:
            return (r.where or 0) + off - r.offset
    raise AssertionError(off)
