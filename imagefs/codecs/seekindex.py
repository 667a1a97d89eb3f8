"""The seek index of a compressed stream and its on-disk payload.

A compressed stream is served as a list of *spans*: consecutive ranges of
the decompressed output, each of which a codec can decode on its own from a
restart point (a zstd frame or resume point, a gzip checkpoint, an lz4/lzop
block group, an xz block, an lzip member).  ``starts[i]`` is the first
decompressed byte of span ``i``; ``starts[-1]`` is the total size.

The payload is ``IFCX`` + u32 length + a JSON head (sizes, span table,
codec metadata) + the binary blobs (window snapshots, a library's exported
index) + the piece sums (u64 each).

*Piece sums* are XXH3-64 hashes of every decoded piece (``SUB_CHUNK`` bytes
of a span, the last one shorter) taken by the index pass, which itself was
checked by the codec's own checksums (zstd/lz4 content checksum, gzip
CRC-32).  Every later decode of a piece is compared with its sum before it
is served, so a stream changed or damaged after indexing, or a zstd resume
point that does not reproduce the stream, is an error and never wrong
bytes.  It is persisted through
:class:`~imagefs.services.indexstore.PersistedIndex`, which adds the
container checksum and the key of the source files.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from array import array
from collections.abc import Iterator
from typing import Any, cast

from imagefs.codecs.blobspill import SpilledBlobs
from imagefs.errors import FormatError
from imagefs.records import field, record
from imagefs.services.fastzlib import crc32

#: Bump when the payload layout of any codec changes: old files are rebuilt.
#: 2: piece sums; zstd resume points checked by them instead of a second decode.
#: 3: zstd light resume points at zstdmt job starts.
INDEX_VERSION = 3

_PAYLOAD_MAGIC = b"IFCX"


#: Binary extras above this total stay in the index file and are read when
#: a span needs them (zstd window snapshots are ~5% of the image: a mount of
#: many large images must not hold them all in memory).
LAZY_BLOBS = 1 << 20


class LazyBlobs:
    """The blobs of a saved index, read from its file on demand.

    Each read is checked against the CRC-32 recorded in the payload, so an
    index file replaced or damaged after loading is noticed, not trusted.
    """

    def __init__(self, path: str, base: int, lengths: list[int], crcs: list[int]) -> None:
        self.path = path
        #: Each blob's length (as :class:`SpilledBlobs` has them: one helper
        #: reads both without touching a blob).
        self.lengths = lengths
        self._crcs = crcs
        self._offsets = []
        pos = base
        for n in lengths:
            self._offsets.append(pos)
            pos += n

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> bytes:
        n = self.lengths[i]
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offsets[i])
                data = f.read(n)
        except OSError as exc:
            raise FormatError(self.path, f"cannot read the index file ({exc.strerror})",
                              "delete it; it is rebuilt on the next open") from None
        if len(data) != n or crc32(data) != self._crcs[i]:
            raise FormatError(self.path, "the index file changed or is damaged",
                              "delete it; it is rebuilt on the next open")
        return data

    def total(self) -> int:
        return sum(self.lengths)


def _blob_lengths(blobs: list[bytes] | LazyBlobs | SpilledBlobs) -> list[int]:
    """Each blob's length, without reading blobs kept in a file."""
    if isinstance(blobs, (SpilledBlobs, LazyBlobs)):
        return list(blobs.lengths)
    return [len(b) for b in blobs]


class Payload:
    """A payload's parts in order, each blob read as it is reached (re-iterable)."""

    def __init__(self, head: bytes, blobs: list[bytes] | LazyBlobs | SpilledBlobs,
                 blob_bytes: int, sums: bytes) -> None:
        self._head = head
        self._blobs = blobs
        self._sums = sums
        #: The payload's length.
        self.nbytes = len(head) + blob_bytes + len(sums)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        for i in range(len(self._blobs)):
            yield self._blobs[i]
        yield self._sums


