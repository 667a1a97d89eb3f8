"""Decoding spans piece by piece into the shared cache.

A span (see :mod:`~imagefs.codecs.seekindex`) is cached in sub-chunks of
:data:`SUB_CHUNK` bytes: a random 4 KiB read decodes its span only up to the
piece it needs, and the decoder is parked (:mod:`~imagefs.codecs.cursors`)
so that a sequential reader continues it instead of starting over.  Small
pieces also keep allocations reusable (fresh 32 MiB buffers cost page
faults).

Threading: the cache runs each piece's loader once however many threads
ask (:meth:`BlockCache.get_or_load`).  ``_inflight`` (guarded by
``_cond``) records spans a background prefetcher is working through, so a
reader waits for that decoder to reach its piece instead of starting a
second decoder of the same span.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import xxhash

from imagefs.codecs import tuning
from imagefs.codecs.cursors import Piece, SpanCursor, cursors
from imagefs.codecs.problems import corrupt
from imagefs.codecs.seekindex import SeekIndex
from imagefs.io.scatter import join_released
from imagefs.io.source import ByteSource
from imagefs.services.cache import BlockCache

if TYPE_CHECKING:
    from imagefs.codecs.building import IndexBuild

#: Spans are cached in pieces of this size (see the module docstring).
SUB_CHUNK = 1 << 20
#: Other ways a codec may try to decode a span whose piece fails its sum.
MAX_FALLBACKS = 3


class PieceHasher:
    """XXH3-64 sums of a span's pieces, fed with the span's output in any cuts.

    The index pass feeds each span's decoded bytes and calls :meth:`close`
    at the span's end; ``sums`` then holds one sum per piece (the recorded
    sums of :class:`~imagefs.codecs.seekindex.SeekIndex`).
    """

    __slots__ = ("_h", "_fill", "sums")

    def __init__(self) -> None:
        self._h = xxhash.xxh3_64()
        self._fill = 0
        self.sums: list[int] = []

    def feed(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self._fill + n < SUB_CHUNK:
            self._h.update(data)
            self._fill += n
            return
        view = memoryview(data)
        pos = 0
        while pos < n:
            step = min(SUB_CHUNK - self._fill, n - pos)
            self._h.update(view[pos:pos + step])
            self._fill += step
            pos += step
            if self._fill == SUB_CHUNK:
                self.sums.append(self._h.intdigest())
                self._h.reset()
                self._fill = 0

    def close(self) -> list[int]:
        """End the span: the sums of all its pieces (and start afresh)."""
        if self._fill:
            self.sums.append(self._h.intdigest())
            self._h.reset()
            self._fill = 0
        sums, self.sums = self.sums, []
        return sums


#: Hashes the index passes' output beside them: one thread for all, so each
#: pass's pieces are hashed in the order fed (xxhash releases the GIL).
_hash_pool = tuning.HelperPool("imagefs-piecesum")


class BackgroundHasher:
    """A :class:`PieceHasher` run on another thread, so that a pass's own
    thread only decodes (hashing was 6% of the zstd pass, profiled); in the
    pass's thread with ``--threads 1`` (:class:`~imagefs.codecs.tuning.HelperPool`).

    The views given to :meth:`feed` are read later: their buffers must not be
    written again before the future it returns is done.
    """

    __slots__ = ("_hasher", "_pool", "_content")

    def __init__(self) -> None:
        self._hasher = PieceHasher()
        self._pool = _hash_pool.get()      # one executor for the whole pass: order
        self._content: Any = None          # the open frame's XXH64, if taken here

    def begin_content(self) -> None:
        """Take the XXH64 of the bytes fed from now on (a zstd frame's
        content checksum, where the decoder leaves it to the pass)."""
        self._content = xxhash.xxh64()

    def content_sum(self) -> Future[int]:
        """The XXH64 of the bytes fed since :meth:`begin_content`, once hashed."""
        content, self._content = self._content, None
        return self._pool.submit(content.intdigest)

    def feed(self, views: list[memoryview],
             publish: Callable[[bytes], None] | None = None) -> Future[None]:
        """Queue ``views`` (in order) for hashing; ``publish``, if given, is
        handed a copy of them joined (one whole piece: see
        :meth:`~imagefs.codecs.building.IndexBuild.offer`)."""
        return self._pool.submit(self._feed, views, publish, self._content)

    def _feed(self, views: list[memoryview], publish: Callable[[bytes], None] | None,
              content: Any) -> None:
        if publish is not None:
            data = join_released(views)    # the one copy a follower of the pass needs
            self._hasher.feed(data)
            if content is not None:
                content.update(data)
            publish(data)
            return
        for view in views:
            self._hasher.feed(view)
            if content is not None:
                content.update(view)

    def close(self) -> Future[list[int]]:
        """End the span once all it was fed is hashed: its sums."""
        return self._pool.submit(self._hasher.close)


class PieceOffers:
    """Whole pieces of a pass's output for the readers following it.

    For passes whose output is ``bytes`` (lz4): fed each output in order,
    with the build committing spans synchronously (the open span starts
    at ``build.committed``); a piece a reader waits in
    (:meth:`IndexBuild.following`) is handed to :meth:`IndexBuild.offer`
    once whole, or at the span's end (:meth:`span_ends`).
    """

    __slots__ = ("_build", "_pos", "_parts", "_piece_start", "_keep")

    def __init__(self, build: IndexBuild) -> None:
        self._build = build
        self._pos = 0                      # output offset of the next byte fed
        self._parts: list[bytes | memoryview] = []
        self._piece_start = 0              # of the piece being collected
        self._keep = False                 # whether it is being collected

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        span_start = self._build.committed
        while view:
            rel = self._pos - span_start
            if rel % SUB_CHUNK == 0:       # a piece starts here
                self._piece_start = self._pos
                self._keep = self._build.following(self._pos, self._pos + SUB_CHUNK)
            step = min(len(view), SUB_CHUNK - rel % SUB_CHUNK)
            if self._keep:
                self._parts.append(view[:step])
            self._pos += step
            view = view[step:]
            if (self._pos - span_start) % SUB_CHUNK == 0:
                self._offer_piece()

    def span_ends(self) -> None:
        """The open span ends here (call before committing it): its last piece."""
        self._offer_piece()

    def _offer_piece(self) -> None:
        """Hand over the piece collected so far (if a reader follows it)."""
        if self._keep and self._parts:
            k = (self._piece_start - self._build.committed) // SUB_CHUNK
            self._build.offer(self._build.spans_committed, k, b"".join(self._parts))
        self._parts = []
        self._keep = False


def piece_sum(data: bytes | memoryview) -> int:
    """The XXH3-64 of one decoded piece."""
    return xxhash.xxh3_64_intdigest(data)


def _constant(data: Piece) -> Callable[[], Piece]:
    """A cache loader that returns bytes already decoded."""
    return lambda: data


class SpanMismatch(Exception):
    """A decoded piece differs from the sum the index pass recorded (or a codec's
    decoder started at a restart point it cannot trust failed): the span decoder
    asks the codec for another way, else it is damage."""


class SpanDecoder:
    """The decoded pieces of one stream's spans, loaded on demand."""

    def __init__(self, source: ByteSource, codec: str, owner: Any, cache: BlockCache,
                 iter_span: Callable[[SeekIndex, int], Iterator[Piece]],
                 count: Callable[[int], None],
                 on_mismatch: Callable[[SeekIndex, int], bool] | None = None) -> None:
        self._source = source              # the compressed stream (named in errors)
        self._codec = codec
        self._owner = owner                # cache key prefix of this stream
        self._cache = cache
        self._iter_span = iter_span        # the codec: span i in pieces
        self._count = count                # told how many bytes were decoded
        #: Told when a piece of span i does not match its recorded sum; True
        #: if the codec now decodes the span another way (retry once).
        self._on_mismatch = on_mismatch
        self._cond = threading.Condition()
        self._inflight: dict[int, int] = {}  # span being prefetched -> pieces done
        self.spans_decoded = 0             # decoders started (tests and bench read it)

    def key(self, i: int, k: int) -> tuple[Any, ...]:
        """The cache key of piece ``k`` of span ``i``."""
        return (self._owner, "sub", i, k)

    def piece(self, index: SeekIndex, i: int, k: int, prefetching: bool = False,
              urgent: bool = False) -> Piece:
        """Piece ``k`` of span ``i``, decoded now or taken from the cache.

        ``urgent``: a reader waits for it that is not a stream (a random
        read): prefetch workers pause while it decodes (``tuning.demand``).
        """
        key = self.key(i, k)
        if not prefetching and self._inflight:
            # A background decoder is working through this span: wait for it
            # to reach piece k rather than start a second decoder.
            with self._cond:
                while i in self._inflight and self._inflight[i] <= k:
                    if self._cache.get(key) is not None:
                        break
                    self._cond.wait()
        if urgent:
            return self._cache.get_or_load(key, lambda: self._urgent_load(index, i, k))
        return self._cache.get_or_load(key, lambda: self._load(index, i, k))

    def _urgent_load(self, index: SeekIndex, i: int, k: int) -> Piece:
        with tuning.demand():
            return self._load(index, i, k)

    def _load(self, index: SeekIndex, i: int, k: int) -> Piece:
        # A mismatch is never served: the codec may know another way to
        # decode the span (a zstd resume point that does not reproduce the
        # stream falls back to an earlier origin); else it is damage.
        for _attempt in range(MAX_FALLBACKS + 1):
            try:
                return self._load_once(index, i, k)
            except SpanMismatch:
                cursors.drop(self._owner)      # parked decoders of the old way
                if self._on_mismatch is None or not self._on_mismatch(index, i):
                    break
        raise corrupt(self._source, f"{self._codec} span {i} does not decode to the bytes "
                      "the index recorded (the file changed or is damaged)")

    def _load_once(self, index: SeekIndex, i: int, k: int) -> Piece:
        span_len = index.starts[i + 1] - index.starts[i]
        count = -(-span_len // SUB_CHUNK)
        cur = cursors.take(self._owner, i, k)
        if cur is None:
            cur = SpanCursor(i, self._iter_span(index, i))
            with self._cond:
                self.spans_decoded += 1
        result: Piece = b""
        try:
            while cur.k <= k:
                want = min(SUB_CHUNK, span_len - cur.k * SUB_CHUNK)
                data = cur.take(want, self._count)
                if len(data) != want:
                    raise corrupt(self._source, f"{self._codec} span {i} decoded to fewer "
                                  f"bytes than its index says ({span_len})")
                want_sum = index.piece_sum(i, cur.k)
                if want_sum is not None and piece_sum(data) != want_sum:
                    raise SpanMismatch()         # never served: see _load
                if cur.k == k:
                    result = data
                else:
                    # Earlier pieces decoded on the way: cache them too (a loader
                    # only ever waits for lower-numbered pieces, so no cycle).
                    self._cache.get_or_load(self.key(i, cur.k), _constant(data))
                cur.k += 1
            if cur.k >= count:
                if cur.take(1, self._count):
                    raise corrupt(self._source, f"{self._codec} span {i} decoded to more "
                                  f"bytes than its index says ({span_len})")
                # A sequential reader's next span: the same decoder goes on
                # where the codec can (zstd within a frame), else it is done.
                if i + 1 < index.spans and cur.go_on(index, i + 1):
                    cursors.put(self._owner, cur)
                else:
                    cur.close()
            else:
                cursors.put(self._owner, cur)
        except BaseException:
            cur.close()
            raise
        return result

    # -- background decoding --------------------------------------------------

    def claim(self, j: int) -> bool:
        """Mark span ``j`` as being prefetched; False if it is under way or cached."""
        with self._cond:
            if j in self._inflight or self._cache.get(self.key(j, 0)) is not None:
                return False
            self._inflight[j] = 0
            return True

    def prefetch_span(self, index: SeekIndex, j: int) -> None:
        """Decode all of span ``j`` into the cache (run in a pool thread after :meth:`claim`)."""
        try:
            count = -(-(index.starts[j + 1] - index.starts[j]) // SUB_CHUNK)
            for k in range(count):
                tuning.yield_to_demand()
                self.piece(index, j, k, prefetching=True)
                with self._cond:
                    self._inflight[j] = k + 1
                    self._cond.notify_all()
        except Exception:  # noqa: BLE001 - the reader's own request decodes again and reports it
            pass
        finally:
            self.unclaim(j)

    def unclaim(self, j: int) -> None:
        """Span ``j`` is no longer being prefetched; wake the readers waiting for it."""
        with self._cond:
            self._inflight.pop(j, None)
            self._cond.notify_all()

    def offer(self, i: int, k: int, data: bytes) -> None:
        """Piece ``k`` of span ``i`` as the index pass decoded it: cached for a
        reader following the pass (the pass's own output is what the piece
        sums were taken from, so it is not checked against them)."""
        self._cache.add(self.key(i, k), data)

    def close(self) -> None:
        """Drop this stream's paused cursors."""
        cursors.drop(self._owner)
