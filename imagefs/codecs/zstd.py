"""zstd: frames, pzstd's skippable frames, and verified resume points.

Every frame start is a restart point for any decoder.  Inside a large
frame (``zstd -T0`` writes one frame for the whole image) a block boundary
is a restart point when decoding a synthesized frame header plus the
original blocks from there, with the preceding window loaded as a
raw-content prefix dictionary, gives the same bytes as the sequential
decode (docs/formats.md 6.4).  That fails where a block reuses an earlier
block's entropy tables or repeat offsets, so while indexing:

* candidates are block boundaries at least ``spacing`` bytes after the
  previous point whose block defines all its tables (parsed from the
  literals and sequences headers);
* a candidate is committed only if its decoder reproduces its first block
  (most misses are repeat offsets; the next boundaries are tried), and its
  decoder then keeps running beside the sequential one over its whole
  span, block by block;
* if it ever diverges, its span ends there and the following bytes are a
  "slow" span decoded from an older point still verified (or the frame
  start), until a new point commits.  Never seen on real data; reported
  in ``index_state`` if it happens.

Window snapshots are stored zstd-compressed in the index file.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pyzstd
import zstandard

from imagefs.codecs.adapters import READ_CHUNK, StreamCursor
from imagefs.codecs.problems import corrupt, truncated
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.source import CodecSource
from imagefs.codecs.spans import SUB_CHUNK
from imagefs.errors import UnsupportedError
from imagefs.io.source import ByteSource
from imagefs.services.units import human

# Two bindings of the same libzstd, each for what it does best here:
# python-zstandard decodes 2-2.5x faster than pyzstd on this machine (its
# output buffers are reused), so spans and the index pass use it; pyzstd's
# EndlessZstdDecompressor walks concatenated and skippable frames for the
# header probes, and pyzstd compresses the window snapshots.
_ZstdError = (zstandard.ZstdError, pyzstd.ZstdError)

#: Frames written with --long=31 need a 2 GiB window; libzstd refuses more
#: than 128 MiB unless told.  Memory follows the frame's real window.
MAX_WINDOW = 1 << 31


ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC = 0x184D2A50

#: Output between resume points inside one frame.  32 MiB keeps a random
#: read under ~40 ms at zstd's ~1 GB/s and the snapshots (one window each,
#: compressed) at a few percent of the image.
DEFAULT_SPACING = 32 << 20

#: Blocks (of at most 128 KiB) a previous resume point stays verified after
#: a newer one is committed, as the fallback origin for slow spans.
FALLBACK_BLOCKS = 64

#: Compressed bytes read at a time when streaming a span (the decoder keeps
#: what one piece does not use for the next).
STREAM_CHUNK = 4 << 20

#: The window limit above, as a pyzstd decoder option.
_DECODER_OPTIONS: dict[int, int] = {pyzstd.DParameter.windowLogMax: MAX_WINDOW.bit_length() - 1}


class _FrameHeader:
    __slots__ = ("size", "window", "window_byte", "single_segment", "checksum",
                 "content_size", "dict_id")

    def __init__(self, head: bytes, where: str, source: ByteSource) -> None:
        fhd = head[4]
        if fhd & 0x08:
            raise corrupt(source, f"zstd frame at {where} has the reserved header bit set")
        fcs_flag = fhd >> 6
        self.single_segment = bool(fhd & 0x20)
        self.checksum = bool(fhd & 0x04)
        did_size = (0, 1, 2, 4)[fhd & 3]
        fcs_size = (1 if self.single_segment else 0, 2, 4, 8)[fcs_flag]
        pos = 5
        self.window_byte: int | None = None
        if not self.single_segment:
            self.window_byte = head[pos]
            exponent, mantissa = head[pos] >> 3, head[pos] & 7
            base = 1 << (10 + exponent)
            self.window = base + (base >> 3) * mantissa
            pos += 1
        self.dict_id = int.from_bytes(head[pos:pos + did_size], "little")
        pos += did_size
        self.content_size: int | None = None
        if fcs_size:
            value = int.from_bytes(head[pos:pos + fcs_size], "little")
            self.content_size = value + 256 if fcs_size == 2 else value
        pos += fcs_size
        if self.single_segment:
            self.window = self.content_size or 0
        self.size = pos


def header_length(fhd: int) -> int:
    single = bool(fhd & 0x20)
    return 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + \
        (1 if single else 0, 2, 4, 8)[fhd >> 6]


class _Checker:
    """A decoder started at a resume point, run beside the sequential one.

    ``origin`` is how a span decodes from this point (see ``_decode_from``);
    the checker stays ``ok`` while its output equals the sequential output
    block for block.
    """

    __slots__ = ("dec", "origin", "ok", "expire")

    def __init__(self, origin: list, snapshot: bytes | None) -> None:
        self.origin = origin
        self.ok = True
        self.expire: int | None = None     # block count after which it is dropped
        if snapshot is None:               # a frame start: the sequential decoder itself
            self.dec = None
        else:
            self.dec = _resume_decoder(snapshot)
            self.dec.decompress(_synth_header(origin[2]))

    def feed(self, block: bytes, expected: bytes) -> bool:
        if self.dec is None or not self.ok:
            return self.ok
        try:
            got = self.dec.decompress(block)
        except _ZstdError:
            got = None
        if got != expected:
            self.ok = False
            self.dec = None
        return self.ok


def self_contained(btype: int, body: bytes) -> bool:
    """Whether a block uses no entropy table of an earlier block.

    Raw and RLE blocks use none; a compressed block qualifies when its
    literals are not "treeless" and no sequence table is in repeat mode.
    Such a boundary is a good resume candidate (repeat offsets may still
    differ: the verification decides).
    """
    if btype != 2:
        return True
    if len(body) < 3:
        return False
    b0 = body[0]
    lit_type, size_format = b0 & 3, (b0 >> 2) & 3
    if lit_type == 3:                      # treeless: reuses the last Huffman tree
        return False
    if lit_type in (0, 1):
        if size_format in (0, 2):
            head, size = 1, b0 >> 3
        elif size_format == 1:
            head, size = 2, (b0 >> 4) | (body[1] << 4)
        else:
            head, size = 3, (b0 >> 4) | (body[1] << 4) | (body[2] << 12)
        pos = head + (size if lit_type == 0 else 1)
    else:
        head = (3, 3, 4, 5)[size_format]
        bits = (10, 10, 14, 18)[size_format]
        value = int.from_bytes(body[:head], "little") >> 4
        pos = head + ((value >> bits) & ((1 << bits) - 1))
    if pos >= len(body):
        return False
    n0 = body[pos]
    if n0 == 0:
        return True                        # no sequences
    pos += 1 if n0 < 128 else (2 if n0 < 255 else 3)
    if pos >= len(body):
        return False
    modes = body[pos]
    return all((modes >> shift) & 3 != 3 for shift in (6, 4, 2))


def _synth_header(window_byte: int) -> bytes:
    # Descriptor 0: no content size, not single segment, no checksum, no
    # dictionary ID; then the original window descriptor.
    return struct.pack("<IBB", ZSTD_MAGIC, 0, window_byte)


def _resume_decoder(snapshot: bytes | None) -> Any:
    """A streaming decoder; with ``snapshot`` as raw-content prefix history."""
    if snapshot:
        zdict = zstandard.ZstdCompressionDict(snapshot, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return zstandard.ZstdDecompressor(dict_data=zdict,
                                          max_window_size=MAX_WINDOW).decompressobj()
    return zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).decompressobj()


class ZstdSource(CodecSource):
    """A zstd stream (one or many frames) with frame and resume-point spans."""

    codec = "zstd"

    def __init__(self, source: ByteSource, *, spacing: int | None = None, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self.spacing = spacing or DEFAULT_SPACING

    # Sequential decoding (head probes) ----------------------------------

    def _iter_decoded(self) -> Generator[bytes, None, None]:
        dec = pyzstd.EndlessZstdDecompressor()
        pos = 0
        total = self.source.size
        while pos < total:
            chunk = self.source.read_at(pos, min(1 << 20, total - pos))
            if not chunk:
                break
            pos += len(chunk)
            try:
                out = dec.decompress(chunk)
            except _ZstdError as exc:
                raise corrupt(self.source, f"zstd data is damaged ({exc})") from None
            if out:
                yield out
        if not dec.at_frame_edge:
            raise truncated(self.source, "zstd stream ends inside a frame")

    # Index --------------------------------------------------------------

    def _build_index(self, update: Callable[[int], None]) -> SeekIndex:
        # Span meta: [kind, origin, blocks_end, frame_end or 0]; kind "p"
        # decodes exactly the span from its origin, "s" (slow) decodes from an
        # earlier origin and keeps the tail.  origin: ["f", frame offset] or
        # ["r", block offset, window byte, snapshot blob].
        src = self.source
        cur = StreamCursor(src, 0, update)
        total = src.size
        starts: list[int] = [0]
        meta: list = []
        blobs: list[bytes] = []
        out_pos = 0
        frames = skippable = rejected = 0
        while cur.pos < total:
            frame_c = cur.pos
            head = cur.need(4, "a frame magic")
            (magic,) = struct.unpack("<I", head)
            if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC:
                (length,) = struct.unpack("<I", cur.need(4, "a skippable frame"))
                cur.need(length, "a skippable frame")
                skippable += 1
                continue
            if magic != ZSTD_MAGIC:
                raise corrupt(src, f"no zstd frame at compressed byte {frame_c}")
            fhd = cur.need(1, "a frame header")
            head += fhd + cur.need(header_length(fhd[0]) - 5, "a frame header")
            fh = _FrameHeader(head, str(frame_c), src)
            if fh.dict_id:
                raise UnsupportedError(src.name, "zstd frame needs an external dictionary",
                                       "decompress it with zstd -D DICT -dc")
            frames += 1
            main = _resume_decoder(None)
            main.decompress(head)
            frame_u = out_pos
            # Resume points need a window descriptor; single-segment frames
            # (small, content size known) are served whole.
            can_resume = fh.window_byte is not None
            window = fh.window
            history = bytearray()
            start = _Checker(["f", frame_c], None)
            alive = [start]                 # checkers still matching, oldest first
            blocks_seen = 0
            span = ["p", start.origin]       # the open span
            span_u = out_pos
            while True:
                bh_raw = cur.need(3, "a block header")
                bh = int.from_bytes(bh_raw, "little")
                last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
                block_c = cur.pos - 3
                if btype == 3:
                    raise corrupt(src, f"reserved zstd block type at compressed byte {block_c}")
                body = cur.need(1 if btype == 1 else bsize, "a block")
                # A trial resume point at this block boundary: after `spacing`
                # bytes of a good span, or as soon as possible in a slow one;
                # only where the block needs no earlier entropy table.  It is
                # committed only if it decodes this first block right (most
                # misses are repeat offsets from before the point), and its
                # snapshot is compressed only then.
                trial = None
                if can_resume and out_pos > frame_u and (
                        out_pos - span_u >= self.spacing if span[0] == "p"
                        else out_pos > span_u) and self_contained(btype, body):
                    snap = bytes(history[-window:])
                    trial = _Checker(["r", block_c, fh.window_byte, -1], snap)
                block = bh_raw + body
                try:
                    out = main.decompress(block)
                except _ZstdError as exc:
                    raise corrupt(src, f"zstd data is damaged at compressed byte {block_c} "
                                  f"({exc})") from None
                blocks_seen += 1
                for checker in alive:
                    if not checker.feed(block, out):
                        rejected += 1
                alive = [c for c in alive if c.ok and (c.expire is None or c.expire > blocks_seen
                                                       or c.origin is span[1])]
                if trial is not None and trial.feed(block, out):
                    if out_pos > span_u:
                        meta.append(span + [block_c, 0])
                        starts.append(out_pos)
                    blobs.append(pyzstd.compress(snap, 3))
                    trial.origin[3] = len(blobs) - 1
                    # The previous point stays checked for a while as a
                    # fallback origin (a point failing later in its span is
                    # most likely near its start), then is dropped: each live
                    # checker is one more decode of the whole stream.
                    for older in alive[1:]:
                        if older.expire is None:
                            older.expire = blocks_seen + FALLBACK_BLOCKS
                    alive.append(trial)
                    if len(alive) > 3:
                        del alive[1]
                    span, span_u = ["p", trial.origin], out_pos
                elif not any(c.origin is span[1] for c in alive):
                    # The open span's origin decodes this block wrongly (a
                    # repeat offset or table from before it): end the span here;
                    # the next bytes decode from the newest origin still right
                    # and keep their tail, until a new point verifies.
                    if out_pos > span_u:
                        meta.append(span + [block_c, 0])
                        starts.append(out_pos)
                    span, span_u = ["s", alive[-1].origin], out_pos
                out_pos += len(out)
                if can_resume:
                    history += out
                    if len(history) > 2 * window + (1 << 20):
                        del history[:len(history) - window]
                if last:
                    break
            blocks_end = cur.pos
            if fh.checksum:
                checksum = cur.need(4, "a frame checksum")
                try:
                    out = main.decompress(checksum)
                except _ZstdError as exc:
                    raise corrupt(src, f"zstd frame at compressed byte {frame_c} fails its "
                                  f"checksum ({exc})") from None
                if out:
                    raise corrupt(src, "zstd decoder produced data after the last block")
            if not main.eof:
                raise corrupt(src, f"zstd frame at compressed byte {frame_c} did not end "
                              "after its last block")
            if fh.content_size is not None and fh.content_size != out_pos - frame_u:
                raise corrupt(src, f"zstd frame at compressed byte {frame_c} holds "
                              f"{out_pos - frame_u} bytes but its header says {fh.content_size}")
            meta.append(span + [blocks_end, cur.pos])
            starts.append(out_pos)
        self._count(out_pos)
        # Drop empty spans (empty frames, points that failed at once).
        keep_starts, keep_meta = [0], []
        for i, m in enumerate(meta):
            if starts[i + 1] > starts[i]:
                keep_meta.append(m)
                keep_starts.append(starts[i + 1])
        info = {"frames": frames, "skippable": skippable,
                "resume_points": sum(1 for m in keep_meta if m[0] == "p" and m[1][0] == "r"),
                "slow_spans": sum(1 for m in keep_meta if m[0] == "s"),
                "rejected": rejected, "spacing": self.spacing}
        return SeekIndex(out_pos, keep_starts, keep_meta, blobs, info)

    def _check_loaded(self, index: SeekIndex) -> None:
        for m in index.meta:
            kind, origin = m[0], m[1]
            if kind not in ("p", "s") or origin[0] not in ("f", "r") or len(m) != 4:
                raise ValueError("unknown zstd span kind")
            if origin[0] == "r" and not 0 <= origin[3] < len(index.blobs):
                raise ValueError("zstd span refers to a missing snapshot")

    def _describe(self, index: SeekIndex) -> str:
        info = index.info
        frames = info.get("frames", 0)
        text = f"{frames} frame{'s' if frames != 1 else ''}"
        if info.get("skippable"):
            text += f" (+{info['skippable']} skippable)"
        text += f", {index.spans} spans, {info.get('resume_points', 0)} verified resume points"
        if info.get("resume_points"):
            text += f" (at least {human(info.get('spacing', DEFAULT_SPACING))} apart)"
        if info.get("slow_spans"):
            text += (f", {info['slow_spans']} spans on the slow path (decoded from an "
                     "earlier point)")
        return text

    # Span decoding ---------------------------------------------------------

    def _iter_span(self, index: SeekIndex, i: int) -> Iterator[bytes]:
        # Stream the span in sub-chunk pieces: a random read stops at the
        # piece it needs, and a sequential reader continues the same decoder.
        # Every point was verified against the sequential output while
        # indexing; slow spans (rare) are decoded whole.
        #
        # pyzstd's max_length lets the decoder write each piece straight
        # into a buffer of the piece's size: whole pieces need no join (a
        # join of fresh memory cost as much as a third of the decoding).
        kind, origin, blocks_end, frame_end = index.meta[i]
        if kind == "s":
            yield self._decode_span(index, i)
            return
        src = self.source
        if origin[0] == "f":
            dec = pyzstd.EndlessZstdDecompressor(option=_DECODER_OPTIONS)
            pending = b""
            pos, end = origin[1], frame_end or blocks_end
        else:
            snapshot = pyzstd.ZstdDict(pyzstd.decompress(index.blobs[origin[3]]), is_raw=True)
            dec = pyzstd.EndlessZstdDecompressor(zstd_dict=snapshot.as_prefix,
                                                 option=_DECODER_OPTIONS)
            pending = _synth_header(origin[2])
            pos, end = origin[1], blocks_end
        produced = 0
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
                out = dec.decompress(chunk, SUB_CHUNK - produced % SUB_CHUNK)
                if out:
                    produced += len(out)
                    yield out
        except _ZstdError as exc:
            raise corrupt(src, f"zstd span {i} does not decode ({exc})") from None

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        kind, origin, blocks_end, frame_end = index.meta[i]
        src = self.source
        try:
            if origin[0] == "f":
                # A frame start: the original bytes, checksum included when
                # the span reaches the frame end.
                dec = _resume_decoder(None)
                data = _feed(dec, src, origin[1], frame_end or blocks_end)
            else:
                snapshot = pyzstd.decompress(index.blobs[origin[3]])
                dec = _resume_decoder(snapshot)
                dec.decompress(_synth_header(origin[2]))
                data = _feed(dec, src, origin[1], blocks_end)
        except _ZstdError as exc:
            raise corrupt(src, f"zstd span {i} does not decode ({exc})") from None
        if kind == "s":
            want = index.starts[i + 1] - index.starts[i]
            if len(data) > want:
                self._count(len(data) - want)   # decoded too, only to be dropped
                data = data[len(data) - want:]
        return data


def _feed(dec: Any, src: ByteSource, start: int, end: int) -> bytes:
    out = []
    pos = start
    while pos < end:
        chunk = src.read_at(pos, min(READ_CHUNK, end - pos))
        if not chunk:
            raise truncated(src, f"zstd stream ends at byte {pos}, expected {end}")
        out.append(dec.decompress(chunk))
        pos += len(chunk)
    return b"".join(out)
