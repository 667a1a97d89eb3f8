"""lz4 frames: a block index, independent or linked blocks.

The frame format stores each block's compressed size, not its output size
(only the frame maximum), so the index pass decodes every block once — lz4
decodes at several GB/s, and the pass also checks the block and content
checksums.  Spans are groups of whole blocks inside one frame (about
1 MiB of output or one big block).  Linked blocks (``lz4 -BD``) may copy
from the previous 64 KiB of output, so a span starting inside a linked
frame carries a compressed snapshot of that history.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from typing import Any

import lz4.block
import xxhash

from imagefs.codecs.adapters import StreamCursor
from imagefs.codecs.building import IndexBuild
from imagefs.codecs.problems import corrupt
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.source import CodecSource
from imagefs.errors import UnsupportedError
from imagefs.io.source import ByteSource
from imagefs.services.units import human

FRAME_MAGIC = 0x184D2204
SKIPPABLE_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC = 0x184D2A50
HISTORY = 64 << 10
#: Group small blocks (lz4 -B4 writes 64 KiB ones) into spans of this size.
SPAN_TARGET = 1 << 20


class Lz4Source(CodecSource):
    """An lz4 frame stream (one or more frames, skippable frames allowed)."""

    codec = "lz4"

    def _walk(self, update: Callable[[int], None] | None = None) -> Iterator[tuple[Any, ...]]:
        """Yield ("frame", linked) / ("block", c_off, csize, raw, ulen, data) / ("end",)."""
        src = self.source
        cur = StreamCursor(src, 0, update)
        total = src.size
        while cur.pos < total:
            frame_c = cur.pos
            (magic,) = struct.unpack("<I", cur.need(4, "a frame magic"))
            if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC:
                (length,) = struct.unpack("<I", cur.need(4, "a skippable frame"))
                cur.need(length, "a skippable frame")
                continue
            if magic != FRAME_MAGIC:
                raise corrupt(src, f"no lz4 frame at compressed byte {frame_c}")
            flg, bd = cur.need(2, "a frame header")
            if flg >> 6 != 1:
                raise corrupt(src, f"lz4 frame at byte {frame_c} has unknown version {flg >> 6}")
            linked = not flg & 0x20
            block_sum, content_size_flag, content_sum = flg & 0x10, flg & 0x08, flg & 0x04
            bmax = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}.get((bd >> 4) & 7)
            if bmax is None:
                raise corrupt(src, f"lz4 frame at byte {frame_c} has an invalid block size code")
            content_size = None
            if content_size_flag:
                (content_size,) = struct.unpack("<Q", cur.need(8, "a frame header"))
            if flg & 0x01:
                raise UnsupportedError(src.name, "lz4 frame needs an external dictionary",
                                       "decompress it with lz4 -D DICT -dc")
            cur.need(1, "a frame header")   # header checksum (damage shows in the blocks)
            yield ("frame", linked)
            history = b""
            hasher = xxhash.xxh32() if content_sum else None
            produced = 0
            while True:
                (word,) = struct.unpack("<I", cur.need(4, "a block size"))
                if word == 0:
                    break
                raw, csize = bool(word & 0x80000000), word & 0x7FFFFFFF
                if csize > bmax:
                    raise corrupt(src, f"lz4 block at byte {cur.pos - 4} is larger than "
                                  "its frame allows")
                c_off = cur.pos
                data = cur.need(csize, "a block")
                if block_sum:
                    (want,) = struct.unpack("<I", cur.need(4, "a block checksum"))
                    if xxhash.xxh32_intdigest(data) != want:
                        raise corrupt(src, f"lz4 block at byte {c_off} fails its checksum")
                out = _decode_block(src, data, raw, bmax, history if linked else None, c_off)
                if linked:
                    history = (history + out)[-HISTORY:]
                if hasher is not None:
                    hasher.update(out)
                produced += len(out)
                yield ("block", c_off, csize, raw, len(out), out)
            if content_sum:
                (want,) = struct.unpack("<I", cur.need(4, "a content checksum"))
                if hasher is not None and hasher.intdigest() != want:
                    raise corrupt(src, f"lz4 frame at byte {frame_c} fails its content checksum")
            if content_size is not None and content_size != produced:
                raise corrupt(src, f"lz4 frame at byte {frame_c} holds {produced} bytes, "
                              f"its header says {content_size}")
            yield ("end",)

    def _iter_decoded(self) -> Generator[bytes, None, None]:
        for event in self._walk():
            if event[0] == "block":
                yield event[5]

    def _build_index(self, build: IndexBuild) -> SeekIndex:
        update = build.update
        starts, meta, blobs = [0], [], []
        out_pos = 0
        frames = blocks = 0
        linked = False
        history = b""
        span: list | None = None
        span_u = 0

        def close_span() -> None:
            nonlocal span
            if span is not None and out_pos > span_u:
                meta.append(span)
                starts.append(out_pos)
            span = None

        for event in self._walk(update):
            if event[0] == "frame":
                frames += 1
                linked = event[1]
                history = b""
            elif event[0] == "block":
                _, c_off, csize, raw, ulen, out = event
                if span is None or out_pos - span_u >= SPAN_TARGET:
                    close_span()
                    blob = -1
                    if linked and history:
                        blobs.append(zlib.compress(history, 6))
                        blob = len(blobs) - 1
                    span, span_u = [int(linked), blob, []], out_pos
                span[2].append([c_off, csize, int(raw), ulen])
                out_pos += ulen
                blocks += 1
                self._count(ulen)
                if linked:
                    history = (history + out)[-HISTORY:]
            else:
                close_span()
        close_span()
        return SeekIndex(out_pos, starts, meta, blobs,
                         {"frames": frames, "blocks": blocks,
                          "linked": any(m[0] for m in meta)})

    def _check_loaded(self, index: SeekIndex) -> None:
        for _linked, blob, blocks in index.meta:
            if blob >= len(index.blobs) or not blocks:
                raise ValueError("lz4 span refers to a missing snapshot")

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        return b"".join(self._iter_span(index, i))

    def _iter_span(self, index: SeekIndex, i: int) -> Iterator[bytes]:
        # Block by block (lengths are checked per block; the content
        # checksum was verified by the index pass).
        linked, blob, blocks = index.meta[i]
        history = zlib.decompress(index.blobs[blob]) if blob >= 0 else b""
        first, last = blocks[0], blocks[-1]
        data_all = memoryview(self.source.read_at(first[0], last[0] + last[1] - first[0]))
        for c_off, csize, raw, ulen in blocks:
            data = data_all[c_off - first[0]:c_off - first[0] + csize]
            if len(data) != csize:
                raise corrupt(self.source, f"lz4 block at byte {c_off} is cut short")
            piece = _decode_block(self.source, data, raw, ulen, history if linked else None, c_off)
            if len(piece) != ulen:
                raise corrupt(self.source, f"lz4 block at byte {c_off} decoded to "
                              f"{len(piece)} bytes instead of {ulen}")
            if linked:
                history = (history + piece)[-HISTORY:]
            yield piece

    def _describe(self, index: SeekIndex) -> str:
        info = index.info
        kind = "linked" if info.get("linked") else "independent"
        return (f"{info.get('frames', 0)} frame(s), {info.get('blocks', 0)} {kind} blocks "
                f"in {index.spans} spans (about {human(index.size / max(index.spans, 1))} each)")


def _decode_block(src: ByteSource, data: bytes | memoryview, raw: bool, limit: int,
                  history: bytes | None,
                  c_off: int) -> bytes:
    if raw:
        return bytes(data)
    try:
        if history:
            return lz4.block.decompress(data, uncompressed_size=limit, dict=history)
        return lz4.block.decompress(data, uncompressed_size=limit)
    except lz4.block.LZ4BlockError as exc:
        raise corrupt(src, f"lz4 block at byte {c_off} is damaged ({exc})") from None
