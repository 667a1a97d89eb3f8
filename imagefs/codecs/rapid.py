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

import bz2
import io
import logging
import re
import weakref
import zlib
from collections.abc import Callable, Generator
from typing import Any

import rapidgzip

from imagefs.codecs import rapidpool, tuning
from imagefs.codecs.adapters import SourceReader, drain
from imagefs.codecs.building import IndexBuild
from imagefs.codecs.problems import corrupt, truncated
from imagefs.codecs.rapidpool import DecoderPool
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.source import CodecSource
from imagefs.codecs.streamend import bzip2_end, gzip_end
from imagefs.errors import ImageError
from imagefs.io.source import ByteSource, SliceSource
from imagefs.services import libstderr
from imagefs.services.units import human

log = logging.getLogger("imagefs.codecs")

class _LibraryError(Exception):
    """rapidgzip failed; ``exc`` is what it raised (turned into one line later)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


class _RapidSource(CodecSource):
    """Shared by gzip and bzip2: index pass, exported index, pooled decoders."""

    #: rapidgzip's chunk size (compressed bytes) for the index pass; it sets
    #: the checkpoint spacing.  None keeps rapidgzip's default (4 MiB).
    chunk_size: int | None = None

    def __init__(self, source: ByteSource, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self._pool = DecoderPool(self._new_decoder)
        weakref.finalize(self, self._pool.close_all, True)

    def _compressed(self, index: SeekIndex | None = None) -> ByteSource:
        """The compressed bytes rapidgzip reads: the file without trailing bytes."""
        end = (index.info.get("stream_end") if index is not None else None) or self.source.size
        if end >= self.source.size:
            return self.source
        return SliceSource(self.source, 0, end)

    def _new_decoder(self) -> Any:
        index = self._index
        assert index is not None
        libstderr.install()
        # The same chunk size as the index pass: with rapidgzip's default a
        # bzip2 read decoded ~4 MiB around every 0.5 MiB span (65 ms vs 15 ms).
        options = {"chunk_size": self.chunk_size} if self.chunk_size else {}
        dec = rapidgzip.RapidgzipFile(SourceReader(self._compressed(index)), parallelization=1,
                                      **options)
        try:
            dec.import_index(io.BytesIO(index.blobs[0]))
        except BaseException:
            dec.close()
            raise
        return dec

    def _build_index(self, build: IndexBuild) -> SeekIndex:
        libstderr.install()
        index: SeekIndex = rapidpool.run(lambda: self._index_pass(build))
        return index

    def _index_pass(self, build: IndexBuild) -> SeekIndex:
        try:
            return self._rapid_pass(build, self.source)
        except _LibraryError as failed:
            # Trailing bytes after the last member make rapidgzip fail; find
            # where the stream really ends (or say it is incomplete/damaged).
            end = self._find_end()
            if end >= self.source.size:
                raise self._damaged(failed.exc) from None
            log.info("%s: %d trailing bytes after the %s stream are ignored", self.name,
                     self.source.size - end, self.codec)
            build.restart()
            try:
                index = self._rapid_pass(build, SliceSource(self.source, 0, end))
            except _LibraryError as again:
                raise self._damaged(again.exc) from None
            index.info["stream_end"] = end
            index.info["trailing"] = self.source.size - end
            return index

    def _find_end(self) -> int:
        raise NotImplementedError

    def _rapid_pass(self, build: IndexBuild, src: ByteSource) -> SeekIndex:
        threads = max(1, min(tuning.INDEX_THREADS, rapidpool.plan()[1]))
        options = {"chunk_size": self.chunk_size} if self.chunk_size else {}
        dec = rapidgzip.RapidgzipFile(SourceReader(src, build.update), parallelization=threads,
                                      **options)
        try:
            size = 0
            while True:
                chunk = dec.read(4 << 20)
                if not chunk:
                    break
                size += len(chunk)
            # rapidgzip returns a cut gzip stream short without an error: a
            # complete one was decoded to its very last bit.
            if dec.tell_compressed() < src.size * 8:
                raise _LibraryError(EOFError("the stream ends before its end marker"))
            offsets = sorted(set(dec.block_offsets().values()))
            out = io.BytesIO()
            dec.export_index(out)
        except (ValueError, RuntimeError, OSError, EOFError) as exc:
            raise _LibraryError(exc) from None
        finally:
            dec.close()
        self._count(size)
        starts = [0] + [o for o in offsets if 0 < o < size] + [size]
        meta = [0] * (len(starts) - 1)
        return SeekIndex(size, starts, meta, [out.getvalue()],
                         {"checkpoints": len(starts) - 1})

    def _damaged(self, exc: BaseException) -> ImageError:
        # One line of our own: the library's text (with its block dumps) goes
        # to the debug log only.
        text = str(exc)
        log.debug("%s: %s library error: %s", self.name, self.codec, text)
        low = text.lower()
        if isinstance(exc, EOFError) or "end of file" in low or "truncat" in low \
                or "unexpected end" in low:
            return truncated(self.source, f"{self.codec} stream is incomplete: it ends "
                             "before its end marker")
        first = text.splitlines()[0] if text else type(exc).__name__
        first = re.sub(r"\s+", " ", first)[:120]
        return corrupt(self.source, f"{self.codec} data is damaged ({first})")

    def _check_loaded(self, index: SeekIndex) -> None:
        if len(index.blobs) != 1 or not index.blobs[0].startswith(b"GZIDX"):
            raise ValueError("no rapidgzip index in the payload")

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        data: bytes = rapidpool.run(lambda: self._decode_here(index, i))
        return data

    def _decode_here(self, index: SeekIndex, i: int) -> bytes:
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
        text = (f"{n} checkpoint{'s' if n != 1 else ''} (about "
                f"{human(index.size / max(n, 1))} apart)")
        return text + self._trailing_note(index, "the stream")

    def _close_decoders(self) -> None:
        self._pool.close_all()


class GzipSource(_RapidSource):
    """gzip / pigz / multi-member gzip."""

    codec = "gzip"
    # Checkpoints about 1 MiB of compressed bytes apart instead of
    # rapidgzip's 4 MiB: on the bench's 2 GiB image (pigz --fast) the index
    # grows from 8 to 33 MB (a 32 KiB window each) and the pass from 3.3 to
    # 3.6 s (pigz -dc: 4.8 s), and a random 4 KiB read decodes a quarter as
    # much: 5.9 -> 1.7 ms in process.
    chunk_size = 1 << 20

    def _find_end(self) -> int:
        return gzip_end(self.source)

    def _iter_decoded(self) -> Generator[bytes, None, None]:
        yield from _members(self.source, lambda: zlib.decompressobj(wbits=31), zlib.error,
                            b"\x1f\x8b", "gzip")


class Bzip2Source(_RapidSource):
    """bzip2 / pbzip2 / lbzip2."""

    codec = "bzip2"

    def _find_end(self) -> int:
        return bzip2_end(self.source)
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
            yield from drain(dec, data)
        except (error, EOFError) as exc:
            raise corrupt(src, f"{codec} data is damaged ({exc})") from None
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
