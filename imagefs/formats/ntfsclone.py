"""ntfsclone special images (``ntfsclone --save-image``), docs/formats.md section 3.

Layout: a header (56 bytes for versions 10.x, 46 for the pre-10 images that
used the NTFS version as image version), then a record stream.  A cursor
starts at cluster 0; a ``0x01`` (NEXT) record is followed by the data of the
cursor's cluster, a ``0x00`` (GAP) record by an s64 count of clusters to skip.

No index exists in the file: the position of cluster *c* depends on every
record before it.  Opening therefore walks the whole stream once and keeps a
*run list* — one ``(first_cluster, count, stream_offset)`` triple per maximal
run of NEXT records (inside a run the stride is ``cluster_size + 1``) — and
persists it in the index directory, so later opens load it instantly.
"""

from __future__ import annotations

import logging
import struct
from array import array
from bisect import bisect_right
from typing import Literal

from imagefs.errors import (
    CORRUPT_HINT,
    TRUNCATED_HINT,
    FormatError,
    TruncatedError,
    UnsupportedError,
)
from imagefs.formats.base import BlockImage, ImageHeader, Progress
from imagefs.formats.layout import GroupedLayout
from imagefs.formats.magics import NTFSCLONE_MAGIC
from imagefs.formats.ntfsruns import INDEX_HEAD, RunList
from imagefs.io.source import ByteSource
from imagefs.records import record
from imagefs.services.indexstore import IndexStore, PersistedIndex
from imagefs.services.progress import progress_bar

log = logging.getLogger(__name__)

MAGIC = NTFSCLONE_MAGIC
HEADER_V10 = struct.Struct("<16sBBIQqQI")   # 50 bytes; ntfsclone pads to 56
HEADER_OLD_SIZE = 46                        # pre-10: no offset field
CMD_GAP, CMD_NEXT = 0x00, 0x01
GAP_RECORD = 9                              # command byte + s64 count

MIN_CLUSTER, MAX_CLUSTER = 256, 2 << 20     # NTFS allows 256 B .. 2 MiB clusters
MAX_DEVICE = 1 << 60                        # 1 EiB: anything larger is a corrupt header
MAX_HEADER_OFFSET = 1 << 20                 # future headers may grow, not by megabytes

#: The walk reads the stream in chunks of this size: big enough that one
#: pread amortises its syscall, small enough to stay in the CPU caches' reach.
SCAN_CHUNK = 4 << 20

INDEX_KIND = "ntfsclone"
_INDEX_HEAD = INDEX_HEAD          # the persisted run list's header (tests craft bad ones)

#: How many full stream walks this process did (tests check that a second
#: open loads the persisted index instead of walking again).
walk_count = 0

_CHECKSUM_TEXT = "none in the format (verify checks the record structure and length)"



def probe(source: ByteSource, volumes: object = None) -> NtfscloneHeader:
    """Parse and validate the header only (cheap); :meth:`NtfscloneHeader.open` walks.

    ``volumes`` is unused (ntfsclone images are never partimage volume sets).
    """
    return NtfscloneHeader.parse(source)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# --------------------------------------------------------------------------- header

