"""File-like adapters over byte sources, for libraries and for scanners.

:class:`SourceReader` is a read-only, seekable raw file object (rapidgzip
wants one); :class:`StreamCursor` reads compressed bytes sequentially with
a large buffer, for the index passes that walk frame and block headers.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

from imagefs.codecs.problems import truncated
from imagefs.io.scatter import read_into
from imagefs.io.source import ByteSource

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: Compressed bytes read per request while scanning a stream.
READ_CHUNK = 4 << 20
#: Compressed bytes an index pass reads per pread (one reused buffer).
PASS_CHUNK = 8 << 20


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
    """A compressed stream read in large chunks into one reused buffer, by absolute offset.

    For index passes: ``load`` a chunk, ``get`` views of it (valid until the
    next ``load``), ``need`` to load on demand; ``update`` is told each new
    compressed byte read (progress).
    """

    __slots__ = ("src", "total", "base", "buf", "view", "update", "reported")

    def __init__(self, src: ByteSource, update: Callable[[int], None]) -> None:
        self.src = src
        self.total = src.size
        self.base = 0
        self.buf: bytes | bytearray = b""
        self.view = memoryview(self.buf)
        self.update = update
        self.reported = 0                  # compressed bytes told to progress

    def have(self, pos: int, n: int) -> bool:
        """Whether ``[pos, pos + n)`` is in the chunk now held."""
        return self.base <= pos and pos + n <= self.base + len(self.view)

    def load(self, pos: int, n: int) -> None:
        """Hold a chunk starting at ``pos`` with at least ``n`` bytes (fewer at the end).

        The chunk is read into one reused buffer: a fresh 8 MiB object per
        read cost page faults on every byte (10% of the pass).
        """
        size = min(max(PASS_CHUNK, n), self.total - pos)
        if size <= 0:
            self.buf, self.view, self.base = b"", memoryview(b""), pos
            return
        if len(self.buf) < size or not isinstance(self.buf, bytearray):
            self.view.release()
            self.buf = bytearray(max(size, PASS_CHUNK))
        self.view = memoryview(self.buf)[:size]
        read_into(self.src, pos, [self.view])
        self.base = pos
        end = pos + size
        if end > self.reported:
            self.update(end - self.reported)
            self.reported = end

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
