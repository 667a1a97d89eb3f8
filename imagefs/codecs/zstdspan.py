"""Decoding one zstd span into pieces, a piece per foreign call.

A span is decoded from its origin (a frame start, or a resume point with
its window snapshot as the history and a synthesized frame header) by
libzstd's streaming decoder (:class:`~imagefs.codecs.zstdstream.StreamDecoder`),
straight into each piece: a new ``bytes`` of ``SUB_CHUNK`` bytes counted
from the span's start, filled by as many blocks as it holds in one call
with the GIL released.

Why not a call per block, as before (the buffer-less API, decoding into
segments that were the window, pieces handed out as views of them): each
call released the GIL and had to take it back, and taking it back waits
for whatever Python another thread runs at that moment.  A prefetch lane
beside FUSE threads made ~30,000 such calls over the bench's 2 GiB image.
In process, the prefetch path alone over that image took 0.62-0.63 s; with
a second thread running 30 µs of Python between GIL-free 1 MiB CRCs,
1.8-4.9 s with a call per block against 1.2-1.8 s a call per piece (10 µs:
1.0-1.15 s against 0.70-0.91 s); a reader thread reading the virtual
partition, 0.97-1.18 s against 0.64-0.97 s; O_DIRECT ``dd`` through the
mount 0.79-1.09 s against 0.75-0.81 s, pzstd 0.91-1.11 against 0.79-0.97
(bench/RESULTS.md, 2026-12-07).  The price is libzstd's copy of each block
out of its own window buffer, hot in the cache, and no piece shares memory
with another: the cache charges each its own bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from imagefs.codecs.cursors import Piece
from imagefs.codecs.spans import SUB_CHUNK
from imagefs.codecs.zstdframe import (
    BLOCK_MAX,
    FrameHeader,
    header_length,
    synth_header,
    window_of,
)
from imagefs.codecs.zstdstream import (
    DICT_MAGIC,
    StreamDecoder,
    ZstdStreamError,
    available,
    stream_decoder,
)
from imagefs.io.scatter import buffer_address, new_bytes, read_into
from imagefs.io.source import ByteSource

#: Compressed bytes read at a time (libzstd keeps a block cut by a read's
#: end itself, so reads need no carry).
READ_CHUNK = 1 << 20


def frame_head(src: ByteSource, pos: int) -> bytes:
    """The header of the frame at byte ``pos`` (cut short at the file's end)."""
    head = src.read_at(pos, 18)              # the longest frame header
    return head[:header_length(head[4]) if len(head) > 4 else 18]


def origin_window(src: ByteSource, origin: list[Any]) -> int:
    """The window a decoder started at span origin ``origin`` works with."""
    if origin[0] == "f":
        return FrameHeader(frame_head(src, origin[1]), str(origin[1]), src).window
    return window_of(origin[2])


class SpanDecoder:
    """One span's decode: its origin, where its blocks end, and what to drop.

    ``origin`` is a span origin of the zstd index (``["f", frame_c]`` or
    ``[kind, pos, window_byte, blob]``), ``prefix`` the decompressed snapshot
    of a resume point, ``end`` where the blocks to decode end (with a frame
    start, up to the frame's end: libzstd then checks its checksum), ``skip``
    how many bytes of output come before the span (a fallback origin).

    :meth:`pieces` decodes the span and lets go of the decoder; a
    sequential reader instead runs :meth:`leg` and, at the span's end,
    :meth:`extend` into the next span of the same frame, whose resume point
    is where this decoder stands: no snapshot to load.  The owner then
    calls :meth:`close`.
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
        self._dec: StreamDecoder | None = None
        self._buf = bytearray()              # compressed input, read at _pos - its length
        self._pos = 0                        # compressed bytes read (fed) up to here
        self._window = 0
        self._ended = False                  # the frame ended: no more legs

    def pieces(self) -> Iterator[Piece]:
        """The span's pieces; ZstdStreamError where libzstd refuses the data."""
        try:
            yield from self.leg()
        finally:
            self.close()

    def _begin(self) -> StreamDecoder:
        self._window = origin_window(self.src, self.origin)
        dec = stream_decoder(self._window)
        if dec is None:
            raise ZstdStreamError("the system libzstd cannot be loaded")
        self._dec = dec
        if self.origin[0] == "f":
            dec.begin(b"")                   # the header is the first input
        else:
            dec.begin(synth_header(self.origin[2]), self.prefix)
        self._pos = self.origin[1]
        self._buf = bytearray(READ_CHUNK)
        return dec

    def leg(self) -> Iterator[Piece]:
        """The pieces up to the current end (the decoder stays open: see
        :meth:`extend`): ``bytes``, the last one perhaps a view of one."""
        dec = self._dec if self._dec is not None else self._begin()
        # With a frame start, on through the checksum: libzstd checks it.
        limit = max(self.frame_end, self.blocks_end)
        drop, self.skip = self.skip, 0
        scratch = memoryview(bytearray(min(drop, SUB_CHUNK))) if drop else memoryview(b"")
        while True:
            dropping = drop > 0
            piece = new_bytes(SUB_CHUNK) if not dropping else b""
            size = min(drop, SUB_CHUNK) if dropping else SUB_CHUNK
            dec.set_output(buffer_address(scratch if dropping else piece), size)
            done = self._fill(dec, size, limit)
            n = dec.out_pos
            if dropping:
                self.count(n)
                drop -= n
                if done:
                    if drop:
                        raise ZstdStreamError("the span ends before the bytes to drop do")
                    return
                continue
            if n:
                yield piece if n == SUB_CHUNK else memoryview(piece)[:n]
            if done:
                if self.frame_end > self.blocks_end and not self._ended:
                    raise ZstdStreamError("the frame did not end after its checksum")
                return

    def _fill(self, dec: StreamDecoder, size: int, limit: int) -> bool:
        """Decode into the output set until it is full (False) or the input
        up to ``limit`` is all decoded and flushed (True)."""
        while dec.out_pos < size:
            if not dec.in_left:
                n = min(READ_CHUNK, limit - self._pos)
                if n <= 0:
                    # All fed: a call without input flushes what libzstd holds.
                    dec.set_input(0, 0)
                    self._ended = dec.step() or self._ended
                    return dec.out_pos < size
                view = memoryview(self._buf)[:n]
                read_into(self.src, self._pos, [view])       # raises if the file is cut short
                self._pos += n
                dec.set_input(buffer_address(view), n)
            if dec.step():
                self._ended = True
                if dec.in_left:
                    raise ZstdStreamError("data after the frame's end inside the span")
                return True
        return False

    def can_extend(self, pos: int) -> bool:
        """Whether this decoder stands at compressed byte ``pos``, able to go on."""
        return (self._dec is not None and not self._ended and self._pos == pos
                and not self._dec.in_left)

    def extend(self, blocks_end: int, frame_end: int) -> None:
        """Make the next :meth:`leg` decode on to ``blocks_end`` (the next
        span's end; ``frame_end`` if that span ends the frame: its checksum
        is checked when the decoder began at the frame's start)."""
        self.blocks_end = blocks_end
        self.frame_end = frame_end if self.origin[0] == "f" else 0

    def resident(self) -> int:
        """The bytes this decoder keeps until :meth:`close`: libzstd's window
        and block buffers, its input buffer and the snapshot it resumed from."""
        if self._dec is None:
            return 0
        return self._window + 3 * BLOCK_MAX + len(self._buf) + len(self.prefix or b"")

    def close(self) -> None:
        """Let go of the decoder (idempotent)."""
        dec, self._dec = self._dec, None
        self._ended = True
        if dec is not None:
            dec.close()
        self._buf = bytearray()
        self.prefix = None


def decodable(origin: list[Any], prefix: bytes | None) -> bool:
    """Whether :class:`SpanDecoder` can decode a span from ``origin``: the system
    libzstd is there, and the prefix does not start like a dictionary (a
    prefix is referenced as raw content, but such rare snapshots stay on
    pyzstd's path, which the tests prove for them)."""
    if not available():
        return False
    return origin[0] == "f" or not (prefix or b"").startswith(DICT_MAGIC)
