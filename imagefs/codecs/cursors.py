"""Paused span decoders, kept so that a sequential reader continues a span.

A random read decodes its span only up to the sub-chunk it needs; the
decoder is parked here and a later read of the next sub-chunk continues it
instead of decoding the span again from its start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from imagefs.services.cache import Cached

if TYPE_CHECKING:
    from imagefs.codecs.seekindex import SeekIndex

#: A decoded piece, as the cache holds it (see services.cache.Cached).
Piece = Cached

#: Paused span decoders kept for continuation, over all sources: a bound on
#: their number and on the memory they pin outside the cache -- the decoded
#: bytes not yet taken (a codec that decodes whole units leaves the rest of
#: the unit in its cursor) plus what the decoder itself keeps resident (a
#: paused zstd decoder holds two window-sized output segments, its input
#: buffer and its snapshot: ~10 MiB at ``zstd -3``'s 2 MiB window, but
#: 4 GiB at ``--long=31``).  One cursor per concurrent sequential reader is
#: what pays off; 64 MiB keeps four at the usual windows, and the newest one
#: is always kept, so a huge-window stream still goes on with one decoder.
MAX_CURSORS = 4
MAX_CURSOR_BYTES = 64 << 20


class SpanCursor:
    """A paused decoder inside span ``span``; ``k`` is its next sub-chunk."""

    __slots__ = ("span", "k", "it", "run", "buf", "pos")

    def __init__(self, span: int, it: Iterator[Piece]) -> None:
        self.span = span
        self.k = 0
        self.it: Iterator[Piece] | None = it
        self.run: Any = it                   # the codec's decoder, kept past the span's end
        self.buf: Piece = b""
        self.pos = 0

    def go_on(self, index: SeekIndex, span: int) -> bool:
        """At the end of its span: continue into ``span`` (the next one) if
        the codec's decoder can (an ``into(index, span)`` method that says
        whether it now yields that span's bytes)."""
        into = getattr(self.run, "into", None)
        if into is None or self.held() or not into(index, span):
            return False
        self.span, self.k, self.it, self.buf, self.pos = span, 0, self.run, b"", 0
        return True

    def take(self, n: int, count: Callable[[int], None]) -> Piece:
        """Up to ``n`` more decoded bytes (fewer only at the end of the span):
        a whole piece as it came, else a copy."""
        parts: list[Piece] = []
        need = n
        while need > 0:
            avail = len(self.buf) - self.pos
            if avail <= 0:
                if self.it is None:
                    break
                try:
                    piece = next(self.it)
                except StopIteration:
                    self.it = None
                    break
                count(len(piece))
                self.buf, self.pos = piece, 0
                continue
            step = min(avail, need)
            if step == len(self.buf):
                parts.append(self.buf)       # a whole piece: no copy
            else:
                parts.append(memoryview(self.buf)[self.pos:self.pos + step])
            self.pos += step
            need -= step
        if len(parts) == 1 and parts[0] is self.buf:
            return parts[0]
        return b"".join(parts)              # the one copy of these bytes

    def held(self) -> int:
        """Decoded bytes buffered here, not yet taken."""
        return len(self.buf) - self.pos

    def weight(self) -> int:
        """The memory this paused cursor pins: :meth:`held` plus the
        decoder's own resident bytes, where it reports them (a
        ``resident()`` method on the codec's decoder)."""
        resident = getattr(self.run, "resident", None)
        return self.held() + (resident() if resident is not None else 0)

    def close(self) -> None:
        # ``it`` is ``run`` or None (spent): closing ``run`` closes the decoder.
        run, self.it, self.run = self.run, None, None
        if run is not None and hasattr(run, "close"):
            run.close()
        self.buf = b""


class CursorPool:
    """Paused span decoders of every source, least recently parked first."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[Any, SpanCursor]] = []
        self.max_count = max_count
        self.max_bytes = max_bytes

    def take(self, owner: Any, span: int, k: int) -> SpanCursor | None:
        """The cursor of ``owner``'s span furthest along but not past ``k``."""
        with self._lock:
            best = None
            for n, (o, cur) in enumerate(self._items):
                if o == owner and cur.span == span and cur.k <= k and (
                        best is None or cur.k > self._items[best][1].k):
                    best = n
            return None if best is None else self._items.pop(best)[1]

    def put(self, owner: Any, cur: SpanCursor) -> None:
        """Park ``cur``; the least recently parked go (closed) while the pool
        is over its count or its bytes, the newest one always stays."""
        evicted = []
        with self._lock:
            self._items.append((owner, cur))
            weights = [c.weight() for _, c in self._items]
            total = sum(weights)
            while len(self._items) > self.max_count or (total > self.max_bytes
                                                        and len(self._items) > 1):
                _, old = self._items.pop(0)
                total -= weights.pop(0)
                evicted.append(old)
        for old in evicted:
            old.close()

    def parked(self) -> list[tuple[Any, int]]:
        """Each parked cursor's owner and :meth:`~SpanCursor.weight`, oldest first."""
        with self._lock:
            return [(o, c.weight()) for o, c in self._items]

    def drop(self, owner: Any) -> None:
        with self._lock:
            mine = [c for o, c in self._items if o == owner]
            self._items = [(o, c) for o, c in self._items if o != owner]
        for cur in mine:
            cur.close()


#: The one pool of every source's paused cursors.
cursors = CursorPool(MAX_CURSORS, MAX_CURSOR_BYTES)
