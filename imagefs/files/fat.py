"""FAT12/16/32 with long names: dissect.fat for the boot sector and the FAT,
directory entries decoded here the way Linux's vfat driver shows them.

dissect.fat validates the BPB, tells FAT12/16/32 apart and reads FAT
entries (cached).  Its directory entries lack what a mount needs: the long
name's checksum (an orphaned long name must not rename the next file), the
NT lower-case flags of short names (``readme.txt`` stored as ``README
TXT``), entry positions (our inode ids) and a guard against cluster-chain
loops; those 120 lines are here.

Shown as Linux vfat with its defaults shows it: names in UTF-8 (long names
from UTF-16, short names from code page 437), mode 0755 (0555 for files
with the read-only attribute), owner 0:0, times as UTC with the FAT's
2-second precision, ctime = mtime, directories' size = their clusters,
nlink 1 for directories.  Inode ids are the byte offset of the entry in the
partition divided by 32 (the root is 1).
"""

from __future__ import annotations

import calendar
import stat as st
import struct
from functools import partial
from typing import Any

from dissect.fat.fat import FATFS

from imagefs.files.datamap import DataMap, Run
from imagefs.files.errors import FilesError, FilesUnavailable
from imagefs.files.filestat import FileStat
from imagefs.files.partition import Partition, PartitionFile
from imagefs.files.tree import FileTree

ROOT = 1
_ATTR_RO, _ATTR_VOLUME, _ATTR_DIR, _ATTR_LFN = 0x01, 0x08, 0x10, 0x0F
_NT_LOWER_BASE, _NT_LOWER_EXT = 0x08, 0x10
_ENTRY = struct.Struct("<11sBBBHHHHHHHI")


def dos_time_ns(date: int, time: int = 0, centis: int = 0) -> int:
    """A FAT date/time (local time; taken as UTC, as Linux does with tz unset) in ns."""
    if date == 0:
        return 315_532_800 * 1_000_000_000  # 1980-01-01, what Linux shows for "no date"
    year, month, day = 1980 + (date >> 9), (date >> 5) & 0xF, date & 0x1F
    hour, minute, sec = time >> 11, (time >> 5) & 0x3F, (time & 0x1F) * 2
    try:
        t = calendar.timegm((year, max(1, month), max(1, day), hour, minute, sec, 0, 0, 0))
    except (ValueError, OverflowError):
        t = 315_532_800
    return t * 1_000_000_000 + centis * 10_000_000


def short_name(raw: bytes, nt: int) -> bytes:
    """The 8.3 name as Linux shows it: cp437, blanks trimmed, NT lower-case flags applied."""
    base = bytearray(raw[:8])
    if base[0] == 0x05:
        base[0] = 0xE5  # 0x05 stands for a leading 0xE5
    b = bytes(base).rstrip(b" ").decode("cp437")
    e = raw[8:11].rstrip(b" ").decode("cp437")
    if nt & _NT_LOWER_BASE:
        b = b.lower()
    if nt & _NT_LOWER_EXT:
        e = e.lower()
    return (f"{b}.{e}" if e else b).encode("utf-8")


def lfn_checksum(raw: bytes) -> int:
    s = 0
    for c in raw[:11]:
        s = (((s & 1) << 7) + (s >> 1) + c) & 0xFF
    return s


