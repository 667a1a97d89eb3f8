"""The output memory of the zstd index pass: segments that are the decoder's window.

libzstd's buffer-less decoder (:class:`~imagefs.codecs.zstdstream.BlockDecoder`)
writes each block straight into memory the pass owns and reads its matches
from there.  It remembers two regions only: the one it is writing now and
the one it wrote before.  So a block goes either right after the previous
block or at the start of a new segment, and the segment before the current
one must hold a whole window, untouched, while the current one fills.
:class:`OutputSegments` keeps that rule: a segment holds a window and a
block more, a new one is started only when fewer than a block's bytes are
free, and of the older segments only those the rule, the pending bytes
and the snapshots no longer need are reused.

Decoded bytes are *pending* until :meth:`OutputSegments.emit` hands them to
the piece hasher (on another thread, or at once with ``--threads 1``), a
piece at a time, and a copy of the piece to a reader following the pass
when there is one; a segment is written again only once its hashing is done.
"""

from __future__ import annotations

import mmap
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from imagefs.codecs.spans import BackgroundHasher
from imagefs.codecs.zstdframe import BLOCK_MAX
from imagefs.io.scatter import buffer_address, join_released

#: The smallest segment: 32 blocks (4 MiB), so that starting a new one is
#: rare next to the blocks and a few of them in rotation (current, previous,
#: one being hashed) are all the pass's output memory; the bare buffer-less
#: loop measured in zstdstream's docstring used three such.
SEGMENT = 32 * BLOCK_MAX


class OutputSegments:
    """Where one pass's decoder writes (see the module docstring)."""

    __slots__ = ("_hasher", "_segments", "_fills", "_spare", "_hashing",
                 "size", "fill", "held", "pending", "window", "_address")

    def __init__(self, hasher: BackgroundHasher) -> None:
        self._hasher = hasher
        self._segments: deque[mmap.mmap] = deque()
        self._fills: deque[int] = deque()  # bytes written into each segment but the last
        self._spare: list[mmap.mmap] = []
        self._hashing: dict[int, Future[None]] = {}   # segment id -> its last hashing
        self.size = SEGMENT                # the current frame's segment size
        self.fill = 0                      # bytes written into the last segment
        self.held = 0                      # bytes in all segments
        self.pending = 0                   # of those, written but not yet emitted
        self.window = 0
        self._address = 0                  # where the last segment's memory starts

    def start_frame(self, window: int) -> None:
        """Forget the output before (a frame's history starts with it)."""
        if self.pending:
            raise AssertionError("a frame started with output not emitted")
        while self._segments:
            self._retire(self._segments.popleft())
        self._fills.clear()
        self.fill = self.held = 0
        self.window = window
        size = max(SEGMENT, window + BLOCK_MAX)
        if size != self.size:
            self._spare.clear()
            self.size = size

    def room(self) -> memoryview:
        """At least BLOCK_MAX free bytes right after the last written (in a new
        segment when the last one has fewer)."""
        self._make_room()
        return memoryview(self._segments[-1])[self.fill:]

    def room_at(self) -> tuple[int, int]:
        """:meth:`room` as its address and size (the pass's block loop: no
        view and no ctypes object made per block)."""
        self._make_room()
        return self._address + self.fill, self.size - self.fill

    def _make_room(self) -> None:
        if not self._segments or self.size - self.fill < BLOCK_MAX:
            if self._segments:
                self._fills.append(self.fill)
            keep = max(self.window, self.pending)
            # The last segment is the decoder's previous region from now on:
            # it stays whatever ``keep`` says.
            while len(self._fills) > 1 and self.held - self._fills[0] >= keep:
                self.held -= self._fills.popleft()
                self._retire(self._segments.popleft())
            # Anonymous memory: pages are taken as they are written, so a
            # header that declares a huge window over little data (or a
            # hostile one) costs what is decoded, not the window twice over
            # (a bytearray is zeroed, every page touched, when made).
            segment = self._spare.pop() if self._spare else mmap.mmap(-1, self.size)
            self._segments.append(segment)
            # Valid while the segment lives: segments are never closed, only
            # dropped with the pass (or the frame size) that made them.
            self._address = buffer_address(memoryview(segment))
            self.fill = 0

    def wrote(self, n: int) -> None:
        """``n`` bytes were written at the start of the last :meth:`room`."""
        self.fill += n
        self.held += n
        self.pending += n

    def _retire(self, segment: mmap.mmap) -> None:
        hashing = self._hashing.pop(id(segment), None)
        if hashing is not None:
            hashing.result()
        self._spare.append(segment)

    def tail(self, n: int) -> list[memoryview]:
        """Views of the last ``n`` bytes written (at most those held), in order."""
        views: list[memoryview] = []
        last = len(self._segments) - 1
        for i in range(last, -1, -1):
            if n <= 0:
                break
            end = self.fill if i == last else self._fills[i]
            take = min(n, end)
            views.append(memoryview(self._segments[i])[end - take:end])
            n -= take
        views.reverse()
        return views

    def emit(self, n: int | None = None,
             publish: Callable[[bytes], None] | None = None) -> int:
        """Hand the first ``n`` (all) pending bytes to the hasher, and a copy
        of them to ``publish`` if given: how many they were."""
        n = self.pending if n is None else min(n, self.pending)
        if n:
            views = self.tail(self.pending)
            cut = n
            for j, view in enumerate(views):     # keep the first n bytes
                if cut <= len(view):
                    views[j] = view[:cut]
                    del views[j + 1:]
                    break
                cut -= len(view)
            hashing = self._hasher.feed(views, publish)
            for view in views:
                self._hashing[id(view.obj)] = hashing
            self.pending -= n
        return n

    def snapshot(self, length: int) -> bytes:
        """A copy of the last ``length`` (at most ``window``) bytes written."""
        return join_released(self.tail(min(length, self.window, self.held)))