@record
class SeekIndex:
    """Where each span of the decompressed stream starts and how to decode it.

    ``meta[i]`` is codec-specific JSON-able data for span ``i``; ``blobs``
    hold binary extras (window snapshots, a library's exported index) that
    ``meta`` refers to by position; ``info`` is a small summary for
    ``index_state``.
    """

    size: int
    starts: list[int]
    meta: list[Any]
    blobs: list[bytes] | LazyBlobs | SpilledBlobs = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    #: Piece sums of all spans, flat (see the module docstring), or None.
    sums: list[int] | array | None = None
    #: ``sums[sum_base[i] + k]`` is piece ``k`` of span ``i``.
    sum_base: list[int] | None = None

    def piece_sum(self, i: int, k: int) -> int | None:
        """The recorded XXH3-64 of piece ``k`` of span ``i`` (None: not recorded)."""
        if self.sums is None or self.sum_base is None:
            return None
        n = self.sum_base[i] + k
        return self.sums[n] if n < self.sum_base[i + 1] else None

    def blob_bytes(self) -> int:
        if isinstance(self.blobs, (LazyBlobs, SpilledBlobs)):
            return self.blobs.total()
        return sum(map(len, self.blobs))

    def make_lazy(self, path: str | None, payload_len: int) -> None:
        """Leave the blobs in the saved file ``path`` (payload at its end).

        Small blobs (or with no file) stay in memory, as bytes of their own
        even when they were views of a loaded payload; a pass's blobs in its
        temporary file stay there when there is no saved file.
        """
        blobs = self.blobs
        if isinstance(blobs, LazyBlobs):
            return
        lengths = _blob_lengths(blobs)
        total = sum(lengths)
        if path is not None and total > LAZY_BLOBS:
            sums = 0 if self.sums is None else 8 * len(self.sums)   # they follow the blobs
            head = payload_len - total - sums
            try:
                base = os.path.getsize(path) - payload_len + head
            except OSError:
                base = None
            if base is not None:
                crcs = list(blobs.crcs) if isinstance(blobs, SpilledBlobs) else \
                    [crc32(b) for b in blobs]
                self.blobs = LazyBlobs(path, base, lengths, crcs)
                return
        if isinstance(blobs, SpilledBlobs) and total > LAZY_BLOBS:
            return
        self.blobs = [b if isinstance(b, bytes) else bytes(b) for b in blobs]

    @property
    def spans(self) -> int:
        return len(self.meta)

    def to_payload(self, codec: str, comp_size: int) -> Payload:
        """The payload in its parts, in order (head, each blob, the sums):
        written as they are, never joined, each blob read only when it is
        written (a zstd index's blobs are ~5% of the image;
        :meth:`IndexStore.save <imagefs.services.indexstore.IndexStore.save>`)."""
        blobs = self.blobs
        lengths = _blob_lengths(blobs)
        sums = b"" if self.sums is None else array("Q", self.sums).tobytes()
        head = {"v": INDEX_VERSION, "codec": codec, "comp_size": comp_size,
                "size": self.size, "starts": self.starts, "meta": self.meta,
                "info": self.info, "blobs": lengths,
                "sum_base": self.sum_base if self.sums is not None else None}
        text = json.dumps(head, separators=(",", ":")).encode()
        return Payload(_PAYLOAD_MAGIC + struct.pack("<I", len(text)) + text, blobs,
                       sum(lengths), sums)

    @classmethod
    def from_payload(cls, payload: bytes | memoryview, codec: str, comp_size: int,
                     path: str | None = None) -> SeekIndex:
        """Parse and check a payload; ValueError says what does not fit.

        ``path``: the file it was loaded from, where large blobs are left
        (:meth:`make_lazy`).
        """
        if bytes(payload[:4]) != _PAYLOAD_MAGIC:
            raise ValueError("not a codec index")
        (length,) = struct.unpack_from("<I", payload, 4)
        head = json.loads(bytes(payload[8:8 + length]))
        if head.get("v") != INDEX_VERSION or head.get("codec") != codec:
            raise ValueError("index of another codec or version")
        if head.get("comp_size") != comp_size:
            raise ValueError("index was built for a stream of another size")
        # Views, not copies: a large index leaves its blobs in the file
        # (make_lazy) and a copy of 100 MB of zstd snapshots made the load's
        # peak memory twice the index; small ones are copied out there.
        view = memoryview(payload)
        blobs: list[bytes | memoryview] = []
        pos = 8 + length
        for n in head["blobs"]:
            if pos + n > len(payload):
                raise ValueError("blob beyond the end of the payload")
            blobs.append(view[pos:pos + n])
            pos += n
        sum_base = head.get("sum_base")
        sums: array | None = None
        if sum_base is not None:
            sums = array("Q")
            sums.frombytes(payload[pos:pos + 8 * int(sum_base[-1])])
            pos += 8 * len(sums)
        if pos != len(payload):
            raise ValueError("trailing bytes after the blobs")
        index = cls(int(head["size"]), [int(s) for s in head["starts"]], head["meta"],
                    cast("list[bytes]", blobs), head.get("info", {}), sums=sums,
                    sum_base=[int(b) for b in sum_base] if sum_base is not None else None)
        index.check()
        index.make_lazy(path, len(payload))     # no views of the payload kept
        return index

    def check(self) -> None:
        starts = self.starts
        if len(starts) != len(self.meta) + 1 or starts[0] != 0 or starts[-1] != self.size:
            raise ValueError("span table does not cover the stream")
        if any(b < a for a, b in itertools.pairwise(starts)):
            raise ValueError("span table is not ordered")
        if self.sums is not None:
            base = self.sum_base
            if base is None or len(base) != len(starts) or base[0] != 0 or \
                    base[-1] != len(self.sums) or any(b < a for a, b in itertools.pairwise(base)):
                raise ValueError("piece sums do not fit the span table")