@record(eq=False)
class NtfscloneHeader(ImageHeader):
    major: int = 10
    minor: int = 1
    nr_clusters: int = 0
    inuse: int = 0
    data_start: int = 56
    endian: str = "<"

    @classmethod
    def parse(cls, source: ByteSource) -> NtfscloneHeader:
        name = source.name
        head = source.read_at(0, HEADER_V10.size)
        if len(head) < 18 or not head.startswith(MAGIC):
            raise TruncatedError(name, "ntfsclone header is truncated", TRUNCATED_HINT)
        major, minor = head[16], head[17]
        if major > 10:
            raise UnsupportedError(name, f"ntfsclone image version {major}.{minor} is newer "
                                   "than any known (10.1)",
                                   "restore it with the ntfsclone that wrote it")
        if major == 10:
            if len(head) < HEADER_V10.size:
                raise TruncatedError(name, f"ntfsclone header is truncated ({len(head)} of "
                                     f"{HEADER_V10.size} bytes)", TRUNCATED_HINT)
            _, _, _, cs, device, nr, inuse, data_start = HEADER_V10.unpack(head)
            endian = "<"
            if not HEADER_V10.size <= data_start <= MAX_HEADER_OFFSET:
                raise FormatError(name, f"ntfsclone header gives the record stream offset "
                                  f"{data_start}, which is impossible", CORRUPT_HINT)
        else:
            # Pre-10 images: 46 bytes in the writer's native byte order and
            # records right after.  Tell the order by which reading gives a
            # consistent header (a cluster size alone is ambiguous: 512
            # big-endian reads as 131072 little-endian).
            if len(head) < HEADER_OLD_SIZE:
                raise TruncatedError(name, "ntfsclone header is truncated", TRUNCATED_HINT)
            endian = "<"
            for e in ("<", ">"):
                c, d, n, _ = struct.unpack_from(e + "IQqQ", head, 18)
                if _is_pow2(c) and MIN_CLUSTER <= c <= MAX_CLUSTER and 0 < d <= MAX_DEVICE \
                        and 0 <= n and n * c <= d:
                    endian = e
                    break
            cs, device, nr, inuse = struct.unpack_from(endian + "IQqQ", head, 18)
            data_start = HEADER_OLD_SIZE
        if not (_is_pow2(cs) and MIN_CLUSTER <= cs <= MAX_CLUSTER):
            raise FormatError(name, f"ntfsclone cluster size {cs} is impossible", CORRUPT_HINT)
        if not 0 < device <= MAX_DEVICE:
            raise FormatError(name, f"ntfsclone device size {device} is absurd", CORRUPT_HINT)
        if nr < 0 or nr * cs > device:
            raise FormatError(name, f"{nr} clusters of {cs} bytes do not fit the device "
                              f"size {device}", CORRUPT_HINT)
        if inuse > nr + 1:
            raise FormatError(name, f"ntfsclone header claims {inuse} clusters in use of "
                              f"{nr}", CORRUPT_HINT)
        size = source.cheap_size()
        if size is not None and size < data_start:
            raise TruncatedError(name, f"ntfsclone header is truncated ({size} of "
                                 f"{data_start} bytes)", TRUNCATED_HINT)
        header = cls(source=source, format_name="ntfsclone", format_version=f"{major}.{minor}",
                     fs_type="NTFS", device_size=device, block_size=cs,
                     total_blocks=-(-device // cs), used_blocks=inuse,
                     checksum=_CHECKSUM_TEXT, major=major, minor=minor, nr_clusters=nr,
                     inuse=inuse, data_start=data_start, endian=endian)
        if major == 10 and minor > 1:
            header.add_note(f"image version 10.{minor} is newer than 10.1; read as 10.1 "
                                "with the records at the offset its header gives")
        return header

    def fields(self) -> list[tuple[str, str]]:
        fields = [
            ("written by", "ntfsclone --save-image"),
            ("cluster size", f"{self.block_size} bytes"),
            ("NTFS clusters", str(self.nr_clusters)),
            ("clusters in use (header)", str(self.inuse)),
            ("record stream", f"from byte {self.data_start}"),
            ("backup boot sector", "saved (record after the last NTFS cluster)"
             if (self.major, self.minor) >= (10, 1) else "not saved by this version"),
        ]
        if self.major < 10:
            fields.append(("byte order", "little-endian" if self.endian == "<"
                           else "big-endian"))
        return fields

    def open(self, index_store: IndexStore | None = None,
             progress: Progress | None = None) -> NtfscloneImage:
        return NtfscloneImage(self, index_store, progress)


# --------------------------------------------------------------------------- walk

def walk_records(h: NtfscloneHeader, progress: Progress | None = None) -> RunList:
    """Walk the record stream once and return its run list.

    Runs of NEXT records are counted with C-level bytes operations: the
    command bytes of consecutive NEXT records sit ``cluster_size + 1`` apart,
    so ``buf[i::stride]`` collects them and ``lstrip(b"\\x01")`` finds where
    the run ends.  Python code runs once per run and per GAP record, not per
    cluster.  Raises FormatError at the first impossible record; a stream
    that ends early gives a run list marked ``truncated``.
    """
    global walk_count
    walk_count += 1
    src = h.source
    name = src.name
    cs = h.block_size
    stride = cs + 1
    device = h.device_size
    nr = h.nr_clusters
    size = src.size
    device_clusters = -(-device // cs)
    full_clusters = device // cs              # clusters whose record is a whole cluster
    last = min(nr, device_clusters - 1)       # the walk stops after this cluster
    gap_order: Literal["little", "big"] = "little" if h.endian == "<" else "big"
    firsts, counts, offsets = array("q"), array("q"), array("q")

    pos = 0                  # current cluster
    off = h.data_start       # stream offset of the next record
    run_first = -1           # first cluster of the open run of NEXT records (-1: none)
    run_off = 0              # its stream offset
    full_end = min(last + 1, full_clusters)   # whole-cluster NEXT records stop here
    buf = b""
    blen = 0
    base = off               # buf holds stream bytes [base, base + blen)
    reported = off
    while pos <= last:
        i = off - base
        if i + GAP_RECORD > blen:
            if off >= size:
                break
            if i >= blen or base + blen < size:
                buf = src.read_at(off, SCAN_CHUNK)
                blen = len(buf)
                base = off
                i = 0
                if progress:
                    progress(off - reported)
                    reported = off
        cmd = buf[i]
        if cmd == CMD_NEXT:
            if run_first < 0:
                run_first, run_off = pos, off
            if pos < full_end:
                j = i + stride
                if j < blen and buf[j] != CMD_NEXT:
                    n = 1            # a lone cluster: fragmented volumes are full of them
                else:
                    cmds = buf[i:i + (full_end - pos) * stride:stride]
                    n = len(cmds) - len(cmds.lstrip(b"\x01"))   # >= 1: cmds[0] is NEXT
                pos += n
                off += n * stride
            else:
                # pos == full_clusters < device_clusters (the loop bound keeps
                # pos below device_clusters): the partial record of the device
                # tail, which holds the backup boot sector.
                step = 1 + device - pos * cs
                if off + step > size:
                    break
                pos += 1
                off += step
        elif cmd == CMD_GAP:
            if i + GAP_RECORD > blen:               # the stream ends inside the record
                break
            count = int.from_bytes(buf[i + 1:i + GAP_RECORD], gap_order, signed=True)
            if count <= 0:
                raise FormatError(name, f"GAP record at image byte {off} (cluster {pos}) "
                                  f"has count {count}; it must be positive", CORRUPT_HINT)
            if pos + count > device_clusters:
                raise FormatError(name, f"GAP record at image byte {off} skips to cluster "
                                  f"{pos + count}, beyond the device's {device_clusters}",
                                  CORRUPT_HINT)
            if run_first >= 0:
                firsts.append(run_first)
                counts.append(pos - run_first)
                offsets.append(run_off)
                run_first = -1
            pos += count
            off += GAP_RECORD
        else:
            raise FormatError(name, f"unknown record type {cmd:#04x} at image byte {off} "
                              f"(cluster {pos}); the record stream is damaged", CORRUPT_HINT)
    if run_first >= 0 and pos > run_first:
        firsts.append(run_first)
        counts.append(pos - run_first)
        offsets.append(run_off)
    truncated = False
    if off > size and run_first >= 0 and counts:
        # A run of NEXT records was counted past EOF: its last record's data
        # is cut off (every earlier record ends where a later command byte
        # was seen), so drop that one record.
        truncated = True
        pos -= 1
        off -= stride
        counts[-1] -= 1
        if counts[-1] == 0:
            del firsts[-1], counts[-1], offsets[-1]
    elif off > size:
        # The records start past the end of the file: nothing is stored.
        truncated = True
        off = size
    elif pos <= last and not (off == size and pos == nr):
        # EOF exactly at cluster nr is legal: version 10.0 saved no record
        # for the backup boot sector.
        truncated = True
    if progress:
        progress(max(0, off - reported))
    stored = sum(counts)
    known = pos if truncated else device_clusters
    return RunList(firsts, counts, offsets, stored, off, known, truncated)


# --------------------------------------------------------------------------- image

class NtfscloneImage(BlockImage):
    """An ntfsclone image with its run list, ready for random reads."""

    header: NtfscloneHeader

    def __init__(self, header: NtfscloneHeader, index_store: IndexStore | None = None,
                 progress: Progress | None = None) -> None:
        self.header = header
        src = header.source
        store: PersistedIndex[RunList] = PersistedIndex(
            index_store, INDEX_KIND, src.backing_files(), extra=f"data@{header.data_start}",
            name=header.path)
        runs = store.load(lambda payload, _path: RunList.from_bytes(payload, header,
                                                                    src.cheap_size()))
        self.index_origin = "loaded" if runs is not None else "built"
        if runs is None:
            runs = self._build(progress)
            if not runs.truncated:
                store.save(runs.to_bytes(header))
        self.runs = runs
        cs = header.block_size
        self._stride = cs + 1
        self._tail_len = header.device_size % cs     # partial last cluster, if any
        self._tail_cluster = header.device_size // cs if self._tail_len else -1
        if runs.truncated:
            size = src.cheap_size()
            header.mark_damaged(f"the record stream is truncated at image byte "
                                f"{size if size is not None else runs.end}: "
                                f"clusters from {runs.known_clusters} on cannot be read")
        else:
            self.check_length()
            expected = header.inuse + (1 if runs.end and self._ends_with_boot_record() else 0)
            if runs.stored != expected:
                header.add_note(f"the stream stores {runs.stored} clusters; the header "
                                f"says {header.inuse} in use")

    def check_length(self) -> None:
        size = self.header.source.cheap_size()
        if size is not None and not self.runs.truncated and self.runs.end < size:
            self.header.add_note(f"{size - self.runs.end} unexpected bytes follow the record "
                                 "stream (ignored)")

    def _ends_with_boot_record(self) -> bool:
        """True if the stream holds a record for cluster nr (the boot sector copy)."""
        nr = self.header.nr_clusters
        r = self.runs
        return bool(r.firsts) and r.firsts[-1] + r.counts[-1] - 1 == nr

    def _build(self, progress: Progress | None) -> RunList:
        if progress is not None:
            return walk_records(self.header, progress)
        with progress_bar(self.header.source.size, "indexing ntfsclone image") as update:
            return walk_records(self.header, update)

    # -- block map -------------------------------------------------------------
    @property
    def stored_blocks(self) -> int:
        return self.runs.stored

    def stats(self) -> dict[str, object]:
        r = self.runs
        return {"runs": len(r.firsts), "index": self.index_origin,
                "index memory": 24 * len(r.firsts)}

    def extents(self, first: int, count: int) -> list[tuple[int, int, bool]]:
        r = self.runs
        firsts, counts, known = r.firsts, r.counts, r.known_clusters
        nruns = len(firsts)
        end = first + count
        out: list[tuple[int, int, bool]] = []
        c = first
        idx = bisect_right(firsts, c) - 1          # last run starting at or before c
        while c < end:
            if c >= known:
                # Past a truncation: unknown, so "stored", and reading it fails.
                n, stored = end - c, True
            elif idx >= 0 and c < firsts[idx] + counts[idx]:
                n, stored = min(end, firsts[idx] + counts[idx]) - c, True
            else:
                nxt = firsts[idx + 1] if idx + 1 < nruns else known
                n, stored = min(end, nxt, known) - c, False
            if out and out[-1][2] == stored:
                out[-1] = (out[-1][0], out[-1][1] + n, stored)
            else:
                out.append((c, n, stored))
            c += n
            if idx + 1 < nruns and firsts[idx + 1] <= c:
                idx += 1
        return out

    def read_stored(self, first: int, count: int) -> bytes:
        h = self.header
        src = h.source
        cs = h.block_size
        r = self.runs
        end = first + count
        parts: list[bytes] = []
        c = first
        idx = bisect_right(r.firsts, c) - 1
        while c < end:
            rfirst, rcount, roff = self._run_holding(idx, c)
            n = min(end, rfirst + rcount) - c
            full = n - 1 if c + n - 1 == self._tail_cluster else n
            if full:
                layout = GroupedLayout(src, roff + 1, cs, 1, 1)
                parts.append(layout.read_ranks(c - rfirst, full))
            if full < n:
                at = roff + (self._tail_cluster - rfirst) * self._stride + 1
                data = src.read_at(at, self._tail_len)
                if len(data) < self._tail_len:
                    raise TruncatedError(src.name, f"record of the last cluster ends at byte "
                                         f"{at + len(data)}", TRUNCATED_HINT)
                parts.append(data + bytes(cs - self._tail_len))
            c += n
            idx += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _run_holding(self, idx: int, c: int) -> tuple[int, int, int]:
        """(first cluster, count, record offset) of run ``idx``, which must hold cluster ``c``."""
        r = self.runs
        if not 0 <= idx < len(r.firsts) or c >= r.firsts[idx] + r.counts[idx]:
            if c >= r.known_clusters:
                raise TruncatedError(self.header.source.name, f"cluster {c} lies past the end "
                                     "of the truncated record stream", TRUNCATED_HINT)
            raise ValueError(f"cluster {c} is not stored")
        return r.firsts[idx], r.counts[idx], r.offsets[idx]

    def read_stored_into(self, first: int, skip: int, dest: memoryview) -> None:
        """Scatter stored clusters into ``dest``, skipping each record's header byte.

        One ``read_into`` per run of the record stream (each cluster's
        1-byte header goes to scratch space); the partial last cluster, if
        the range reaches it, takes the copying path.
        """
        cs = self.header.block_size
        last = first + (skip + len(dest) - 1) // cs
        if 0 <= self._tail_cluster <= last:
            super().read_stored_into(first, skip, dest)
            return
        src = self.header.source
        r = self.runs
        c, within = first + skip // cs, skip % cs
        idx = bisect_right(r.firsts, c) - 1
        pos = 0
        while pos < len(dest):
            rfirst, rcount, roff = self._run_holding(idx, c)
            take = min((rfirst + rcount - c) * cs - within, len(dest) - pos)
            GroupedLayout(src, roff + 1, cs, 1, 1).read_into((c - rfirst) * cs + within,
                                                             dest[pos:pos + take])
            pos += take
            c, within = rfirst + rcount, 0
            idx += 1

    def verify(self, progress: Progress | None = None) -> None:
        """Walk the record stream again: structure, bounds and length.

        ntfsclone stores no checksums, so data bytes cannot be checked; this
        catches damaged record headers, a truncated stream, and a persisted
        index that does not describe this stream.
        """
        h = self.header
        fresh = walk_records(h, progress)
        name = h.path
        if fresh.truncated:
            raise TruncatedError(name, f"the record stream is truncated: it ends at byte "
                                 f"{h.source.size}, inside the record of cluster "
                                 f"{fresh.known_clusters}", TRUNCATED_HINT)
        mine = self.runs
        if (fresh.firsts, fresh.counts, fresh.offsets) != (mine.firsts, mine.counts,
                                                           mine.offsets):
            raise FormatError(name, "the stream does not match the index it was opened "
                              "with", "delete the index directory entry and open it again")
        expected = h.inuse + (1 if self._ends_with_boot_record() else 0)
        if fresh.stored != expected:
            raise FormatError(name, f"the stream stores {fresh.stored} clusters but the header "
                              f"says {h.inuse} are in use", CORRUPT_HINT)
