"""zstd: frames, pzstd's skippable frames, and resume points.

Every frame start is a restart point for any decoder.  Inside a large
frame (``zstd -T0`` writes one frame for the whole image) a block boundary
is a restart point when decoding a synthesized frame header plus the
original blocks from there, with the preceding window loaded as a
raw-content prefix dictionary, gives the same bytes as the sequential
decode (docs/formats.md 6.4).  The index pass (:mod:`~imagefs.codecs.zstdindex`)
picks such points about every ``spacing`` bytes and records a sum of every
decoded piece; spans decode from their point and every piece is checked
against its sum before it is served.  A point whose span diverges from the
stream (never seen on real data: a repeat offset from before the point
that happens to produce the same first block) is caught by the sums, and
the span is then decoded from the previous point, then from the frame
start (:meth:`ZstdSource._span_mismatch`); reported in ``index_state``.

Window snapshots are stored zstd-compressed in the index file.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterator
from types import ModuleType
from typing import Any

from imagefs.codecs import zstdspan
from imagefs.codecs.adapters import DRAIN_STEP, drain
from imagefs.codecs.building import IndexBuild
from imagefs.codecs.cursors import Piece
from imagefs.codecs.problems import corrupt, truncated
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.source import CodecSource
from imagefs.codecs.spans import SUB_CHUNK, SpanMismatch
from imagefs.codecs.zstdframe import (
    MAX_WINDOW,
    SKIPPABLE_MAGIC,
    SKIPPABLE_MASK,
    ZSTD_MAGIC,
    synth_header,
)
from imagefs.codecs.zstdstream import StreamDecoder, ZstdStreamError, stream_decoder
from imagefs.io.scatter import buffer_address
from imagefs.io.source import ByteSource
from imagefs.services.units import human

log = logging.getLogger("imagefs.codecs")

# The index pass, spans and the head of an unindexed stream are decoded
# through the system libzstd itself (zstdstream, zstdspan); the window
# snapshots and, without that library, the rest through pyzstd, whose
# max_length writes each piece straight into a buffer of the piece's size
# and bounds what a few compressed bytes may expand to (adapters.drain).
# pyzstd is imported when first needed (see _pyzstd).

#: Output between resume points inside one frame.  32 MiB keeps a random
#: read under ~40 ms at zstd's ~1 GB/s and the snapshots (one window each,
#: compressed) at a few percent of the image.
DEFAULT_SPACING = 32 << 20

#: Light points (zstdindex) that fail before a stream stops using them: one
#: may be a fluke of its data, two say the stream was not written the way
#: they assume, and each failure costs a wasted decode.
LIGHT_FAILURE_LIMIT = 2

#: Compressed bytes read at a time when streaming a span (the decoder keeps
#: what one piece does not use for the next).  A random read stops a few MiB
#: into its span and wastes what it read beyond: at 4 MiB that was about
#: a sixth of its CPU (4.4-4.6 -> 3.7 ms per random 4 KiB read of the bench image);
#: sequential speed is the same from 1 to 4 MiB.
STREAM_CHUNK = 1 << 20


def _pyzstd() -> ModuleType:
    """pyzstd, imported on first use: its import (with typing_extensions and
    inspect) took 5-10 ms, and a mount's first read of an unindexed zstd
    image, or its index pass, no longer needs it."""
    import pyzstd
    return pyzstd


def _decoder_options() -> dict[int, int]:
    """The window limit above, as a pyzstd decoder option."""
    return {_pyzstd().DParameter.windowLogMax: MAX_WINDOW.bit_length() - 1}


class ZstdSource(CodecSource):
    """A zstd stream (one or many frames) with frame and resume-point spans."""

    codec = "zstd"
    FAST_DECODER = True

    def __init__(self, source: ByteSource, *, spacing: int | None = None, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self.spacing = spacing or DEFAULT_SPACING
        #: span -> the earlier span whose origin decodes it (after a sum mismatch)
        self._fallback: dict[int, int] = {}
        #: light points that did not hold; from LIGHT_FAILURE_LIMIT on none is used
        self._light_failures = 0
        self._fallback_lock = threading.Lock()

    # Sequential decoding (head probes) ----------------------------------

    def _iter_decoded(self) -> Generator[bytes, None, None]:
        # Frame by frame, so that the end of the last frame is known exactly:
        # bytes after it that are no frame are trailing data (zstd -t warns
        # and ignores them), not damage.
        dec = stream_decoder(MAX_WINDOW)
        if dec is None:
            yield from self._iter_decoded_pyzstd()
            return
        try:
            yield from self._iter_decoded_libzstd(dec)
        finally:
            dec.close()

    def _next_frame(self, buf: bytes, at: int, pos: int) -> tuple[bytes, int, int] | None:
        """Where the next frame starts, for the head decoders: from ``buf``
        (bytes read, not yet decoded from ``at`` on; ``pos`` the offset of
        the next read), pzstd's skippable frames skipped, the same three
        with ``buf[at:]`` starting at its magic; None at the stream's end
        or where trailing bytes that are no frame follow."""
        src = self.source
        total = src.size
        while True:
            while len(buf) - at < 8 and pos < total:
                more = src.read_at(pos, min(1 << 20, total - pos))
                if not more:
                    break
                pos += len(more)
                buf, at = buf[at:] + more, 0
            if len(buf) - at < 4:
                return None                   # the end, or a few trailing bytes
            magic = int.from_bytes(buf[at:at + 4], "little")
            if magic & SKIPPABLE_MASK != SKIPPABLE_MAGIC:
                return (buf, at, pos) if magic == ZSTD_MAGIC else None
            skip = 8 + int.from_bytes(buf[at + 4:at + 8], "little")
            if skip <= len(buf) - at:
                at += skip
            else:
                pos += skip - (len(buf) - at)
                buf, at = b"", 0
                if pos > total:
                    raise truncated(src, "zstd skippable frame is cut short")

    def _iter_decoded_libzstd(self, dec: StreamDecoder) -> Generator[bytes, None, None]:
        """The decoded stream through the system libzstd, DRAIN_STEP bytes at
        most per output (adapters.drain says why)."""
        src = self.source
        total = src.size
        out = bytearray(DRAIN_STEP)
        out_at = buffer_address(memoryview(out))
        frame = self._next_frame(b"", 0, 0)
        while frame is not None:
            buf, at, pos = frame
            dec.begin(b"")
            while True:
                left = len(buf) - at
                dec.set_input(buffer_address(buf) + at if left else 0, left)
                dec.set_output(out_at, DRAIN_STEP)
                try:
                    ended = dec.step()
                except ZstdStreamError as exc:
                    raise corrupt(src, f"zstd data is damaged ({exc})") from None
                took, wrote = dec.in_pos, dec.out_pos
                at += took
                if wrote:
                    yield bytes(memoryview(out)[:wrote])
                if ended:
                    break
                if wrote == DRAIN_STEP or (took and at < len(buf)):
                    continue                  # output left to flush, or input
                if at < len(buf):
                    raise corrupt(src, "zstd data is damaged (libzstd took none of it)")
                if pos >= total:
                    raise truncated(src, "zstd stream ends inside a frame")
                buf, at = src.read_at(pos, min(1 << 20, total - pos)), 0
                pos += len(buf)
            frame = self._next_frame(buf, at, pos)

    def _iter_decoded_pyzstd(self) -> Generator[bytes, None, None]:
        """:meth:`_iter_decoded` without the system libzstd."""
        pyzstd = _pyzstd()
        src = self.source
        total = src.size
        frame = self._next_frame(b"", 0, 0)
        while frame is not None:
            buf, at, pos = frame
            buf = buf[at:]
            dec = pyzstd.ZstdDecompressor(option=_decoder_options())   # one frame
            while True:
                try:
                    yield from drain(dec, buf)
                except pyzstd.ZstdError as exc:
                    raise corrupt(src, f"zstd data is damaged ({exc})") from None
                if dec.eof:
                    buf = dec.unused_data
                    break
                if pos >= total:
                    raise truncated(src, "zstd stream ends inside a frame")
                buf = src.read_at(pos, min(1 << 20, total - pos))
                pos += len(buf)
            frame = self._next_frame(buf, 0, pos)

    # Index --------------------------------------------------------------

    def _build_index(self, build: IndexBuild) -> SeekIndex:
        # Imported here: a mount that reads only indexed images (or their
        # heads) never loads the pass.
        from imagefs.codecs.zstdindex import build_zstd_index
        index = build_zstd_index(self.source, build, self.spacing)
        self._count(index.size)
        return index

    def _check_loaded(self, index: SeekIndex) -> None:
        for m in index.meta:
            kind, origin = m[0], m[1]
            if kind != "p" or origin[0] not in ("f", "r", "l") or len(m) != 4:
                raise ValueError("unknown zstd span kind")
            if origin[0] != "f" and not 0 <= origin[3] < len(index.blobs):
                raise ValueError("zstd span refers to a missing snapshot")

    def _describe(self, index: SeekIndex) -> str:
        info = index.info
        frames = info.get("frames", 0)
        text = f"{frames} frame{'s' if frames != 1 else ''}"
        if info.get("skippable"):
            text += f" (+{info['skippable']} skippable)"
        text += f", {index.spans} spans, {info.get('resume_points', 0)} resume points"
        if info.get("resume_points"):
            text += f" (at least {human(info.get('spacing', DEFAULT_SPACING))} apart)"
        if info.get("light_points"):
            text += f", {info['light_points']} light points at zstdmt job starts"
        if index.sums is not None:
            text += ", every piece checked against its sum"
        with self._fallback_lock:
            fallbacks = len(self._fallback)
            light_off = self._light_failures >= LIGHT_FAILURE_LIMIT
        if fallbacks:
            text += (f", {fallbacks} spans decoded from an earlier point (their own "
                     "point did not reproduce the stream)")
        if light_off:
            text += ", light points unused (this stream reaches further back than they keep)"
        return text + self._trailing_note(index, "the last frame")

    # Span decoding ---------------------------------------------------------

    def _span_mismatch(self, index: SeekIndex, i: int) -> bool:
        # Decode the span from the full point before its own, then from its
        # frame start.
        with self._fallback_lock:
            current = self._fallback.get(i, i)
            kind = index.meta[current][1][0]
            if kind == "f":
                return False                  # from a frame start: real damage
            if kind == "l":
                self._light_failures += 1
            j = _anchor_before(index, current) if current == i else _frame_start(index, current)
            self._fallback[i] = j
        # A light point that does not hold is expected for some streams (see
        # zstdindex); a full one never was on real data.
        log.log(logging.DEBUG if kind == "l" else logging.WARNING,
                "%s: zstd span %d does not decode from its resume point as the index "
                "recorded; decoding it from span %d", self.name, i, j)
        return True

    def _origin_span(self, index: SeekIndex, i: int) -> int:
        """The span whose origin decodes span ``i`` (itself unless it fell back)."""
        with self._fallback_lock:
            j = self._fallback.get(i, i)
            if index.meta[j][1][0] == "l" and self._light_failures >= LIGHT_FAILURE_LIMIT:
                j = self._fallback[i] = _anchor_before(index, j)
        return j

    def _iter_span(self, index: SeekIndex, i: int) -> Iterator[Piece]:
        # Stream the span in sub-chunk pieces: a random read stops at the
        # piece it needs, and a sequential reader continues the same decoder.
        # Each piece is checked against its sum by the span decoder.
        j = self._origin_span(index, i)
        _kind, origin, blocks_end, frame_end = index.meta[i]
        origin = index.meta[j][1]
        skip = index.starts[i] - index.starts[j]
        src = self.source
        prefix = None if origin[0] == "f" else _pyzstd().decompress(index.blobs[origin[3]])
        if zstdspan.decodable(origin, prefix):
            # Through the system libzstd with the GIL released (zstdspan).
            return _SpanRun(self, zstdspan.SpanDecoder(src, origin, prefix, blocks_end, frame_end,
                                                      skip, self._count), i)
        return _PyzstdRun(self._iter_span_pyzstd(i, origin, prefix, blocks_end, frame_end, skip),
                          zstdspan.origin_window(src, origin) + len(prefix or b""))

    def _iter_span_pyzstd(self, i: int, origin: list[Any], prefix: bytes | None,
                          blocks_end: int, frame_end: int,
                          skip: int) -> Generator[bytes, None, None]:
        """:meth:`_iter_span` through pyzstd (no system libzstd, or a snapshot
        that starts like a dictionary: see zstdspan.decodable).

        pyzstd's max_length lets the decoder write each piece straight into
        a buffer of the piece's size: whole pieces need no join (a join of
        fresh memory cost as much as a third of the decoding)."""
        pyzstd = _pyzstd()
        src = self.source
        if origin[0] == "f":
            dec = pyzstd.EndlessZstdDecompressor(option=_decoder_options())
            pending = b""
        else:
            snapshot = pyzstd.ZstdDict(prefix or b"", is_raw=True)
            dec = pyzstd.EndlessZstdDecompressor(zstd_dict=snapshot.as_prefix,
                                                 option=_decoder_options())
            pending = synth_header(origin[2])
        # From a frame start the span may run to the frame end (its checksum
        # is checked then); a resumed decoder has no checksum to read.
        pos, end = origin[1], (frame_end or blocks_end) if origin[0] == "f" else blocks_end
        produced = -skip                     # output before the span is dropped
        try:
            while True:
                if dec.needs_input:
                    if pos >= end:
                        return
                    chunk = src.read_at(pos, min(STREAM_CHUNK, end - pos))
                    if not chunk:
                        raise truncated(src, f"zstd stream ends at byte {pos}, expected {end}")
                    pos += len(chunk)
                    if pending:
                        chunk, pending = pending + chunk, b""
                else:
                    chunk, pending = pending, b""
                # Never cross a piece boundary: outputs then line up with pieces.
                want = -produced if produced < 0 else SUB_CHUNK - produced % SUB_CHUNK
                out = dec.decompress(chunk, min(want, SUB_CHUNK))
                if out:
                    if produced < 0:
                        self._count(len(out))     # decoded only to be dropped
                        produced += len(out)
                        continue
                    produced += len(out)
                    yield out
        except pyzstd.ZstdError as exc:
            if origin[0] != "f":
                # Perhaps a point that does not fit its span: try an earlier one.
                raise SpanMismatch() from None
            raise corrupt(src, f"zstd span {i} does not decode ({exc})") from None

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        return b"".join(self._iter_span(index, i))


class _SpanRun:
    """The pieces of span ``i`` from one libzstd decoder, which a sequential
    reader's cursor takes on into the next span of the frame
    (:meth:`~imagefs.codecs.cursors.SpanCursor.go_on`): that span's resume
    point is where the decoder stands, so its snapshot need not be loaded."""

    def __init__(self, stream: ZstdSource, blocks: zstdspan.SpanDecoder, i: int) -> None:
        self._stream = stream
        self._blocks = blocks
        self._legs = self._leg(i)

    def __iter__(self) -> _SpanRun:
        return self

    def __next__(self) -> Piece:
        return next(self._legs)

    def _leg(self, i: int) -> Generator[Piece, None, None]:
        blocks = self._blocks
        try:
            yield from blocks.leg()
        except ZstdStreamError as exc:
            blocks.close()
            if blocks.origin[0] != "f":
                raise SpanMismatch() from None  # perhaps a point that does not fit its span
            raise corrupt(blocks.src, f"zstd span {i} does not decode ({exc})") from None
        except BaseException:
            blocks.close()
            raise

    def into(self, index: SeekIndex, j: int) -> bool:
        """Go on into span ``j`` if it resumes where this decoder stands."""
        _kind, origin, blocks_end, frame_end = index.meta[j]
        if (origin[0] == "f" or self._stream._origin_span(index, j) != j
                or not self._blocks.can_extend(origin[1])):
            return False
        self._blocks.extend(blocks_end, frame_end)
        self._legs = self._leg(j)
        return True

    def resident(self) -> int:
        """What the paused decoder keeps (the cursor pool's budget counts it)."""
        return self._blocks.resident()

    def close(self) -> None:
        self._legs.close()
        self._blocks.close()


class _PyzstdRun:
    """:meth:`ZstdSource._iter_span_pyzstd`'s pieces, with a rough measure of
    what its paused pyzstd decoder keeps: the window and the snapshot."""

    def __init__(self, legs: Generator[bytes, None, None], resident: int) -> None:
        self._legs = legs
        self._resident = resident

    def __iter__(self) -> _PyzstdRun:
        return self

    def __next__(self) -> bytes:
        return next(self._legs)

    def resident(self) -> int:
        return self._resident

    def close(self) -> None:
        self._legs.close()
        self._resident = 0


def _anchor_before(index: SeekIndex, i: int) -> int:
    """The nearest span before ``i`` that starts at a full point or a frame start."""
    j = i - 1                                 # a point is never a frame's first span
    while index.meta[j][1][0] == "l":
        j -= 1
    return j


def _frame_start(index: SeekIndex, i: int) -> int:
    """The first span of the frame that span ``i`` belongs to."""
    while index.meta[i][1][0] != "f":
        i -= 1
    return i
