"""Shared machinery of the codecs: spans, the seek index, and the source class.

A compressed stream is served as a list of *spans*: consecutive ranges of
the decompressed output, each of which a codec can decode on its own from a
restart point (a zstd frame or resume point, a gzip checkpoint, an lz4/lzop
block group, an xz block, an lzip member).  ``starts[i]`` is the first
decompressed byte of span ``i``; ``starts[-1]`` is the total size.  A span
decoded once goes into the shared :class:`~imagefs.cache.BlockCache`, so a
random 4 KiB read costs at most one span decode.

Before the index exists, reads near the start are served by decoding from
the beginning (``_iter_decoded``): the mount probes the headers of
thousands of images this way and must not index them all.  Codecs with no
restart points at all (a single-block xz stream) serve every read this way:
the reported "slow path".
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from bisect import bisect_right
from typing import Any, Callable, Iterator, Sequence

from imagefs.cache import BlockCache
from imagefs.errors import CORRUPT_HINT, TRUNCATED_HINT, FormatError, ImageError, TruncatedError
from imagefs.indexdir import IndexStore, source_key
from imagefs.io.source import ByteSource, ConcatSource, FileSource, copy_read, scatter
from imagefs.progress import progress_bar

log = logging.getLogger("imagefs.codecs")

#: Reads ending below this offset are served without building the index.
#: 8 MiB covers every image header and bitmap probe of the format layer.
HEAD_LIMIT = 8 << 20

#: Granularity of the sequential (head / slow path) decoder's cached chunks.
SEQ_CHUNK = 1 << 20

#: Bump when the payload layout of any codec changes: old files are rebuilt.
INDEX_VERSION = 1

_PAYLOAD_MAGIC = b"IFCX"

#: Compressed bytes read per request while scanning a stream.
READ_CHUNK = 4 << 20

#: Spans are cached in sub-chunks of this size: a random 4 KiB read decodes
#: its span only up to the sub-chunk it needs, and the decoder is kept so a
#: sequential reader continues it instead of starting over.  Small pieces
#: also keep allocations reusable (fresh 32 MiB buffers cost page faults).
SUB_CHUNK = 1 << 20

#: Decode the next span in a background thread while a sequential reader
#: consumes this one (span decoding releases the GIL): the codecs whose
#: tools decode in parallel (xz -T0, plzip, pigz helpers) keep up this way.
PREFETCH = (os.cpu_count() or 1) > 1
#: How many spans ahead: one per CPU keeps every core decoding.
PREFETCH_DEPTH = max(1, min(8, os.cpu_count() or 1))
#: ...and at least this many decoded bytes ahead when spans are small.
PREFETCH_BYTES = 8 << 20
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

_prefetch_pool = None
_prefetch_lock = threading.Lock()


def set_threads(n: int) -> None:
    """Threads for prefetching (and so decoding in parallel); 1 disables it."""
    global PREFETCH, PREFETCH_DEPTH, _prefetch_pool
    PREFETCH = n > 1
    PREFETCH_DEPTH = max(1, min(8, n))
    with _prefetch_lock:
        old, _prefetch_pool = _prefetch_pool, None
    if old is not None:
        old.shutdown(wait=False)


def _prefetcher():
    global _prefetch_pool
    with _prefetch_lock:
        if _prefetch_pool is None:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
            _prefetch_pool = ThreadPoolExecutor(max_workers=PREFETCH_DEPTH,
                                                thread_name_prefix="imagefs-prefetch")
        return _prefetch_pool


#: Paused span decoders kept for continuation, over all sources: a bound on
#: their number and on the decoded bytes they hold outside the cache (a
#: codec that decodes whole units leaves the rest of the unit in its cursor).
#: A paused zstd decoder also holds its window (2-8 MiB), so few are kept:
#: one per concurrent sequential reader is what pays off.
MAX_CURSORS = 4
MAX_CURSOR_BYTES = 32 << 20

_default_cache: BlockCache | None = None
_default_cache_lock = threading.Lock()


def default_cache() -> BlockCache:
    """A process-wide cache for callers that do not pass their own (256 MiB)."""
    global _default_cache
    with _default_cache_lock:
        if _default_cache is None:
            _default_cache = BlockCache(256 << 20)
        return _default_cache


def corrupt(source: ByteSource, problem: str) -> ImageError:
    """The error for a stream that decodes to something inconsistent."""
    return FormatError(source.name, problem, CORRUPT_HINT)


def truncated(source: ByteSource, problem: str) -> ImageError:
    return TruncatedError(source.name, problem, TRUNCATED_HINT)


#: Binary extras above this total stay in the index file and are read when
#: a span needs them (zstd window snapshots are ~5% of the image: a mount of
#: many large images must not hold them all in memory).
LAZY_BLOBS = 1 << 20


class LazyBlobs:
    """The blobs of a saved index, read from its file on demand.

    Each read is checked against the CRC-32 recorded in the payload, so an
    index file replaced or damaged after loading is noticed, not trusted.
    """

    def __init__(self, path: str, base: int, lengths: list[int], crcs: list[int]) -> None:
        self.path = path
        self._lengths = lengths
        self._crcs = crcs
        self._offsets = []
        pos = base
        for n in lengths:
            self._offsets.append(pos)
            pos += n

    def __len__(self) -> int:
        return len(self._lengths)

    def __getitem__(self, i: int) -> bytes:
        n = self._lengths[i]
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offsets[i])
                data = f.read(n)
        except OSError as exc:
            raise FormatError(self.path, f"cannot read the index file ({exc.strerror})",
                              "delete it; it is rebuilt on the next open") from None
        if len(data) != n or zlib.crc32(data) != self._crcs[i]:
            raise FormatError(self.path, "the index file changed or is damaged",
                              "delete it; it is rebuilt on the next open")
        return data

    def total(self) -> int:
        return sum(self._lengths)


@dataclass
class SeekIndex:
    """Where each span of the decompressed stream starts and how to decode it.

    ``meta[i]`` is codec-specific JSON-able data for span ``i``; ``blobs``
    hold binary extras (window snapshots, a library's exported index) that
    ``meta`` refers to by position; ``info`` is a small summary for
    ``index_state``.
    """

    size: int
    starts: list[int]
    meta: list[Any]
    blobs: "list[bytes] | LazyBlobs" = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def blob_bytes(self) -> int:
        return self.blobs.total() if isinstance(self.blobs, LazyBlobs) else sum(map(len, self.blobs))

    def make_lazy(self, path: str, payload_len: int) -> None:
        """Leave the blobs in the saved file ``path`` (payload at its end)."""
        if isinstance(self.blobs, LazyBlobs) or self.blob_bytes() <= LAZY_BLOBS:
            return
        blobs = list(self.blobs)
        head = payload_len - sum(map(len, blobs))
        try:
            base = os.path.getsize(path) - payload_len + head
        except OSError:
            return
        self.blobs = LazyBlobs(path, base, [len(b) for b in blobs],
                               [zlib.crc32(b) for b in blobs])

    @property
    def spans(self) -> int:
        return len(self.meta)

    def to_payload(self, codec: str, comp_size: int) -> bytes:
        blobs = [self.blobs[i] for i in range(len(self.blobs))]
        head = {"v": INDEX_VERSION, "codec": codec, "comp_size": comp_size,
                "size": self.size, "starts": self.starts, "meta": self.meta,
                "info": self.info, "blobs": [len(b) for b in blobs]}
        text = json.dumps(head, separators=(",", ":")).encode()
        return b"".join([_PAYLOAD_MAGIC, struct.pack("<I", len(text)), text, *blobs])

    @classmethod
    def from_payload(cls, payload: bytes, codec: str, comp_size: int) -> "SeekIndex":
        """Parse and check a payload; ValueError says what does not fit."""
        if payload[:4] != _PAYLOAD_MAGIC:
            raise ValueError("not a codec index")
        (length,) = struct.unpack_from("<I", payload, 4)
        head = json.loads(payload[8:8 + length].decode())
        if head.get("v") != INDEX_VERSION or head.get("codec") != codec:
            raise ValueError("index of another codec or version")
        if head.get("comp_size") != comp_size:
            raise ValueError("index was built for a stream of another size")
        blobs = []
        pos = 8 + length
        for n in head["blobs"]:
            if pos + n > len(payload):
                raise ValueError("blob beyond the end of the payload")
            blobs.append(payload[pos:pos + n])
            pos += n
        if pos != len(payload):
            raise ValueError("trailing bytes after the blobs")
        index = cls(int(head["size"]), [int(s) for s in head["starts"]], head["meta"],
                    blobs, head.get("info", {}))
        index.check()
        return index

    def check(self) -> None:
        starts = self.starts
        if len(starts) != len(self.meta) + 1 or starts[0] != 0 or starts[-1] != self.size:
            raise ValueError("span table does not cover the stream")
        if any(b < a for a, b in zip(starts, starts[1:])):
            raise ValueError("span table is not ordered")


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

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self._source.read_at(self._pos, len(buffer))
        n = len(data)
        buffer[:n] = data
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


#: Sequential decoders kept alive over all sources.  A mount probes the
#: headers of thousands of images; each live decoder holds its library's
#: window (up to 64 MiB for xz -9) and a few recent chunks, so only the most
#: recently used few stay alive; the others restart if asked again.
MAX_LIVE_SEQUENTIAL = 4

_live_lock = threading.Lock()
_live: "OrderedDict[int, _Sequential]" = OrderedDict()


class _Sequential:
    """Decode from the start, in order, caching fixed-size chunks.

    Serves header probes before an index exists and the slow path of
    streams without restart points.  One decoder per source, under a lock;
    a request behind the decoder's position restarts it from the start.
    """

    def __init__(self, owner: "CodecSource") -> None:
        self._owner = owner
        self._lock = threading.Lock()
        self._gen: Iterator[bytes] | None = None
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
                self._gen = self._owner._iter_decoded()
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
                self._owner._count(len(piece))
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


class _Cursor:
    """A paused decoder inside span ``span``; ``k`` is its next sub-chunk."""

    __slots__ = ("span", "k", "it", "buf", "pos")

    def __init__(self, span: int, it: Iterator[bytes]) -> None:
        self.span = span
        self.k = 0
        self.it: Iterator[bytes] | None = it
        self.buf = b""
        self.pos = 0

    def take(self, n: int, count: Callable[[int], None]) -> bytes:
        """Up to ``n`` more decoded bytes (fewer only at the end of the span)."""
        parts: list = []
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
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)              # the one copy of these bytes

    def held(self) -> int:
        return len(self.buf) - self.pos

    def close(self) -> None:
        it, self.it = self.it, None
        if it is not None and hasattr(it, "close"):
            it.close()
        self.buf = b""


class _CursorPool:
    """Paused span decoders of every source, least recently used first."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[Any, _Cursor]] = []
        self.max_count = max_count
        self.max_bytes = max_bytes

    def take(self, owner: Any, span: int, k: int) -> _Cursor | None:
        """The cursor of ``owner``'s span furthest along but not past ``k``."""
        with self._lock:
            best = None
            for n, (o, cur) in enumerate(self._items):
                if o == owner and cur.span == span and cur.k <= k and (
                        best is None or cur.k > self._items[best][1].k):
                    best = n
            return None if best is None else self._items.pop(best)[1]

    def put(self, owner: Any, cur: _Cursor) -> None:
        evicted = []
        with self._lock:
            self._items.append((owner, cur))
            held = sum(c.held() for _, c in self._items)
            while len(self._items) > self.max_count or (held > self.max_bytes
                                                        and len(self._items) > 1):
                _, old = self._items.pop(0)
                held -= old.held()
                evicted.append(old)
        for old in evicted:
            old.close()

    def drop(self, owner: Any) -> None:
        with self._lock:
            mine = [c for o, c in self._items if o == owner]
            self._items = [(o, c) for o, c in self._items if o != owner]
        for cur in mine:
            cur.close()


def default_key_paths(source: ByteSource) -> list[str] | None:
    """The files behind ``source`` when it is a file or a piece set of files."""
    if isinstance(source, FileSource):
        return [source.path]
    if isinstance(source, ConcatSource) and all(isinstance(p, FileSource) for p in source.parts):
        return [p.path for p in source.parts]  # type: ignore[attr-defined]
    return None


_cursors = _CursorPool(MAX_CURSORS, MAX_CURSOR_BYTES)


class CodecSource:
    """A decompressed stream as a :class:`~imagefs.io.source.ByteSource`.

    Subclasses set ``codec`` and implement ``_iter_decoded`` (decode from the
    start), ``_build_index`` (one sequential pass) and ``_decode_span``.
    """

    codec = "?"

    def __init__(self, source: ByteSource, *, index_store: IndexStore | None = None,
                 cache: BlockCache | None = None, key_paths: list[str] | None = None,
                 progress: bool | None = None) -> None:
        self.source = source
        self.name = source.name
        self._store = index_store
        self._cache = cache if cache is not None else default_cache()
        self._key_paths = key_paths if key_paths is not None else default_key_paths(source)
        self._progress = progress
        self._index: SeekIndex | None = None
        self._index_lock = threading.Lock()
        self._origin = ""                  # how the index came to be (for index_state)
        self._count_lock = threading.Lock()
        self.decoded_bytes = 0
        self.spans_decoded = 0
        self._seq = _Sequential(self)
        self._owner = ("codec", id(self), time.monotonic_ns())   # cache key prefix
        self._last_end: int | None = None  # where the streaming reader's reads reach
        self._stream_start = 0             # where that stream began
        self._consumed: dict[tuple[int, int], int] = {}  # piece -> bytes delivered
        self._inflight: dict[int, int] = {}  # span being prefetched -> pieces done
        self._prefetch_cond = threading.Condition()
        self.prefetch: bool | None = None  # None: follow the process setting

    # -- ByteSource -------------------------------------------------------

    @property
    def size(self) -> int:
        return self._ensure_index().size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        if size == 0:
            return b""
        index = self._index
        if index is None and offset + size <= HEAD_LIMIT:
            # A stream read from its start continues past the head: follow it,
            # so the first indexed read already counts as streaming.
            self._follow(offset, offset + size)
            return self._read_sequential(offset, size)
        index = self._ensure_index()
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
        total = sum(map(len, views))
        index = self._index
        if offset < 0 or total == 0 or (index is None and offset + total <= HEAD_LIMIT):
            copy_read(self, offset, views)            # the head, or nothing to do
            return
        index = self._ensure_index()
        if offset + total > index.size or index.info.get("slow"):
            copy_read(self, offset, views)            # short: raises TruncatedError
            return
        if scatter(self._pieces(index, offset, offset + total), views) != total:
            raise corrupt(self.source, f"{self.codec} stream is shorter than its index says")

    def _pieces(self, index: SeekIndex, offset: int, end: int) -> Iterator[bytes | memoryview]:
        """The decoded bytes of ``[offset, end)`` as cached pieces or views of them."""
        streaming, run = self._follow(offset, end)
        if streaming and run >= PREFETCH_AFTER and (
                PREFETCH if self.prefetch is None else self.prefetch):
            # Before decoding this read: the workers start on the spans after
            # it while this thread decodes its own.
            self._prefetch_after(index, end)
        starts = index.starts
        i = bisect_right(starts, offset) - 1
        while offset < end:
            rel = offset - starts[i]
            k = rel // SUB_CHUNK
            data = self._sub(i, k)
            lo = rel - k * SUB_CHUNK
            n = min(len(data) - lo, end - offset)
            if n <= 0:
                raise corrupt(self.source, f"{self.codec} span {i} is shorter than its index says")
            if streaming:
                self._delivered(i, k, n, len(data))
            yield data if (lo == 0 and n == len(data)) else memoryview(data)[lo:lo + n]
            offset += n
            if offset >= starts[i + 1]:
                i += 1

    def _follow(self, offset: int, end: int) -> tuple[bool, int]:
        """Whether ``[offset, end)`` continues the stream, and how far the stream has run.

        FUSE serves the kernel's readahead with several threads, so
        consecutive requests arrive slightly out of order (a third of them,
        measured): a large read "near where the stream has got to" continues
        it; a small one only right where it ended (random 4 KiB reads close
        to each other are not a stream).
        """
        last = self._last_end
        streaming = last is not None and (
            offset == last or (end - offset >= STREAM_MIN_READ
                               and last - STREAM_SLACK <= offset <= last + STREAM_SLACK))
        if streaming:
            self._last_end = max(last, end)  # type: ignore[type-var]
        else:
            self._last_end, self._stream_start = end, offset
        return streaming, self._last_end - self._stream_start  # type: ignore[operator]

    def _delivered(self, i: int, k: int, n: int, size: int) -> None:
        """Count a streaming reader's bytes of piece (i, k); free it once all are out.

        The kernel's page cache keeps what was read, so a streamed piece is
        not needed again: freeing it lets the next decoded piece reuse its
        memory instead of faulting in fresh pages (that halved decoding
        speed) and keeps the shared LRU for random access.  Counting bytes
        rather than "the read reached the piece's end" matters when requests
        overtake each other: the tail of a piece may be delivered before its
        head, and freeing it then would force the head's reader to decode the
        span again from its start.
        """
        key = (i, k)
        with self._count_lock:
            done = self._consumed.pop(key, 0) + n
            if done < size:
                if len(self._consumed) >= MAX_TRACKED_PIECES:
                    self._consumed.clear()       # abandoned streams: forget them
                self._consumed[key] = done
        if done >= size:
            self._cache.discard((self._owner, "sub", i, k))

    def _prefetch_after(self, index: SeekIndex, end: int) -> None:
        """Queue background decoding of the spans that follow offset ``end``."""
        starts = index.starts
        nxt = bisect_right(starts, end - 1)
        # Never prefetch more than half the cache: prefetched pieces
        # evicted before use would be decoded twice.
        budget = self._cache.capacity // 2
        j = nxt
        # At least one span per worker, and small spans (bzip2 blocks, gzip
        # chunks) until PREFETCH_BYTES are under way: one span each kept the
        # workers barely a read ahead of the reader.
        while j < index.spans and (j < nxt + PREFETCH_DEPTH
                                   or starts[j] - end < PREFETCH_BYTES):
            budget -= starts[j + 1] - starts[j]
            if budget < 0:
                break
            self._prefetch(j)
            j += 1

    def _prefetch(self, j: int) -> None:
        """Decode span ``j`` in the background, piece by piece, into the cache."""
        with self._prefetch_cond:
            if j in self._inflight:
                return
            if self._cache.get((self._owner, "sub", j, 0)) is not None:
                return
            self._inflight[j] = 0

        def run() -> None:
            index = self._index
            try:
                count = -(-(index.starts[j + 1] - index.starts[j]) // SUB_CHUNK)
                for k in range(count):
                    self._sub(j, k, prefetching=True)
                    with self._prefetch_cond:
                        self._inflight[j] = k + 1
                        self._prefetch_cond.notify_all()
            except Exception:  # noqa: BLE001 - the reader's own request reports it
                pass
            finally:
                with self._prefetch_cond:
                    self._inflight.pop(j, None)
                    self._prefetch_cond.notify_all()

        try:
            _prefetcher().submit(run)
        except RuntimeError:               # the interpreter is shutting down
            with self._prefetch_cond:
                self._inflight.pop(j, None)

    def close(self) -> None:
        """Drop decoders and cached spans; the object can still be read after."""
        _cursors.drop(self._owner)
        self._seq.close()
        self._last_end = None              # the next read starts afresh
        with self._count_lock:
            self._consumed.clear()
        self._cache.discard_prefix(self._owner)
        self._close_decoders()

    # -- public extras ------------------------------------------------------

    def index_state(self) -> str:
        """One line for ``.info``: what the index is and where it came from."""
        index = self._index
        if index is None:
            return f"{self.codec}: index not built yet"
        return f"{self.codec} {self._describe(index)}, {self._origin}"

    def build(self) -> "CodecSource":
        """Build (or load) the index now."""
        self._ensure_index()
        return self

    # -- internals ------------------------------------------------------------

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.decoded_bytes += n

    def _read_sequential(self, offset: int, size: int) -> bytes:
        out = []
        end = offset + size
        while offset < end:
            k = offset // SEQ_CHUNK
            data = self._cache.get_or_load((self._owner, "seq", k), lambda k=k: self._seq.chunk(k))
            lo = offset - k * SEQ_CHUNK
            piece = data[lo:lo + (end - offset)]
            if not piece:
                break                      # end of stream
            out.append(piece)
            offset += len(piece)
        return b"".join(out)

    def _sub(self, i: int, k: int, prefetching: bool = False) -> bytes:
        key = (self._owner, "sub", i, k)
        if not prefetching and self._inflight:
            # A background decoder is working through this span: wait for it
            # to reach piece k rather than start a second decoder.
            with self._prefetch_cond:
                while i in self._inflight and self._inflight[i] <= k:
                    if self._cache.get(key) is not None:
                        break
                    self._prefetch_cond.wait()
        return self._cache.get_or_load(key, lambda: self._load_sub(i, k))

    def _load_sub(self, i: int, k: int) -> bytes:
        index = self._index
        assert index is not None
        span_len = index.starts[i + 1] - index.starts[i]
        count = -(-span_len // SUB_CHUNK)
        cur = _cursors.take(self._owner, i, k)
        if cur is None:
            cur = _Cursor(i, self._iter_span(index, i))
            with self._count_lock:
                self.spans_decoded += 1
        result = b""
        try:
            while cur.k <= k:
                want = min(SUB_CHUNK, span_len - cur.k * SUB_CHUNK)
                data = cur.take(want, self._count)
                if len(data) != want:
                    raise corrupt(self.source, f"{self.codec} span {i} decoded to fewer "
                                  f"bytes than its index says ({span_len})")
                if cur.k == k:
                    result = data
                else:
                    # Earlier pieces decoded on the way: cache them too (a loader
                    # only ever waits for lower-numbered pieces, so no cycle).
                    self._cache.get_or_load((self._owner, "sub", i, cur.k), lambda d=data: d)
                cur.k += 1
            if cur.k >= count:
                if cur.take(1, self._count):
                    raise corrupt(self.source, f"{self.codec} span {i} decoded to more "
                                  f"bytes than its index says ({span_len})")
                cur.close()
            else:
                _cursors.put(self._owner, cur)
        except BaseException:
            cur.close()
            raise
        return result

    def _key(self) -> str | None:
        if self._store is None or not self._key_paths:
            return None
        try:
            return source_key(f"codec-{self.codec}", self._key_paths, extra=f"v{INDEX_VERSION}")
        except OSError as exc:
            log.warning("%s: cannot stat the pieces for the index key (%s); "
                        "the index is kept in memory only", self.name, exc)
            return None

    def _ensure_index(self) -> SeekIndex:
        index = self._index
        if index is not None:
            return index
        with self._index_lock:
            if self._index is not None:
                return self._index
            key = self._key()
            kind = f"codec-{self.codec}"
            if key is not None:
                payload = self._store.load(kind, key)  # type: ignore[union-attr]
                if payload is not None:
                    path = self._store.path_for(kind, key)  # type: ignore[union-attr]
                    try:
                        loaded = SeekIndex.from_payload(payload, self.codec, self.source.size)
                        self._check_loaded(loaded)
                        loaded.make_lazy(path, len(payload))
                    except (ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
                        log.warning("index %s is unusable (%s); rebuilding it", path, exc)
                    else:
                        self._index = loaded
                        self._origin = f"index loaded from {path}"
                        self._after_index(loaded)
                        return loaded
            started = time.monotonic()
            with progress_bar(self.source.size, f"indexing {os.path.basename(self.name)}",
                              self._progress) as update:
                built = self._build_index(update)
            built.check()
            took = time.monotonic() - started
            origin = f"index built in {took:.1f} s"
            if key is not None:
                payload = built.to_payload(self.codec, self.source.size)
                path = self._store.save(kind, key, payload)  # type: ignore[union-attr]
                if path:
                    origin += f", saved to {path}"
                    built.make_lazy(path, len(payload))
                del payload
            log.info("%s: %s %s", self.name, self.codec, origin)
            self._index = built
            self._origin = origin
            self._after_index(built)
            return built

    # -- codec hooks --------------------------------------------------------

    def _iter_decoded(self) -> Iterator[bytes]:
        """Yield the decompressed stream from its start, in pieces."""
        raise NotImplementedError

    def _build_index(self, update: Callable[[int], None]) -> SeekIndex:
        """One sequential pass over the stream; ``update`` gets compressed bytes."""
        raise NotImplementedError

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        """Span ``i`` whole, every check of the codec done."""
        raise NotImplementedError

    def _iter_span(self, index: SeekIndex, i: int) -> Iterator[bytes]:
        """Span ``i`` in pieces; codecs whose checks cover the whole unit keep
        this default, so nothing is served before the unit verified."""
        yield self._decode_span(index, i)

    def _describe(self, index: SeekIndex) -> str:
        return f"{index.spans} spans"

    def _check_loaded(self, index: SeekIndex) -> None:
        """Codec-specific validation of a loaded index (raise ValueError)."""

    def _after_index(self, index: SeekIndex) -> None:
        """Hook run once the index is known (prepare decoders)."""

    def _close_decoders(self) -> None:
        """Release library decoders."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
