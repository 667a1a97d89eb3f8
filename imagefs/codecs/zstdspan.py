"""Decoding one zstd span into pieces with the GIL released.

A span is decoded from its origin (a frame start, or a resume point with
its window snapshot as the history) block by block through libzstd's
buffer-less API (:func:`~imagefs.codecs.zstdstream.span_block_decoder`),
into two output segments in turn, and handed out in pieces of
``SUB_CHUNK`` bytes counted from the span's start.  Every foreign call
(each block, each piece's copy out of the segments) runs without the
interpreter lock.

Why not pyzstd, as before: its decompress copies the input it did not use
and joins its output blocks while holding the lock.  Through the mount,
a sequential read of the bench's zstd image spent 18 % of all the time the
lock was held inside it (py-spy --gil), time in which no FUSE thread could
run.  In one thread alone the two decode at the same speed.

The segments are the decoder's window: libzstd remembers the region it
wrote before the current one, so each segment holds a whole window plus a
block (and at least SEGMENT_MIN), and a block goes to the other segment
when the current one has no room for a whole block.  By then the current
one holds more than a window, so the other's old bytes are no longer
needed; nor are they by the pieces, which were copied out before (a piece
is shorter than a segment).
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Iterator
from typing import Any

from imagefs.codecs.problems import truncated
from imagefs.codecs.spans import SUB_CHUNK
from imagefs.codecs.zstdframe import BLOCK_MAX, FrameHeader, header_length, synth_header
from imagefs.codecs.zstdstream import (
    DICT_MAGIC,
    ZstdStreamError,
    available,
    span_block_decoder,
)
from imagefs.io.scatter import join_released, read_into
from imagefs.io.source import ByteSource

#: The smallest output segment: 32 blocks, more than a piece.
SEGMENT_MIN = 32 * BLOCK_MAX
#: Compressed bytes read at a time, and the room kept in front of them for
#: the rest of a block cut by the previous read's end.
READ_CHUNK = 1 << 20
_CARRY = BLOCK_MAX + 3
#: Idle segments kept for the next spans, in bytes: a fresh mapping is
#: page-faulted in on every first write (2 x 4 MiB per span).  Four or more
#: spans' worth at the usual 2-8 MiB windows; a huge window's are freed.
KEEP_BYTES = 64 << 20

_spare: dict[int, list[mmap.mmap]] = {}
_spare_lock = threading.Lock()


def _segment(size: int) -> mmap.mmap:
    with _spare_lock:
        free = _spare.get(size)
        if free:
            return free.pop()
    return mmap.mmap(-1, size)


def _give_back(segment: mmap.mmap) -> None:
    size = len(segment)
    with _spare_lock:
        kept = sum(n * len(free) for n, free in _spare.items())
        if kept + size <= KEEP_BYTES:
            _spare.setdefault(size, []).append(segment)
            return
    try:
        segment.close()
    except BufferError:                      # a view still open: freed with it
        pass


def frame_head(src: ByteSource, pos: int) -> bytes:
    """The header of the frame at byte ``pos`` (cut short at the file's end)."""
    head = src.read_at(pos, 18)              # the longest frame header
    return head[:header_length(head[4]) if len(head) > 4 else 18]


def window_of(window_byte: int) -> int:
    """The window size a frame header's window descriptor stands for."""
    base = 1 << (10 + (window_byte >> 3))
    return base + (base >> 3) * (window_byte & 7)


def origin_window(src: ByteSource, origin: list[Any]) -> int:
    """The window a decoder started at span origin ``origin`` works with."""
    if origin[0] == "f":
        return FrameHeader(frame_head(src, origin[1]), str(origin[1]), src).window
    return window_of(origin[2])


class SpanBlocks:
    """One span's decode: its origin, where its blocks end, and what to drop.

    ``origin`` is a span origin of the zstd index (``["f", frame_c]`` or
    ``[kind, pos, window_byte, blob]``), ``prefix`` the decompressed snapshot
    of a resume point, ``end`` where the blocks to decode end (with a frame
    start, up to the frame's end: its checksum is then checked), ``skip``
    how many bytes of output come before the span (a fallback origin).

    :meth:`pieces` decodes the span and lets go of the decoder; a
    sequential reader instead runs :meth:`leg` and, at the span's end,
    :meth:`extend` into the next span of the same frame, whose resume point
    is where this decoder stands: no snapshot to load and no priming (those
    were a tenth of a prefetch worker's time, py-spy through the mount).
    The owner then calls :meth:`close`.
    """

    def __init__(self, src: ByteSource, origin: list[Any], prefix: bytes | None, blocks_end: int,
                 frame_end: int, skip: int, count: Callable[[int], None]) -> None:
        self.src = src
        self.origin = origin
        self.prefix = prefix
        self.blocks_end = blocks_end
        self.frame_end = frame_end if origin[0] == "f" else 0
        self.skip = skip
        self.count = count                   # told the bytes decoded only to be dropped
        # Decoder state between legs (set up by the first leg).
        self._dec: Any = None
        self._buf = bytearray()
        self._segments: list[mmap.mmap] = []
        self._outs: list[memoryview] = []    # the segments' views
        self._lo = self._hi = self._pos = 0  # compressed bytes [lo, hi) are in buf[:hi - lo]
        self._cur = self._fill = 0           # the segment written, and how far
        self._size = 0                       # of a segment
        self._ended = False                  # the frame's end was checked: no more legs

    def pieces(self) -> Iterator[bytes]:
        """The span's pieces; ZstdStreamError where libzstd refuses the data."""
        try:
            yield from self.leg()
        finally:
            self.close()

    def leg(self) -> Iterator[bytes]:
        """The pieces up to the current end (the decoder stays open: see :meth:`extend`)."""
        if self._dec is None:
            self._begin()
        src = self.src
        buf = self._buf
        view = memoryview(buf)
        lo, hi, pos = self._lo, self._hi, self._pos
        outs, size = self._outs, self._size
        cur, fill = self._cur, self._fill
        dec = self._dec
        parts: list[memoryview] = []         # the open piece's bytes
        out = view[:0]
        produced = -self.skip                # output before the span is dropped
        self.skip = 0
        open_len = 0
        try:
            while pos < self.blocks_end:
                if hi - pos < _CARRY and hi < self.blocks_end:
                    rest = hi - pos          # the cut block's start moves to the front
                    view[:rest] = view[pos - lo:hi - lo]
                    n = min(READ_CHUNK, self.blocks_end - hi)
                    read_into(src, hi, [view[rest:rest + n]])
                    lo, hi = pos, hi + n
                at = pos - lo
                if hi - pos < 3:
                    raise ZstdStreamError(f"a block header at byte {pos} is cut by the span's end")
                bh = buf[at] | buf[at + 1] << 8 | buf[at + 2] << 16
                length = 3 + (1 if (bh >> 1) & 3 == 1 else bh >> 3)
                if pos + length > hi:
                    raise ZstdStreamError(f"the block at byte {pos} runs past the span's end")
                if size - fill < BLOCK_MAX:
                    cur, fill = 1 - cur, 0
                got = dec.decode_block(view[at:at + length], outs[cur][fill:])
                out = outs[cur][fill:fill + got]
                fill += got
                pos += length
                if produced < 0:             # before the span: dropped
                    drop = min(-produced, got)
                    self.count(drop)
                    produced += drop
                    out = out[drop:]
                while out:
                    take = min(len(out), SUB_CHUNK - open_len)
                    parts.append(out[:take])
                    open_len += take
                    out = out[take:]
                    if open_len == SUB_CHUNK:
                        yield join_released(parts)
                        parts, open_len = [], 0
            self._lo, self._hi, self._pos, self._cur, self._fill = lo, hi, pos, cur, fill
            if self.frame_end > self.blocks_end:
                self._ended = True
                checksum = src.read_at(self.blocks_end, self.frame_end - self.blocks_end)
                if len(checksum) != self.frame_end - self.blocks_end:
                    raise truncated(src, f"zstd stream ends at byte {self.blocks_end}, "
                                    f"expected {self.frame_end}")
                if not dec.end(memoryview(bytearray(checksum))):
                    raise ZstdStreamError("the frame did not end after its checksum")
            if parts:
                yield join_released(parts)
        finally:
            # Views of the segments go first: close() must be able to give
            # the segments back.
            del parts[:]
            out = view[:0]

    def can_extend(self, pos: int) -> bool:
        """Whether this decoder stands at compressed byte ``pos``, able to go on."""
        return self._dec is not None and not self._ended and self._pos == pos

    def extend(self, blocks_end: int, frame_end: int) -> None:
        """Make the next :meth:`leg` decode on to ``blocks_end`` (the next
        span's end; ``frame_end`` if that span ends the frame: its checksum
        is checked when the decoder began at the frame's start)."""
        self.blocks_end = blocks_end
        self.frame_end = frame_end if self.origin[0] == "f" else 0

    def _begin(self) -> None:
        dec = span_block_decoder()
        if dec is None:
            raise ZstdStreamError("the system libzstd cannot be loaded")
        self._dec = dec
        src = self.src
        pos = self.origin[1]
        if self.origin[0] == "f":
            head = frame_head(src, pos)
            window = FrameHeader(head, str(pos), src).window
            dec.begin(memoryview(bytearray(head)))
            pos += len(head)
        else:
            window = window_of(self.origin[2])
            dec.begin(memoryview(bytearray(synth_header(self.origin[2]))), self.prefix)
        self._lo = self._hi = self._pos = pos
        self._buf = bytearray(_CARRY + READ_CHUNK)
        self._size = max(SEGMENT_MIN, window + BLOCK_MAX)
        self._segments = [_segment(self._size), _segment(self._size)]
        self._outs = [memoryview(m) for m in self._segments]

    def resident(self) -> int:
        """The bytes this decoder keeps until :meth:`close`: its output
        segments (counted whole: after a span they are written through), its
        input buffer and the snapshot it resumed from."""
        return (sum(len(m) for m in self._segments) + len(self._buf)
                + len(self.prefix or b""))

    def close(self) -> None:
        """Let go of the decoder and give its segments back (idempotent)."""
        dec, self._dec = self._dec, None
        self._ended = True
        if dec is not None:
            dec.close()
        # The views go first: a segment with a view of it open cannot be closed.
        for v in self._outs:
            v.release()
        self._outs = []
        segments, self._segments = self._segments, []
        for segment in segments:
            _give_back(segment)
        self._buf = bytearray()
        self.prefix = None


def decodable(origin: list[Any], prefix: bytes | None) -> bool:
    """Whether :class:`SpanBlocks` can decode a span from ``origin``: the system
    libzstd is there, and a prefix would not be read as a dictionary."""
    if not available():
        return False
    return origin[0] == "f" or not (prefix or b"").startswith(DICT_MAGIC)