class FatTree(FileTree):
    """A FAT12, FAT16 or FAT32 file system."""

    def __init__(self, partition: Partition, name: str) -> None:
        super().__init__(partition, name)
        try:
            self.fs = FATFS(PartitionFile(partition, name))
        except Exception as exc:  # noqa: BLE001 - the parser raises anything on damage
            raise FilesUnavailable(
                f"the FAT boot sector is damaged ({' '.join(str(exc).split())})"
            ) from None
        fs = self.fs
        self.fs_name = str(fs.type.name).lower() if hasattr(fs.type, "name") else "fat"
        self.cluster = fs.cluster_size
        self.data_start = fs.first_data_sector * fs.sector_size
        self.clusters = (fs.total_sectors - fs.first_data_sector) // fs.bpb.BPB_SecPerClus
        self._eoc = {"fat12": 0xFF8, "fat16": 0xFFF8}.get(self.fs_name, 0x0FFFFFF8)
        self.root = ROOT
        self._label: str | None = None
        self.listdir(ROOT)  # the root must be readable; it also holds the label

    # ------------------------------------------------------------ clusters
    def _chain(self, ino: int, first: int) -> list[tuple[int, int]]:
        """Runs ``(cluster, count)`` of a cluster chain; loops and bad links are damage."""
        runs: list[tuple[int, int]] = []
        c = first
        for _ in range(self.clusters + 1):
            if not 2 <= c < self.clusters + 2:
                raise FilesError(
                    self.path_of(ino),
                    f"its cluster chain points at cluster {c}, outside "
                    f"the file system (2..{self.clusters + 1})",
                )
            if runs and runs[-1][0] + runs[-1][1] == c:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((c, 1))
            nxt = self.fs.fat.get(c)
            if nxt >= self._eoc:
                return runs
            if nxt in (0, 1) or nxt == self._eoc - 1:
                raise FilesError(
                    self.path_of(ino),
                    f"its cluster chain is broken at cluster {c} "
                    f"(the FAT entry is {'free' if nxt == 0 else 'bad'})",
                )
            c = nxt
        raise FilesError(self.path_of(ino), "its cluster chain loops")

    def _runs(self, ino: int, first: int, size: int | None) -> tuple[list[Run], int]:
        """Byte runs of a chain from cluster ``first``, and the chain's length in bytes."""
        if first == 0:
            return [], 0
        out = []
        pos = 0
        for c, n in self._chain(ino, first):
            out.append(Run(pos, n * self.cluster, self.data_start + (c - 2) * self.cluster))
            pos += n * self.cluster
        if size is not None and pos < size:
            raise FilesError(
                self.path_of(ino),
                f"its cluster chain holds {pos:,} bytes but the file is {size:,} bytes",
            )
        return out, pos

    def _first(self, ino: int) -> int:
        return self.fs.bpb_ext.BPB_RootClus if ino == ROOT else _first_cluster(self._entry(ino))

    def _dir_bytes(self, ino: int) -> tuple[bytes, list[Run]]:
        """The raw directory and where its pieces lie in the partition (for inode ids)."""
        if ino == ROOT and self.fs_name != "fat32":
            b = self.fs.bpb
            start = (b.BPB_RsvdSecCnt + b.BPB_NumFATs * self.fs.fat_size) * self.fs.sector_size
            size = b.BPB_RootEntCnt * 32
            return self.partition.read(start, size), [Run(0, size, start)]
        runs, total = self._runs(ino, self._first(ino), None)
        m = DataMap(total, runs, partial(self.path_of, ino))
        m.check(self.partition)
        return m.read(self.partition, 0, total), runs

    def _entry(self, ino: int) -> bytes:
        # Read again each time (the stat cache above keeps the hot ones): a
        # table of every entry seen would grow with the tree.
        e = self.partition.read(ino * 32, 32)
        if len(e) != 32 or e[0] in (0, 0xE5) or e[11] & _ATTR_VOLUME:
            raise FilesError(self.path_of(ino), "its directory entry is gone (a stale inode)")
        return e

    # ------------------------------------------------------------ directories
    def _listdir(self, ino: int) -> list[tuple[bytes, int]]:
        data, runs = self._dir_bytes(ino)

        def where(off: int) -> int:
            for r in runs:
                if r.offset <= off < r.offset + r.length:
                    return (r.where or 0) + off - r.offset
            raise FilesError(self.path_of(ino), "a directory entry lies outside the directory")

        return self._parse(ino, data, where)

    def _parse(self, ino: int, data: bytes, where: Any) -> list[tuple[bytes, int]]:
        out = []
        lfn: list[tuple[int, bytes]] = []
        lfn_sum = -1
        for off in range(0, len(data) - 31, 32):
            e = data[off : off + 32]
            if e[0] == 0:
                break
            if e[0] == 0xE5:
                lfn = []
                continue
            attr = e[11]
            if attr & 0x3F == _ATTR_LFN:
                seq = e[0]
                if seq & 0x40:
                    lfn = []
                    lfn_sum = e[13]
                elif not lfn or e[13] != lfn_sum:
                    lfn = []
                    continue
                lfn.append((seq & 0x1F, e[1:11] + e[14:26] + e[28:32]))
                continue
            if attr & _ATTR_VOLUME:
                if ino == ROOT and self._label is None:
                    self._label = e[:11].rstrip(b" ").decode("cp437")
                lfn = []
                continue
            name = None
            if (
                lfn
                and lfn_sum == lfn_checksum(e)
                and [s for s, _ in lfn] == list(range(len(lfn), 0, -1))
            ):
                units = b"".join(part for _, part in reversed(lfn))
                text = units.decode("utf-16-le", "surrogatepass")
                text = text.split("\x00", 1)[0]
                try:
                    name = text.encode("utf-8")
                except UnicodeEncodeError:
                    name = None
            lfn = []
            if name is None:
                name = short_name(e[:11], e[12])
            if name in (b".", b".."):
                continue
            child = where(off) // 32
            out.append((name, child))
        return out

    # ------------------------------------------------------------ inodes
    def _stat(self, ino: int) -> FileStat:
        if ino == ROOT:
            size = 0
            if self.fs_name == "fat32":
                size = self._runs(ino, self._first(ino), None)[1]
            else:
                size = self.fs.bpb.BPB_RootEntCnt * 32
            t = dos_time_ns(0)
            return FileStat(st.S_IFDIR | 0o755, ino, 1, 0, 0, size, size // 512, t, t, t)
        e = self._entry(ino)
        (_nm, attr, _nt, centis, ctime, cdate, adate, _hi, mtime, mdate, _lo, fsize) = (
            _ENTRY.unpack(e)
        )
        m = dos_time_ns(mdate, mtime)
        a = dos_time_ns(adate)
        if attr & _ATTR_DIR:
            size = self._runs(ino, _first_cluster(e), None)[1]
            return FileStat(st.S_IFDIR | 0o755, ino, 1, 0, 0, size, size // 512, a, m, m)
        mode = st.S_IFREG | (0o555 if attr & _ATTR_RO else 0o755)
        alloc = -(-fsize // self.cluster) * self.cluster
        return FileStat(mode, ino, 1, 0, 0, fsize, alloc // 512, a, m, m)

    def _datamap(self, ino: int, size: int) -> DataMap:
        runs, _ = self._runs(ino, _first_cluster(self._entry(ino)), size)
        return DataMap(size, runs, partial(self.path_of, ino))

    def _readlink(self, ino: int) -> bytes:
        raise FilesError(self.path_of(ino), "FAT has no symbolic links", "")

    def _describe(self) -> list[tuple[str, str]]:
        fs = self.fs
        label = self._label or fs.volume_label or "(none)"
        free = (
            sum(1 for c in range(2, min(self.clusters + 2, 2 + 200_000)) if fs.fat.get(c) == 0)
            if self.clusters <= 200_000
            else None
        )
        rows = [
            ("file system", self.fs_name),
            ("label", label),
            ("volume ID", fs.volume_id.upper()),
            ("cluster size", f"{self.cluster:,} bytes"),
            ("size", f"{fs.total_sectors * fs.sector_size:,} bytes"),
        ]
        if free is not None:
            rows.append(("free space", f"{free * self.cluster:,} bytes"))
        return rows


def _first_cluster(e: bytes) -> int:
    hi, lo = struct.unpack_from("<H", e, 20)[0], struct.unpack_from("<H", e, 26)[0]
    return (hi << 16) | lo
