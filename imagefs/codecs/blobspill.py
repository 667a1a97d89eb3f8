"""The binary extras an index pass makes, kept in a temporary file, not in memory.

A zstd pass stores a compressed window snapshot at every resume point:
about 5 % of the decoded stream (111 MB for the bench's 2 GiB image), so a
first pass over a 500 GB backup held some 25 GB of them in memory until it
saved its index.  :class:`SpilledBlobs` writes each blob to an unnamed file
(``O_TMPFILE``: nothing to clean up, gone with the process) beside the
index store, as it is made, and reads it back when a span needs it or the
index is saved.  Reads go through the page cache, as a saved index's
:class:`~imagefs.codecs.seekindex.LazyBlobs` do.

Threading: the pass appends and fills; readers of committed spans read
blobs that were filled before their span was committed.  The file end and
the entry lists are guarded by a lock; the bytes are written and read with
``pwrite``/``pread`` at offsets of their own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import IO
from zlib import crc32

log = logging.getLogger(__name__)


class SpilledBlobs:
    """An append-only list of blobs, stored in an unnamed temporary file.

    ``append(b"")`` reserves a place that ``blobs[i] = data`` fills later (a
    snapshot compressed on another thread); entries are read with
    ``blobs[i]``.  Where no temporary file can be made the blobs stay in
    memory, as before.
    """

    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None   # kept open: closing it frees the file
        self._fd = -1
        self._end = 0
        self._offsets: list[int] = []
        self.lengths: list[int] = []
        self.crcs: list[int] = []          # CRC-32 of each blob (a saved index records them)
        self._memory: list[bytes] | None = None   # the fallback

    def __len__(self) -> int:
        return len(self.lengths)

    def append(self, data: bytes) -> int:
        """Add ``data`` (``b""``: a place filled later); returns its number."""
        with self._lock:
            i = len(self.lengths)
            self._offsets.append(0)
            self.lengths.append(0)
            self.crcs.append(0)
            if self._memory is not None:
                self._memory.append(b"")
        if data:
            self[i] = data
        return i

    def __setitem__(self, i: int, data: bytes) -> None:
        """Fill place ``i`` (once)."""
        n = len(data)
        crc = crc32(data)
        with self._lock:
            if self._fd < 0 and self._memory is None:
                self._open_locked()
            if self._memory is not None:
                self._memory[i] = bytes(data)
                self.lengths[i], self.crcs[i] = n, crc
                return
            offset, self._end = self._end, self._end + n
        written = os.pwrite(self._fd, data, offset)
        if written != n:
            raise OSError(f"short write to the index pass's temporary file ({written} of {n})")
        with self._lock:
            self._offsets[i], self.lengths[i], self.crcs[i] = offset, n, crc

    def _open_locked(self) -> None:
        import tempfile  # here: a mount of uncompressed images never needs it

        for directory in (self._directory, None):
            try:
                if directory is not None:
                    os.makedirs(directory, exist_ok=True)
                self._file = tempfile.TemporaryFile(dir=directory, prefix=".pass-")
            except OSError as exc:
                log.debug("no temporary file for index snapshots in %s: %s", directory, exc)
                continue
            self._fd = self._file.fileno()
            return
        log.debug("index snapshots kept in memory: no temporary file could be made")
        self._memory = [b""] * len(self.lengths)

    def __getitem__(self, i: int) -> bytes:
        with self._lock:
            if self._memory is not None:
                return self._memory[i]
            offset, n = self._offsets[i], self.lengths[i]
        if n == 0:
            return b""
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise OSError(f"the index pass's temporary file is short ({len(data)} of {n} bytes)")
        return data

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self[i]

    def total(self) -> int:
        """Bytes of all blobs."""
        with self._lock:
            return sum(self.lengths)
