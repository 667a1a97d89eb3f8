"""gzip and bzip2 through rapidgzip: parallel indexing, checkpoint spans.

rapidgzip decodes plain gzip, pigz output, multi-member gzip and every
bzip2 flavour (bzip2, pbzip2's concatenated streams, lbzip2) in parallel,
and exports its checkpoints (bit offset, output offset, 32 KiB window for
deflate) as an index that imports in milliseconds.  The index pass reads
the whole stream once with all cores; spans are the ranges between
checkpoints (about 4 MiB of output each).

rapidgzip objects are not thread-safe, and one left open at interpreter
exit aborts the process (docs/design.md 3).  So: each decoder is used by one
thread at a time (a small pool per source), every decoder is closed by
``close()``, by a finalizer when the source is dropped, and at exit.

Header probes before the index exists use the standard library (zlib,
bz2): cheap to create for thousands of images, nothing to close.
"""

from __future__ import annotations

import atexit
import bz2
import io
import os
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Generator
from typing import Any

import rapidgzip

from imagefs.codecs import tuning
from imagefs.codecs.adapters import SourceReader
from imagefs.codecs.building import IndexBuild
from imagefs.codecs.problems import corrupt, truncated
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.source import CodecSource
from imagefs.errors import ImageError
from imagefs.io.source import ByteSource
from imagefs.services.units import human

#: Live rapidgzip decoders over all sources.  Each holds its own cache of
#: decoded chunks (~80 MB measured after a few dozen span reads) although
#: imagefs caches the spans itself, so they are few and shared LRU-wise:
#: an idle decoder of another image is closed to make room.
MAX_DECODERS = min(4, max(2, os.cpu_count() or 1))

_pools: weakref.WeakSet[_DecoderPool] = weakref.WeakSet()
_pools_lock = threading.Lock()

_global = threading.Condition()
_idle: OrderedDict[int, tuple[_DecoderPool, object]] = OrderedDict()   # LRU, all sources
_total = 0                                  # live decoders, idle or lent


class _DecoderPool:
    """The rapidgzip decoders of one source, each lent to one thread at a time.

    The number of decoders is bounded over all sources (``MAX_DECODERS``).
    ``close_all`` closes the idle ones at once and the lent ones when they
    come back, so a decoder is never closed under a reading thread (except
    ``force`` at interpreter exit, when an open one would abort the process).
    """

    def __init__(self, factory: Callable[[], object]) -> None:
        self._factory = factory
        self._lent: dict[int, object] = {}
        self._retired: set[int] = set()
        with _pools_lock:
            _pools.add(self)

    def acquire(self) -> Any:
        global _total
        evicted = []
        with _global:
            while True:
                for key in reversed(_idle):
                    if _idle[key][0] is self:
                        dec = _idle.pop(key)[1]
                        self._lent[id(dec)] = dec
                        break
                else:
                    dec = None
                if dec is not None:
                    break
                if _total < MAX_DECODERS:
                    _total += 1
                    break
                if _idle:
                    evicted.append(_idle.popitem(last=False)[1][1])
                    _total -= 1
                    continue
                _global.wait()
        for old in evicted:
            _close_quietly(old)
        if dec is not None:
            return dec
        try:
            dec = self._factory()
        except BaseException:
            with _global:
                _total -= 1
                _global.notify_all()
            raise
        with _global:
            self._lent[id(dec)] = dec
        return dec

    def release(self, dec: Any, broken: bool = False) -> None:
        global _total
        with _global:
            self._lent.pop(id(dec), None)
            retire = broken or id(dec) in self._retired
            self._retired.discard(id(dec))
            if retire:
                _total -= 1
            else:
                _idle[id(dec)] = (self, dec)
            _global.notify_all()
        if retire:
            _close_quietly(dec)

    def close_all(self, force: bool = False) -> None:
        global _total
        with _global:
            doomed = [_idle.pop(key)[1] for key in [k for k, v in _idle.items() if v[0] is self]]
            if force:
                doomed += list(self._lent.values())
                self._lent.clear()
            else:
                self._retired.update(self._lent)
            _total -= len(doomed)
            _global.notify_all()
        for dec in doomed:
            _close_quietly(dec)


def _close_quietly(dec: Any) -> None:
    try:
        dec.close()
    except Exception:  # noqa: BLE001 - closing must never raise at exit
        pass


@atexit.register
def _close_everything() -> None:
    with _pools_lock:
        pools = list(_pools)
    for pool in pools:
        pool.close_all(force=True)


