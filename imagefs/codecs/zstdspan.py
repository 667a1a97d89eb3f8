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
block (and at least SEGMENT_MIN), and a block goes to the next segment
when the current one has no room for a whole block.  By then the current
one holds more than a window, so the one before it is no longer needed by
the decoder.

Pieces are not copied out where the window allows (up to
:data:`FRESH_MAX` bytes a segment, the usual 2-8 MiB windows): every
segment is then a new ``bytes`` object, filled once and never written
again, and a piece that lies in one segment is handed out as a read-only
view of it; only a piece cut by a change of segment is joined.  That copy
of every decoded byte was a fifth of the prefetch worker's time through the
mount (perf through the mount, 2026-12-06), on the critical path of
a sequential read.  A cached view keeps its whole segment alive, and the
block cache charges it so (services/cache.py): the segment once, whatever
the number of its pieces cached.
Larger windows keep two reused segments and copy each piece out (a view
would pin a window-sized segment per cached piece).
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Iterator
from typing import Any

from imagefs.codecs.cursors import Piece
from imagefs.codecs.problems import truncated
from imagefs.codecs.spans import SUB_CHUNK
from imagefs.codecs.zstdframe import BLOCK_MAX, FrameHeader, header_length, synth_header
from imagefs.codecs.zstdstream import (
    DICT_MAGIC,
    ZstdStreamError,
    available,
    span_block_decoder,
)
from imagefs.io.scatter import buffer_address, join_released, new_bytes, read_into
from imagefs.io.source import ByteSource
from imagefs.services.memtune import MMAP_THRESHOLD

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
#: The largest fresh segment (pieces handed out as views of it): under
#: glibc's mmap threshold as memtune sets it, so that segments come from
#: the heap and are reused there, not mapped and page-faulted in anew.
FRESH_MAX = MMAP_THRESHOLD - (64 << 10)

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
        self._addrs: list[int] = []          # and their addresses
        self._fresh = False                  # fresh segments, pieces as views (FRESH_MAX)
        self._lo = self._hi = self._pos = 0  # compressed bytes [lo, hi) are in buf[:hi - lo]
        self._cur = self._fill = 0           # the segment written, and how far
        self._size = 0                       # of a segment
        self._ended = False                  # the frame's end was checked: no more legs

    def pieces(self) -> Iterator[Piece]:
        """The span's pieces; ZstdStreamError where libzstd refuses the data."""
        try:
            yield from self.leg()
        finally:
            self.close()

    def leg(self) -> Iterator[Piece]:
        """The pieces up to the current end (the decoder stays open: see
        :meth:`extend`): bytes, or read-only views of fresh segments."""
        if self._dec is None:
            self._begin()
        src = self.src
        buf = self._buf
        view = memoryview(buf)
        lo, hi, pos = self._lo, self._hi, self._pos
        outs, addrs, size = self._outs, self._addrs, self._size
        cur, fill = self._cur, self._fill
        fresh = self._fresh
        dec = self._dec
        parts: list[memoryview] = []         # the open piece's bytes
        piece_seg = piece_at = 0             # where the open piece starts
        whole = True                         # it lies in one segment
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
                    if fresh:                # the old segment lives on in its pieces
                        self._fresh_segment(cur)
                    whole = False
                got = dec.decode_block_at(view[at:at + length], addrs[cur] + fill, size - fill)
                at_out = fill
                fill += got
                pos += length
                if produced < 0:             # before the span: dropped
                    drop = min(-produced, got)
                    self.count(drop)
                    produced += drop
                    at_out += drop
                    got -= drop
                seg = outs[cur]
                while got:
                    if open_len == 0:
                        piece_seg, piece_at, whole = cur, at_out, True
                    take = min(got, SUB_CHUNK - open_len)
                    parts.append(seg[at_out:at_out + take])
                    open_len += take
                    at_out += take
                    got -= take
                    if open_len == SUB_CHUNK:
                        yield self._piece(parts, piece_seg, piece_at, open_len, whole)
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
                yield self._piece(parts, piece_seg, piece_at, open_len, whole)
        finally:
            # Views of the segments go first: close() must be able to give
            # the segments back.
            del parts[:]
            seg = view[:0]

    def _piece(self, parts: list[memoryview], seg: int, at: int, length: int,
               whole: bool) -> Piece:
        """The open piece handed out: a view of its fresh segment where it
        lies in one, else its parts joined (a copy)."""
        if self._fresh and whole:
            return self._outs[seg][at:at + length]
        return join_released(parts)

    def _fresh_segment(self, n: int) -> None:
        """Make segment ``n`` a new bytes object (the decoder writes it once)."""
        segment = new_bytes(self._size)
        self._outs[n] = memoryview(segment)
        self._addrs[n] = buffer_address(segment)

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
        self._fresh = self._size <= FRESH_MAX
        if self._fresh:
            self._outs, self._addrs = [memoryview(b"")] * 2, [0, 0]
            self._fresh_segment(0)
        else:
            self._segments = [_segment(self._size), _segment(self._size)]
            self._outs = [memoryview(m) for m in self._segments]
            self._addrs = [buffer_address(v) for v in self._outs]

    def resident(self) -> int:
        """The bytes this decoder keeps until :meth:`close`: its output
        segments (counted whole: after a span they are written through), its
        input buffer and the snapshot it resumed from."""
        return (sum(len(v) for v in self._outs) + len(self._buf)
                + len(self.prefix or b""))

    def close(self) -> None:
        """Let go of the decoder and give its segments back (idempotent)."""
        dec, self._dec = self._dec, None
        self._ended = True
        if dec is not None:
            dec.close()
        # The views go first: a segment with a view of it open cannot be closed.
        if not self._fresh:                  # fresh segments' views may be in pieces' hands
            for v in self._outs:
                v.release()
        self._outs, self._addrs = [], []
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
