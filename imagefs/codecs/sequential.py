"""Decoding a stream from its start, in order: header probes and the slow path.

Before the seek index exists, reads near the start of a stream are served
by decoding from the beginning: a mount probes the headers of thousands of
images this way and must not index them all.  Streams with no restart
points at all (a single-block xz stream) serve every read this way, the
reported "slow path".
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Generator

#: Granularity of the sequential decoder's cached chunks.
SEQ_CHUNK = 1 << 20

#: Sequential decoders kept alive over all sources.  A mount probes the
#: headers of thousands of images; each live decoder holds its library's
#: window (up to 64 MiB for xz -9) and a few recent chunks, so only the most
#: recently used few stay alive; the others restart if asked again.
MAX_LIVE_SEQUENTIAL = 4

_live_lock = threading.Lock()
_live: OrderedDict[int, SequentialDecoder] = OrderedDict()


class SequentialDecoder:
    """Decode from the start, in order, caching fixed-size chunks.

    Serves header probes before an index exists and the slow path of
    streams without restart points.  One decoder per source, under a lock;
    a request behind the decoder's position restarts it from the start.
    """

    def __init__(self, decode: Callable[[], Generator[bytes, None, None]],
                 count: Callable[[int], None]) -> None:
        self._decode = decode              # a fresh generator of the whole stream
        self._count = count                # told how many bytes were decoded
        self._lock = threading.Lock()
        self._gen: Generator[bytes, None, None] | None = None
        self._pos = 0                      # decoded bytes handed out so far
        self._pending = b""                # decoded but not yet a full chunk
        self._recent: OrderedDict[int, bytes] = OrderedDict()  # chunk -> bytes
        self.eof_size: int | None = None   # total size once the end was seen
        self._done = False                 # the current generator is exhausted
        self.restarts = 0

    def chunk(self, k: int) -> bytes:
        self._touch()
        with self._lock:
            if k in self._recent:
                return self._recent[k]
            if self.eof_size is not None and k * SEQ_CHUNK >= self.eof_size:
                return b""
            if self._gen is None or self._pos > k * SEQ_CHUNK:
                if self._gen is not None:
                    self.restarts += 1
                    self._gen.close()
                self._gen = self._decode()
                self._pos = 0
                self._pending = b""
                self._done = False
            while True:
                if len(self._pending) >= SEQ_CHUNK or (self._done and self._pending):
                    data, self._pending = self._pending[:SEQ_CHUNK], self._pending[SEQ_CHUNK:]
                    no = self._pos // SEQ_CHUNK
                    self._pos += len(data)
                    self._remember(no, data)
                    if no == k:
                        return data
                    continue
                if self._done:
                    return b""
                try:
                    piece = next(self._gen)
                except StopIteration:
                    self._done = True
                    self.eof_size = self._pos + len(self._pending)
                    continue
                except BaseException:
                    self._drop_locked()
                    raise
                self._count(len(piece))
                self._pending += piece

    def _remember(self, no: int, data: bytes) -> None:
        self._recent[no] = data
        while len(self._recent) > 4:   # a few MiB: header probes re-read nearby
            self._recent.popitem(last=False)

    def _touch(self) -> None:
        evict = []
        with _live_lock:
            _live[id(self)] = self
            _live.move_to_end(id(self))
            while len(_live) > MAX_LIVE_SEQUENTIAL:
                evict.append(_live.popitem(last=False)[1])
        for seq in evict:
            seq.release(blocking=False)

    def _drop_locked(self) -> None:
        if self._gen is not None:
            self._gen.close()
        self._gen = None
        self._pos = 0
        self._pending = b""
        self._recent.clear()

    def release(self, blocking: bool = True) -> None:
        """Free the decoder and recent chunks (a busy one is left alone)."""
        if not self._lock.acquire(blocking=blocking):
            return
        try:
            self._drop_locked()
        finally:
            self._lock.release()

    def close(self) -> None:
        with _live_lock:
            _live.pop(id(self), None)
        self.release()


def live_decoders() -> int:
    """How many sequential decoders hold a live library decoder now (tests, bench)."""
    with _live_lock:
        return sum(1 for seq in _live.values() if seq._gen is not None)
