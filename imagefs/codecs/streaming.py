"""Telling a sequential reader from random reads, and decoding ahead for it.

FUSE serves the kernel's readahead with several threads, so consecutive
requests of one sequential reader arrive slightly out of order (a third of
them, measured).  :class:`StreamTracker` decides whether a read continues
the stream, counts how much of each decoded piece a streaming reader has
taken (to free the piece once all of it is out) and queues background
decoding of the spans ahead.

Threading: every field of a tracker is guarded by its ``_lock``; the
decisions it returns are hints (two readers of one file share one stream
position), never correctness: any piece can always be decoded again.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections import deque
from typing import TYPE_CHECKING

from imagefs.codecs import tuning
from imagefs.codecs.seekindex import SeekIndex

if TYPE_CHECKING:
    from imagefs.codecs.spans import SpanDecoder
    from imagefs.services.cache import BlockCache

#: ...and at least this many decoded bytes ahead when spans are small: with
#: zstd's 8 MiB light spans, 8 MiB ahead (two spans) read 5-10 % slower than
#: the old 32 MiB spans did; 32 MiB ahead is as fast or faster (dd of the
#: bench's zstd and lz4 images through the mount, alternating runs).
PREFETCH_BYTES = 32 << 20
#: A read of at least STREAM_MIN_READ (the kernel's readahead requests are
#: 128 KiB or more) starting this close to where a stream's reads reach
#: continues the stream.
STREAM_SLACK = 8 << 20
STREAM_MIN_READ = 128 << 10
#: Prefetching starts once a stream has run this far: opening an image reads
#: its header and bitmap in a row, which is no reason to decode spans ahead.
PREFETCH_AFTER = 4 << 20
#: Partly delivered pieces tracked per source (a bound on the bookkeeping).
MAX_TRACKED_PIECES = 4096


class StreamTracker:
    """The sequential-reader state of one decompressed stream."""

    def __init__(self, spans: SpanDecoder, cache: BlockCache, fast_decoder: bool = False) -> None:
        """``fast_decoder``: one core decodes faster than replies go out
        (see :func:`~imagefs.codecs.tuning.prefetch_lanes`)."""
        self._spans = spans
        self._cache = cache
        self._fast_decoder = fast_decoder
        self._lock = threading.Lock()
        #: Claimed spans waiting for a lane, in stream order, and the lanes
        #: (prefetch-pool tasks) draining them now.
        self._queue: deque[tuple[SeekIndex, int]] = deque()
        self._lanes = 0
        self._last_end: int | None = None  # where the streaming reader's reads reach
        self._stream_start = 0             # where that stream began
        self._consumed: dict[tuple[int, int], int] = {}  # piece -> bytes delivered
        #: Partly delivered pieces by where they end, oldest first (see delivered()).
        self._partial: deque[tuple[int, tuple[int, int]]] = deque()
        #: None follows the process setting (tuning.PREFETCH); tests pin it.
        self.prefetch: bool | None = None

    def follow(self, offset: int, end: int) -> tuple[bool, int]:
        """Whether ``[offset, end)`` continues the stream, and how far the stream has run.

        A large read "near where the stream has got to" continues it; a
        small one only right where it ended (random 4 KiB reads close to
        each other are not a stream).
        """
        with self._lock:
            last = self._last_end
            streaming = last is not None and (
                offset == last or (end - offset >= STREAM_MIN_READ
                                   and last - STREAM_SLACK <= offset <= last + STREAM_SLACK))
            if streaming and last is not None:
                self._last_end = max(last, end)
            else:
                self._last_end, self._stream_start = end, offset
            return streaming, self._last_end - self._stream_start

    def carries(self, offset: int) -> bool:
        """Whether a stream under way (past :data:`PREFETCH_AFTER`) reaches near ``offset``.

        Bytes there are decoded for that stream rather than for someone
        waiting; nothing changes (a check's peeks ask this).
        """
        with self._lock:
            last = self._last_end
            return (last is not None and last - self._stream_start >= PREFETCH_AFTER
                    and last - STREAM_SLACK <= offset <= last + STREAM_SLACK)

    def wants_prefetch(self, run: int) -> bool:
        """Whether a stream that has run ``run`` bytes should decode ahead."""
        enabled = tuning.PREFETCH if self.prefetch is None else self.prefetch
        return enabled and run >= PREFETCH_AFTER

    def delivered(self, i: int, k: int, n: int, size: int, piece_end: int) -> None:
        """Count a streaming reader's bytes of piece (i, k), which ends at
        ``piece_end``; free it once all are out, or once the stream is past it.

        The kernel's page cache keeps what was read, so a streamed piece is
        not needed again: freeing it lets the next decoded piece reuse its
        memory instead of faulting in fresh pages (that halved decoding
        speed) and keeps the shared LRU for random access.  Counting bytes
        rather than "the read reached the piece's end" matters when requests
        overtake each other: the tail of a piece may be delivered before its
        head, and freeing it then would force the head's reader to decode the
        span again from its start.

        Some bytes of a piece are never asked for: partclone's checksum after
        a group whose last block ends a request (4-16 bytes), skipped by the
        next one.  Such a piece is freed once the stream's reads reach
        :data:`STREAM_SLACK` past its end, beyond where a request can still
        come from behind; left to the LRU, they kept 60 MiB of the bench's
        2 GiB zstd image cached after a ``dd`` had passed them.
        """
        key = (i, k)
        stale: list[tuple[int, int]] = []
        with self._lock:
            before = self._consumed.pop(key, 0)
            done = before + n
            if done < size:
                if len(self._consumed) >= MAX_TRACKED_PIECES:
                    self._consumed.clear()       # abandoned streams: forget them
                    self._partial.clear()
                self._consumed[key] = done
                if not before:
                    self._partial.append((piece_end, key))
            passed = (self._last_end or 0) - STREAM_SLACK
            partial = self._partial
            while partial and partial[0][0] <= passed:
                old = partial.popleft()[1]
                if self._consumed.pop(old, None) is not None:
                    stale.append(old)
        if done >= size:
            self._cache.discard(self._spans.key(i, k))
        for old in stale:
            self._cache.discard(self._spans.key(*old))

    def prefetch_after(self, index: SeekIndex, end: int) -> None:
        """Queue background decoding of the spans that follow offset ``end``."""
        with self._lock:
            last = self._last_end
        # Requests of one stream overtake each other (FUSE threads): a read
        # behind the stream's front must not claim the span the front has
        # entered, whose first pieces are out and freed already (it was
        # decoded twice that way: 25 of the bench zstd image's 232 spans
        # with verify on, 61 while following a fresh index pass).
        if last is not None and last > end:
            end = last
        starts = index.starts
        nxt = bisect_right(starts, end - 1)
        # Never prefetch more than half the cache: prefetched pieces
        # evicted before use would be decoded twice.
        budget = self._cache.capacity // 2
        j = nxt
        # At least one span per worker, and small spans (bzip2 blocks, gzip
        # chunks) until PREFETCH_BYTES are under way: one span each kept the
        # workers barely a read ahead of the reader.
        while j < index.spans and (j < nxt + tuning.PREFETCH_DEPTH
                                   or starts[j] - end < PREFETCH_BYTES):
            budget -= starts[j + 1] - starts[j]
            if budget < 0:
                break
            if self._spans.claim(j):
                with self._lock:
                    self._queue.append((index, j))
            j += 1
        self._open_lanes()

    def _open_lanes(self) -> None:
        """Start lanes for the queued spans, up to this stream's share of the pool."""
        with self._lock:
            wanted = min(len(self._queue),
                         tuning.prefetch_lanes(self._fast_decoder) - self._lanes)
            self._lanes += max(0, wanted)
        started = 0
        for _ in range(wanted):
            try:
                tuning.prefetch_pool().submit(self._drain)
            except RuntimeError:               # the interpreter is shutting down
                with self._lock:
                    self._lanes -= wanted - started
                self._drop_queue()
                return
            started += 1

    def _drain(self) -> None:
        """One lane (a prefetch-pool task): decode queued spans in order until none is left."""
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        self._lanes -= 1
                        return
                    index, j = self._queue.popleft()
                self._spans.prefetch_span(index, j)
        except BaseException:
            with self._lock:
                self._lanes -= 1
            raise

    def _drop_queue(self) -> None:
        """Give up the spans no lane has started (their readers decode them)."""
        with self._lock:
            dropped, self._queue = list(self._queue), deque()
        for _index, j in dropped:
            self._spans.unclaim(j)

    def reset(self) -> None:
        """Forget the stream (the source was closed; the next read starts afresh)."""
        with self._lock:
            self._last_end = None
            self._consumed.clear()
            self._partial.clear()
        self._drop_queue()