class _RapidSource(CodecSource):
    """Shared by gzip and bzip2: index pass, exported index, pooled decoders."""

    #: rapidgzip's chunk size (compressed bytes) for the index pass; it sets
    #: the checkpoint spacing.  None keeps rapidgzip's default (4 MiB).
    chunk_size: int | None = None

    def __init__(self, source: ByteSource, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self._pool = _DecoderPool(self._new_decoder)
        weakref.finalize(self, self._pool.close_all, True)

    def _new_decoder(self) -> Any:
        index = self._index
        assert index is not None
        # The same chunk size as the index pass: with rapidgzip's default a
        # bzip2 read decoded ~4 MiB around every 0.5 MiB span (65 ms vs 15 ms).
        options = {"chunk_size": self.chunk_size} if self.chunk_size else {}
        dec = rapidgzip.RapidgzipFile(SourceReader(self.source), parallelization=1, **options)
        try:
            dec.import_index(io.BytesIO(index.blobs[0]))
        except BaseException:
            dec.close()
            raise
        return dec

    def _build_index(self, build: IndexBuild) -> SeekIndex:
        update = build.update
        threads = tuning.INDEX_THREADS
        options = {"chunk_size": self.chunk_size} if self.chunk_size else {}
        dec = rapidgzip.RapidgzipFile(SourceReader(self.source, update), parallelization=threads,
                                      **options)
        try:
            size = 0
            while True:
                chunk = dec.read(4 << 20)
                if not chunk:
                    break
                size += len(chunk)
            self._count(size)
            offsets = sorted(set(dec.block_offsets().values()))
            out = io.BytesIO()
            dec.export_index(out)
        except (ValueError, RuntimeError, OSError) as exc:
            raise self._damaged(exc) from None
        finally:
            dec.close()
        starts = [0] + [o for o in offsets if 0 < o < size] + [size]
        meta = [0] * (len(starts) - 1)
        return SeekIndex(size, starts, meta, [out.getvalue()],
                         {"checkpoints": len(starts) - 1})

    def _damaged(self, exc: BaseException) -> ImageError:
        text = str(exc)
        if "end" in text.lower() or "truncat" in text.lower() or "eof" in text.lower():
            return truncated(self.source, f"{self.codec} stream ends early ({text})")
        return corrupt(self.source, f"{self.codec} data is damaged ({text})")

    def _check_loaded(self, index: SeekIndex) -> None:
        if len(index.blobs) != 1 or not index.blobs[0].startswith(b"GZIDX"):
            raise ValueError("no rapidgzip index in the payload")

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        start, end = index.starts[i], index.starts[i + 1]
        dec = self._pool.acquire()
        broken = True
        try:
            dec.seek(start)
            data = dec.read(end - start)
            broken = False
            return data
        except (ValueError, RuntimeError, OSError) as exc:
            raise self._damaged(exc) from None
        finally:
            self._pool.release(dec, broken)

    def _describe(self, index: SeekIndex) -> str:
        n = index.spans
        return (f"{n} checkpoint{'s' if n != 1 else ''} (about "
                f"{human(index.size / max(n, 1))} apart)")

    def _close_decoders(self) -> None:
        self._pool.close_all()


class GzipSource(_RapidSource):
    """gzip / pigz / multi-member gzip."""

    codec = "gzip"

    def _iter_decoded(self) -> Generator[bytes, None, None]:
        yield from _members(self.source, lambda: zlib.decompressobj(wbits=31), zlib.error,
                            b"\x1f\x8b", "gzip")


class Bzip2Source(_RapidSource):
    """bzip2 / pbzip2 / lbzip2."""

    codec = "bzip2"
    # bzip2 checkpoints carry no window, so dense ones cost nothing in the
    # index and cut a random read from ~4 MiB of slow bzip2 decoding to
    # about one block (~1 MiB).
    chunk_size = 512 << 10

    def _iter_decoded(self) -> Generator[bytes, None, None]:
        yield from _members(self.source, bz2.BZ2Decompressor, OSError, b"BZh", "bzip2")


def _members(src: ByteSource, new: Callable[[], Any], error: type[Exception], magic: bytes,
             codec: str) -> Generator[bytes, None, None]:
    """Decode concatenated members/streams from the start, in order."""
    pos, total = 0, src.size
    dec = new()
    tail = b""
    while True:
        if tail:
            data, tail = tail, b""
        else:
            if pos >= total:
                break
            data = src.read_at(pos, min(1 << 20, total - pos))
            pos += len(data)
        try:
            out = dec.decompress(data)
        except (error, EOFError) as exc:
            raise corrupt(src, f"{codec} data is damaged ({exc})") from None
        if out:
            yield out
        if dec.eof:
            rest = dec.unused_data
            if not rest and pos < total:
                rest = src.read_at(pos, min(1 << 20, total - pos))
                pos += len(rest)
            if not rest:
                return
            if not rest.startswith(magic):
                return                     # trailing padding/garbage, as gzip -d ignores it
            dec = new()
            tail = rest
    if not dec.eof:
        raise truncated(src, f"{codec} stream ends before its end marker")
