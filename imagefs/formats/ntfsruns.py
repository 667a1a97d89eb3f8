"""The ntfsclone run list: where the stored clusters are, and its persisted form.

Built by one walk of the record stream (:func:`imagefs.formats.ntfsclone.walk_records`)
and kept in the index directory, so later opens load it instead of walking.
"""

from __future__ import annotations

import struct
import sys
from array import array
from operator import lt
from typing import Protocol

from imagefs.records import record

INDEX_MAGIC = b"NCRUNS\x00\x01"
INDEX_HEAD = struct.Struct("<8sIQqQQQ")    # magic, cs, device, nr, runs, stored, end


class _Geometry(Protocol):
    """What a run list is checked against: the header's geometry."""

    block_size: int
    device_size: int
    nr_clusters: int
    data_start: int


@record
class RunList:
    """Where the stored clusters are: maximal runs of NEXT records."""

    firsts: array          # first cluster of each run ('q')
    counts: array          # clusters in each run ('q')
    offsets: array         # stream offset of the run's first NEXT byte ('q')
    stored: int            # NEXT records in total
    end: int               # stream offset after the last complete record
    known_clusters: int    # clusters whose state the walk established
    truncated: bool        # the stream ended before the last record

    def to_bytes(self, h: _Geometry) -> bytes:
        arrays = [self.firsts, self.counts, self.offsets]
        if sys.byteorder != "little":
            arrays = [array("q", a) for a in arrays]
            for a in arrays:
                a.byteswap()
        head = INDEX_HEAD.pack(INDEX_MAGIC, h.block_size, h.device_size, h.nr_clusters,
                                len(self.firsts), self.stored, self.end)
        return head + b"".join(a.tobytes() for a in arrays)

    @classmethod
    def from_bytes(cls, payload: bytes | memoryview, h: _Geometry,
                   source_size: int | None) -> RunList:
        """Parse and sanity-check a persisted run list (ValueError if unusable)."""
        magic, cs, device, nr, nruns, stored, end = INDEX_HEAD.unpack_from(payload)
        if magic != INDEX_MAGIC or (cs, device, nr) != (h.block_size, h.device_size,
                                                          h.nr_clusters):
            raise ValueError("index belongs to another header")
        if len(payload) != INDEX_HEAD.size + 24 * nruns or (
                source_size is not None and end > source_size):
            raise ValueError("index has the wrong length")
        arrays = []
        for i in range(3):
            a = array("q")
            start = INDEX_HEAD.size + 8 * nruns * i
            a.frombytes(payload[start:start + 8 * nruns])
            if sys.byteorder != "little":
                a.byteswap()
            arrays.append(a)
        firsts, counts, offsets = arrays
        # Bounds and order, checked with C-level iteration (builtins and map
        # over the arrays): a run list of a million runs loads in ~0.2 s.
        # The container's CRC already rules out damage; this rules out an
        # index from a buggy or foreign writer.
        if nruns and (min(counts) <= 0 or sum(counts) != stored or firsts[0] < 0
                      or offsets[0] < h.data_start
                      or firsts[-1] + counts[-1] > -(-device // cs)):
            raise ValueError("index run counts or bounds are inconsistent")
        if not (all(map(lt, firsts, firsts[1:])) and all(map(lt, offsets, offsets[1:]))):
            raise ValueError("index runs are not in order")
        return cls(firsts, counts, offsets, stored, end, -(-device // cs), False)
