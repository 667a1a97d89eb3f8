"""File-like adapters over byte sources, for libraries and for scanners.

:class:`SourceReader` is a read-only, seekable raw file object (rapidgzip
wants one); :class:`StreamCursor` reads compressed bytes sequentially with
a large buffer, for the index passes that walk frame and block headers;
:func:`drain` feeds a library's streaming decoder with its output bounded.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

from imagefs.codecs import tuning
from imagefs.codecs.problems import truncated
from imagefs.io.scatter import read_into
from imagefs.io.source import ByteSource

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: Compressed bytes read per request while scanning a stream.
READ_CHUNK = 4 << 20
#: Compressed bytes an index pass reads per pread (one reused buffer).
PASS_CHUNK = 8 << 20
#: Room in front of a chunk read ahead for the end of the chunk before: a
#: block that runs past a chunk's end is loaded again from its start, and
#: the largest is an lz4 block (4 MiB, its size word and checksum).
CARRY = (4 << 20) + 16

#: The most a head decoder (:func:`drain`) hands out per step.
DRAIN_STEP = 1 << 20


def drain(dec: Any, data: bytes) -> Iterator[bytes]:
    """What the streaming decoder ``dec`` makes of ``data``, DRAIN_STEP bytes at
    a time, until it needs more input or its stream ends (``dec.eof``).

    A few compressed bytes may stand for gigabytes (100 KB of zstd held 3 GiB
    of zeros): decoding a whole read at once made a 4 KiB read of such a
    stream's head take 17 s and 6 GiB.  ``dec`` is a decompressor of zlib
    (the input it did not take is left in ``unconsumed_tail``) or of lzma,
    bz2 or pyzstd (kept inside, ``needs_input`` false while output is left).
    """
    while True:
        out = dec.decompress(data, DRAIN_STEP)
        if out:
            yield out
        if dec.eof:
            return
        tail = getattr(dec, "unconsumed_tail", b"")
        if not (tail or len(out) == DRAIN_STEP or getattr(dec, "needs_input", True) is False):
            return
        data = tail


#: The threads that read index passes' next chunks (one per pass slot).
_read_pool = tuning.LazyPool("imagefs-readahead", lambda: max(2, tuning.BUILD_SLOTS))


class SourceReader(io.RawIOBase):
    """A read-only file object over a ByteSource (for libraries wanting one).

    ``on_read`` is told how far the reads got (progress): the bytes each read
    adds past the furthest one before.  rapidgzip's parallel decoder reads
    some compressed bytes twice (a 2.4 MB gzip file counted 3.7 MB when every
    read was summed), and a pass must count each byte once.
    """

    def __init__(self, source: ByteSource, on_read: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._source = source
        self._pos = 0
        self._on_read = on_read
        self._reached = 0          # the furthest offset reported to on_read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        else:
            self._pos = self._source.size + offset
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._source.read_at(self._pos, len(view))
        n = len(data)
        view[:n] = data
        self._pos += n
        if self._on_read is not None and self._pos > self._reached:
            self._on_read(self._pos - self._reached)
            self._reached = self._pos
        return n


class StreamCursor:
    """Sequential reads of compressed bytes with a large buffer (scanners)."""

    def __init__(self, source: ByteSource, offset: int = 0,
                 on_read: Callable[[int], None] | None = None) -> None:
        self.source = source
        self._buf = b""
        self._buf_start = offset
        self.pos = offset
        self._on_read = on_read

    def take(self, n: int) -> bytes:
        """Exactly ``n`` bytes from the current position (short only at EOF)."""
        rel = self.pos - self._buf_start
        if rel + n > len(self._buf):
            more = self.source.read_at(self._buf_start + len(self._buf),
                                       max(READ_CHUNK, rel + n - len(self._buf)))
            if self._on_read is not None:
                self._on_read(len(more))
            self._buf = self._buf[rel:] + more
            self._buf_start = self.pos
            rel = 0
        data = self._buf[rel:rel + n]
        self.pos += len(data)
        return data

    def need(self, n: int, what: str) -> bytes:
        data = self.take(n)
        if len(data) != n:
            raise truncated(self.source, f"compressed stream ends inside {what} "
                            f"at byte {self.pos}")
        return data


class ChunkReader:
    """A compressed stream read in large chunks, by absolute offset, read ahead.

    For index passes: ``load`` a chunk, ``get`` views of it (valid until the
    next ``load``), ``need`` to load on demand; ``update`` is told each new
    compressed byte read (progress).

    While the pass decodes one chunk, the next is read on another thread
    into a second buffer (the pread releases the GIL): reading the bench's
    1.2 GB zstd image from the page cache was 0.17 s of a 1.6 s pass, and
    from a disk it is more.  A block that runs past the end of a chunk is
    carried to the front of the next one (``CARRY`` bytes are kept free
    there), so sequential loads never wait for a read that is not already
    under way.

    ``on_stall``, if set, is called before a load waits for its bytes (the
    read ahead is not done, or there is none): the pass does there what
    it would otherwise leave until after the wait.
    """

    __slots__ = ("src", "total", "base", "buf", "view", "update", "reported",
                 "on_stall", "_spare", "_ahead", "_ahead_at")

    def __init__(self, src: ByteSource, update: Callable[[int], None]) -> None:
        self.src = src
        self.total = src.size
        self.base = 0
        self.buf = bytearray()
        self.view = memoryview(self.buf)
        self.update = update
        self.reported = 0                  # compressed bytes told to progress
        self.on_stall: Callable[[], None] | None = None
        self._spare = bytearray()          # the buffer the read-ahead fills
        self._ahead: Future[int] | None = None
        self._ahead_at = 0                 # where that read starts

    def have(self, pos: int, n: int) -> bool:
        """Whether ``[pos, pos + n)`` is in the chunk now held."""
        return self.base <= pos and pos + n <= self.base + len(self.view)

    def load(self, pos: int, n: int) -> None:
        """Hold a chunk starting at ``pos`` with at least ``n`` bytes (fewer at the end).

        Chunks are read into two reused buffers: a fresh 8 MiB object per
        read cost page faults on every byte (10% of the pass).
        """
        if self.on_stall is not None and (self._ahead is None or not self._ahead.done()):
            self.on_stall()
        if not self._take_ahead(pos, n):
            size = min(max(PASS_CHUNK, n), self.total - pos)
            if size <= 0:
                self.view, self.base = memoryview(b""), pos
                return
            if len(self.buf) < size:
                self.buf = bytearray(max(size, CARRY + PASS_CHUNK))
            self.view = memoryview(self.buf)[:size]
            read_into(self.src, pos, [self.view])
            self.base = pos
        end = self.base + len(self.view)
        if end > self.reported:
            self.update(end - self.reported)
            self.reported = end
        if end < self.total and tuning.PREFETCH:
            self._read_ahead(end)

    def _read_ahead(self, at: int) -> None:
        size = min(PASS_CHUNK, self.total - at)
        if len(self._spare) < CARRY + size:
            self._spare = bytearray(CARRY + PASS_CHUNK)
        view = memoryview(self._spare)[CARRY:CARRY + size]

        def read() -> int:
            read_into(self.src, at, [view])
            return size

        self._ahead, self._ahead_at = _read_pool.get().submit(read), at

    def _take_ahead(self, pos: int, n: int) -> bool:
        """Make the chunk read ahead the one held, if it serves ``load(pos, n)``."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return False
        carry = self._ahead_at - pos
        # Only a carry from the chunk held now (its last bytes) fits in front.
        usable = (0 <= carry <= CARRY and self.have(pos, carry)
                  and carry + PASS_CHUNK >= min(n, self.total - pos))
        if not usable:
            wait([ahead])                  # never two reads into one buffer
            return False
        size = ahead.result()              # a failed read raises here, as a load would
        spare = self._spare
        start = CARRY - carry
        spare[start:CARRY] = self.get(pos, carry)
        self._spare, self.buf = self.buf, spare
        self.view = memoryview(spare)[start:CARRY + size]
        self.base = pos
        return True

    def get(self, pos: int, n: int) -> memoryview:
        return self.view[pos - self.base:pos - self.base + n]


    def need(self, pos: int, n: int, what: str) -> memoryview:
        """A view of ``[pos, pos + n)``, loading it if needed; TruncatedError at the end."""
        if not self.have(pos, n):
            self.load(pos, n)
            if not self.have(pos, n):
                raise truncated(self.src, f"compressed stream ends inside {what} at byte "
                                f"{self.base + len(self.view)}")
        return self.get(pos, n)
