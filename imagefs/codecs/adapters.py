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
from imagefs.io.source import ByteSource

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: Compressed bytes read per request while scanning a stream.
READ_CHUNK = 4 << 20


class SourceReader(io.RawIOBase):
    """A read-only file object over a ByteSource (for libraries wanting one).

    ``on_read`` is told how many compressed bytes were read (progress).
    """

    def __init__(self, source: ByteSource, on_read: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._source = source
        self._pos = 0
        self._on_read = on_read

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
        if self._on_read is not None:
            self._on_read(n)
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
