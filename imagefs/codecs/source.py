"""``CodecSource``: a decompressed stream as a random-access ByteSource.

The source serves reads from three parts it owns:

* the head / slow path (:mod:`~imagefs.codecs.sequential`): before the seek
  index exists, reads ending below :data:`HEAD_LIMIT` decode from the start;
* the spans (:mod:`~imagefs.codecs.spans`): with the index, a read decodes
  only the pieces of the spans it touches, through the shared cache;
* the stream tracker (:mod:`~imagefs.codecs.streaming`): a sequential
  reader's pieces are freed once delivered and the spans ahead decoded in
  the background.

The seek index is loaded from the index directory, or built by one
sequential pass in the background (:mod:`~imagefs.codecs.building`), on
the first read that needs it: one build per stream, shared by every
reader, never waited for by an open.  While it runs, reads inside the part
already passed are served from the partial index (codecs that commit spans
as they go: zstd, lz4), reads beyond wait for the pass to reach them.  The
complete index is published only after the codec has prepared for it, so a
reader that sees ``index`` set can use it at once.

Subclasses set ``codec`` and implement the hooks at the end of the class.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Generator, Iterator, Sequence
from functools import partial

from imagefs.codecs.building import FOLLOW_BYTES, IndexBuild
from imagefs.codecs.cursors import Piece
from imagefs.codecs.problems import corrupt
from imagefs.codecs.seekindex import INDEX_VERSION, SeekIndex
from imagefs.codecs.sequential import SEQ_CHUNK, SequentialDecoder
from imagefs.codecs.spans import SUB_CHUNK, SpanDecoder
from imagefs.codecs.streaming import STREAM_MIN_READ, StreamTracker
from imagefs.codecs.tuning import default_cache
from imagefs.io.scatter import copy_read, scatter_parts
from imagefs.io.source import ByteSource
from imagefs.services.cache import BlockCache
from imagefs.services.indexstore import IndexStore, PersistedIndex
from imagefs.services.progress import progress_bar

log = logging.getLogger("imagefs.codecs")

#: Reads ending below this offset are served without building the index.
#: 8 MiB covers every image header and bitmap probe of the format layer.
HEAD_LIMIT = 8 << 20


class CodecSource:
    """A decompressed stream as a :class:`~imagefs.io.source.ByteSource`."""

    codec = "?"
    #: One core decodes this codec faster than the mount's replies go out
    #: (tuning.prefetch_lanes): a sequential reader gets one decoder ahead.
    FAST_DECODER = False

    def __init__(self, source: ByteSource, *, index_store: IndexStore | None = None,
                 cache: BlockCache | None = None, key_paths: list[str] | None = None,
                 progress: bool | None = None) -> None:
        self.source = source
        self.name = source.name
        self._store = index_store
        self._cache = cache if cache is not None else default_cache()
        self._key_paths = key_paths if key_paths is not None else source.backing_files()
        self._progress = progress
        self._index: SeekIndex | None = None
        self._index_lock = threading.Lock()
        self._build: IndexBuild | None = None  # the one pass, once started (_index_lock)
        self._origin = ""                  # how the index came to be (for index_state)
        self._count_lock = threading.Lock()
        self.decoded_bytes = 0             # guarded by _count_lock
        self._owner = ("codec", id(self), time.monotonic_ns())   # cache key prefix
        self._seq = SequentialDecoder(self._iter_decoded, self._count)
        self._spans = SpanDecoder(source, self.codec, self._owner, self._cache,
                                  self._iter_span, self._count, self._span_mismatch)
        self._stream = StreamTracker(self._spans, self._cache, self.FAST_DECODER)

    # -- ByteSource -------------------------------------------------------

    @property
    def size(self) -> int:
        """The decompressed size (builds or loads the index)."""
        return self._ensure_index().size

    def cheap_size(self) -> int | None:
        index = self._index
        if index is not None:
            return index.size
        # A stream short enough to be read to its end from the start knows
        # its size without an index.
        return self._seq.eof_size

    def backing_files(self) -> list[str] | None:
        return self.source.backing_files()

    @property
    def index(self) -> SeekIndex | None:
        """The seek index once built or loaded (read-only use), else None."""
        return self._index

    @property
    def spans_decoded(self) -> int:
        """How many span decoders were started (bench and tests)."""
        return self._spans.spans_decoded

    @property
    def prefetch(self) -> bool | None:
        """Decode ahead for sequential readers: None follows the process setting."""
        return self._stream.prefetch

    @prefetch.setter
    def prefetch(self, value: bool | None) -> None:
        self._stream.prefetch = value

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        if size == 0:
            return b""
        index = self._covering(offset + size, offset)
        if index is None and offset + size <= HEAD_LIMIT:
            # A stream read from its start continues past the head: follow it,
            # so the first indexed read already counts as streaming.
            self._stream.follow(offset, offset + size)
            return self._read_sequential(offset, size)
        if index is None:
            index = self._index_for(offset + size, offset)
        size = min(size, index.size - offset)
        if size <= 0:
            return b""
        if index.info.get("slow"):
            return self._read_sequential(offset, size)
        parts = list(self._pieces(index, offset, offset + size))
        if len(parts) == 1:
            part = parts[0]
            return part if isinstance(part, bytes) else bytes(part)
        return b"".join(parts)

    def read_into(self, offset: int, views: Sequence[memoryview]) -> None:
        """Copy decoded bytes straight from the cached pieces into ``views``.

        Through FUSE every request of a compressed image lands on this: one
        copy per byte, where ``read_at`` would slice, join and then copy.
        """
        self._fill(offset, views, peek=False)

    def peek_into(self, offset: int, views: Sequence[memoryview]) -> None:
        """:meth:`read_into` for bytes a reader will ask for again (see
        :func:`imagefs.io.scatter.read_into`): neither a step of the stream
        nor counted as delivered, so their pieces stay cached for that read.
        """
        self._fill(offset, views, peek=True)

    def peek_views(self, offset: int, size: int) -> list[memoryview] | None:
        """``[offset, offset + size)`` as views of the cached pieces, peeked
        (see :meth:`peek_into`), with no copy: a checksum over bytes a reader
        asks for next needs only to read them.  None where they are not
        served from pieces (the head of a stream not yet indexed, a slow
        index): the caller then copies them with :meth:`peek_into`."""
        end = offset + size
        index = self._covering(end, offset)
        if offset < 0 or size <= 0 or (index is None and end <= HEAD_LIMIT):
            return None
        if index is None:
            index = self._index_for(end, offset)
        if end > index.size or index.info.get("slow"):
            return None
        views = [memoryview(data)[lo:lo + n]
                 for data, lo, n in self._parts(index, offset, end, peek=True)]
        if sum(map(len, views)) != size:
            raise corrupt(self.source, f"{self.codec} stream is shorter than its index says")
        return views

    def _fill(self, offset: int, views: Sequence[memoryview], peek: bool) -> None:
        total = sum(map(len, views))
        index = self._covering(offset + total, offset)
        if offset < 0 or total == 0 or (index is None and offset + total <= HEAD_LIMIT):
            copy_read(self, offset, views)            # the head, or nothing to do
            return
        if index is None:
            index = self._index_for(offset + total, offset)
        if offset + total > index.size or index.info.get("slow"):
            copy_read(self, offset, views)            # short: raises TruncatedError
            return
        if scatter_parts(self._parts(index, offset, offset + total, peek), views) != total:
            raise corrupt(self.source, f"{self.codec} stream is shorter than its index says")

    def close(self) -> None:
        """Drop decoders and cached spans; the object can still be read after.

        A running index build is left running (other readers share it); a
        failed one is forgotten, so the next read tries again.
        """
        with self._index_lock:
            build = self._build
            if build is not None and build.error is not None:
                self._build = None
        if build is not None:
            build.unfollow()
        self._spans.close()
        self._seq.close()
        self._stream.reset()
        self._cache.discard_prefix(self._owner)
        self._close_decoders()

    # -- public extras ------------------------------------------------------

    def index_state(self) -> str:
        """One line for ``.info``: what the index is and where it came from."""
        index = self._index
        if index is not None:
            return f"{self.codec} {self._describe(index)}, {self._origin}"
        build = self._build
        if build is None:
            end = self._seq.eof_size
            if end is not None:
                return (f"{self.codec}: none needed, the whole stream ({end} bytes) is read "
                        "from its start")
            return f"{self.codec}: index not built yet"
        if build.error is not None:
            return f"{self.codec}: index build failed ({build.error})"
        return build.state(self.codec)

    def build(self) -> CodecSource:
        """Build (or load) the index now, waiting for it."""
        self._ensure_index()
        return self

    def start_build(self) -> IndexBuild | None:
        """Load the index or start building it in the background, without waiting.

        Returns the running build (None if the index is already there).
        """
        return self._start()

    def build_progress(self) -> tuple[int, int] | None:
        """(compressed bytes passed, compressed total) of a build, None if none ran."""
        build = self._build
        return None if build is None else (build.done, build.total)

    # -- internals ------------------------------------------------------------

    def _pieces(self, index: SeekIndex, offset: int, end: int) -> Iterator[bytes | memoryview]:
        """The decoded bytes of ``[offset, end)`` as cached pieces or views of them."""
        for data, lo, n in self._parts(index, offset, end):
            yield data if (lo == 0 and n == len(data)) else memoryview(data)[lo:lo + n]

    def _parts(self, index: SeekIndex, offset: int, end: int,
               peek: bool = False) -> Iterator[tuple[Piece, int, int]]:
        """The decoded bytes of ``[offset, end)`` as (cached piece, start, length).

        ``peek``: a check reads ahead of (or behind) the reader; the stream
        position and the delivered counts are left as they are.
        """
        streaming, run = (False, 0) if peek else self._stream.follow(offset, end)
        if streaming and self._stream.wants_prefetch(run):
            # Before decoding this read: the workers start on the spans after
            # it while this thread decodes its own.
            self._stream.prefetch_after(index, end)
        # A small read that continues no stream is someone waiting (a random
        # read): decode-ahead makes way for it.  A large one is the kernel's
        # readahead of a stream, whose requests overtake each other.  A peek
        # (verify on read widening a read to its checksum group, where most
        # of a random read's decoding happens) is someone waiting unless a
        # stream is under way there.
        if peek:
            urgent = not self._stream.carries(offset)
        else:
            urgent = not streaming and end - offset < STREAM_MIN_READ
        starts = index.starts
        i = bisect_right(starts, offset) - 1
        while offset < end:
            rel = offset - starts[i]
            k = rel // SUB_CHUNK
            data = self._spans.piece(index, i, k, urgent=urgent)
            lo = rel - k * SUB_CHUNK
            n = min(len(data) - lo, end - offset)
            if n <= 0:
                raise corrupt(self.source, f"{self.codec} span {i} is shorter than its index says")
            if streaming:
                self._stream.delivered(i, k, n, len(data), offset - lo + len(data))
            yield data, lo, n
            offset += n
            if offset >= starts[i + 1]:
                i += 1

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.decoded_bytes += n

    def _read_sequential(self, offset: int, size: int) -> bytes:
        out = []
        end = offset + size
        while offset < end:
            k = offset // SEQ_CHUNK
            data = self._cache.get_or_load((self._owner, "seq", k), partial(self._seq.chunk, k))
            lo = offset - k * SEQ_CHUNK
            piece = data[lo:lo + (end - offset)]
            if not piece:
                break                      # end of stream
            out.append(piece)
            offset += len(piece)
        return b"".join(out)

    def _covering(self, end: int, start: int | None = None) -> SeekIndex | None:
        """An index already covering ``[0, end)`` (complete or partial), else
        None; a read from ``start`` close behind a running pass follows it."""
        index = self._index
        if index is not None:
            return index
        build = self._build
        return None if build is None else build.covering(end, start)

    def _index_for(self, end: int, start: int | None = None) -> SeekIndex:
        """An index covering ``[0, end)``: waits for the build to pass ``end``
        (or to finish, for codecs that publish nothing before the end); a
        read from ``start`` then follows the pass (``IndexBuild.wait``)."""
        index = self._index
        if index is not None:
            return index
        build = self._start()
        if build is None:
            index = self._index
            assert index is not None              # loaded by _start
            return index
        return build.wait(end, start)

    def _ensure_index(self) -> SeekIndex:
        """The complete index (waits for the build)."""
        return self._index_for(sys.maxsize)

    def _start(self) -> IndexBuild | None:
        """Load the saved index (None: done) or start the one build (returned)."""
        with self._index_lock:
            if self._index is not None:
                return None
            if self._build is not None:
                return self._build
            store: PersistedIndex[SeekIndex] = PersistedIndex(
                self._store, f"codec-{self.codec}", self._key_paths, extra=f"v{INDEX_VERSION}",
                name=self.name)
            index = store.load(self._decode_payload)
            if index is not None:
                # Prepare first, publish last: a reader that sees the index can use it.
                self._after_index(index)
                self._origin = f"index loaded from {store.path}"
                self._index = index
                return None
            build = IndexBuild(self.name, self.source.size, self._pass,
                               partial(self._finish, store, time.monotonic()),
                               spill_dir=os.path.dirname(store.path) if store.path else None)
            build.sink = self._spans.offer
            build.follow_bytes = min(FOLLOW_BYTES, self._cache.capacity // 4)
            self._build = build
        build.start()
        return build

    def _pass(self, build: IndexBuild) -> SeekIndex:
        """The build thread: the codec's pass, with a bar or log lines."""
        with progress_bar(self.source.size, f"indexing {os.path.basename(self.name)}",
                          self._progress) as update:
            build.listeners.append(update)
            return self._build_index(build)

    def _finish(self, store: PersistedIndex[SeekIndex], started: float,
                index: SeekIndex) -> SeekIndex:
        """The build thread, after the pass: check, persist, publish."""
        index.check()
        origin = f"index built in {time.monotonic() - started:.1f} s"
        if store.path is not None:
            # Serialized only where it is kept: the zstd payload carries every
            # window snapshot (111 MB for the bench's 2 GiB image), written
            # part by part.
            parts = index.to_payload(self.codec, self.source.size)
            path = store.save(parts)
            if path:
                origin += f", saved to {path}"
                index.make_lazy(path, parts.nbytes)
            del parts
        log.info("%s: %s %s", self.name, self.codec, origin)
        self._after_index(index)
        self._origin = origin
        self._index = index
        return index

    def _decode_payload(self, payload: bytes | memoryview, path: str) -> SeekIndex:
        """A persisted payload as this stream's index (ValueError if it does not fit)."""
        loaded = SeekIndex.from_payload(payload, self.codec, self.source.size, path)
        self._check_loaded(loaded)
        return loaded

    # -- codec hooks --------------------------------------------------------

    def _iter_decoded(self) -> Generator[bytes, None, None]:
        """Yield the decompressed stream from its start, in pieces."""
        raise NotImplementedError

    def _build_index(self, build: IndexBuild) -> SeekIndex:
        """One sequential pass over the stream (in the build thread).

        ``build.update`` gets the compressed bytes consumed; codecs that
        finish spans in order ``build.commit`` each (readers use them at once).
        """
        raise NotImplementedError

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        """Span ``i`` whole, every check of the codec done."""
        raise NotImplementedError

    def _iter_span(self, index: SeekIndex, i: int) -> Iterator[Piece]:
        """Span ``i`` in pieces; codecs whose checks cover the whole unit keep
        this default, so nothing is served before the unit verified."""
        yield self._decode_span(index, i)

    def _describe(self, index: SeekIndex) -> str:
        return f"{index.spans} spans"

    @staticmethod
    def _trailing_note(index: SeekIndex, after: str) -> str:
        """``_describe``'s note on bytes after the stream's end (``after``
        names what they follow), or "" where there are none."""
        trailing = index.info.get("trailing")
        return f"; {trailing} trailing bytes after {after} ignored" if trailing else ""

    def _check_loaded(self, index: SeekIndex) -> None:
        """Codec-specific validation of a loaded index (raise ValueError)."""

    def _after_index(self, index: SeekIndex) -> None:
        """Hook run once the index is known, before it is published."""

    def _span_mismatch(self, index: SeekIndex, i: int) -> bool:
        """A piece of span ``i`` failed its recorded sum: True if the codec now
        decodes the span another way (it is tried again), False for damage."""
        return False

    def _close_decoders(self) -> None:
        """Release library decoders."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


__all__ = ["HEAD_LIMIT", "CodecSource"]
