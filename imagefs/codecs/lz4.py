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
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from typing import Any, NamedTuple

import lz4.block
import lz4.frame
import xxhash

from imagefs.codecs import tuning
from imagefs.codecs.adapters import ChunkReader, StreamCursor
from imagefs.codecs.building import IndexBuild
from imagefs.codecs.problems import corrupt, truncated
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.source import CodecSource
from imagefs.codecs.spans import PieceHasher, PieceOffers
from imagefs.errors import UnsupportedError
from imagefs.io.source import ByteSource
from imagefs.services.units import human

FRAME_MAGIC = 0x184D2204
SKIPPABLE_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC = 0x184D2A50
HISTORY = 64 << 10
#: Group small blocks (lz4 -B4 writes 64 KiB ones) into spans of this size.
SPAN_TARGET = 1 << 20
#: Spans of linked blocks are larger: each carries a 64 KiB history snapshot.
LINKED_SPAN_TARGET = 4 << 20
#: Compressed bytes of a linked frame fed to the frame decoder at a time.
FEED_BYTES = 1 << 20
#: Largest block of each block-size code in a frame descriptor's BD byte.
_BLOCK_MAX = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}


class FrameHeader(NamedTuple):
    """What a frame descriptor's FLG and BD bytes say (see :func:`frame_header`)."""

    linked: bool                 # blocks may refer to earlier blocks' output
    block_sum: bool              # each block is followed by its XXH32
    content_sum: bool            # the frame ends with the XXH32 of its content
    has_content_size: bool       # an 8-byte content size follows BD
    block_max: int               # no block decodes to more

    @property
    def length(self) -> int:
        """Bytes from the magic to the first block: magic, FLG, BD, [size], HC."""
        return 7 + (8 if self.has_content_size else 0)


def frame_header(src: ByteSource, frame_c: int, flg: int, bd: int) -> FrameHeader:
    """Check and read the FLG and BD bytes of the frame at compressed byte ``frame_c``."""
    if flg >> 6 != 1:
        raise corrupt(src, f"lz4 frame at byte {frame_c} has unknown version {flg >> 6}")
    block_max = _BLOCK_MAX.get((bd >> 4) & 7)
    if block_max is None:
        raise corrupt(src, f"lz4 frame at byte {frame_c} has an invalid block size code")
    if flg & 0x01:
        raise UnsupportedError(src.name, "lz4 frame needs an external dictionary",
                               "decompress it with lz4 -D DICT -dc")
    return FrameHeader(not flg & 0x20, bool(flg & 0x10), bool(flg & 0x04), bool(flg & 0x08),
                       block_max)


class Lz4Source(CodecSource):
    """An lz4 frame stream (one or more frames, skippable frames allowed)."""

    codec = "lz4"
    FAST_DECODER = True

    def _walk(self, update: Callable[[int], None] | None = None) -> Iterator[tuple[Any, ...]]:
        """Yield ("frame", linked) / ("block", c_off, csize, raw, ulen, data) / ("end",)."""
        src = self.source
        cur = StreamCursor(src, 0, update)
        total = src.size
        frames = 0
        while cur.pos < total:
            frame_c = cur.pos
            if frames and total - frame_c < 4:
                return                         # a few trailing bytes
            (magic,) = struct.unpack("<I", cur.need(4, "a frame magic"))
            if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC:
                (length,) = struct.unpack("<I", cur.need(4, "a skippable frame"))
                cur.need(length, "a skippable frame")
                continue
            if magic != FRAME_MAGIC:
                if frames:
                    return                     # trailing bytes after the last frame
                raise corrupt(src, f"no lz4 frame at compressed byte {frame_c}")
            frames += 1
            flg, bd = cur.need(2, "a frame header")
            head = frame_header(src, frame_c, flg, bd)
            linked, block_sum, content_sum = head.linked, head.block_sum, head.content_sum
            bmax = head.block_max
            content_size = None
            if head.has_content_size:
                (content_size,) = struct.unpack("<Q", cur.need(8, "a frame header"))
            cur.need(1, "a frame header")   # header checksum (damage shows in the blocks)
            yield ("frame", linked)
            history = b""
            hasher = _ContentSum() if content_sum else None
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
                    history = _keep_history(history, out)
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
        index = _Lz4Pass(self.source, build).run()
        self._count(index.size)
        return index

    def _check_loaded(self, index: SeekIndex) -> None:
        for m in index.meta:
            if len(m) != 4 or m[1] >= len(index.blobs) or not m[2]:
                raise ValueError("lz4 span refers to a missing snapshot")

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        return b"".join(self._iter_span(index, i))

    def _iter_span(self, index: SeekIndex, i: int) -> Iterator[bytes]:
        # Block by block; the pieces are checked against their sums by the
        # span decoder (the pass verified block and content checksums).
        linked, blob, blocks, bmax = index.meta[i]
        history = lz4.block.decompress(index.blobs[blob]) if blob >= 0 else b""
        first, last = blocks[0], blocks[-1]
        data_all = memoryview(self.source.read_at(first[0], last[0] + last[1] - first[0]))
        for c_off, csize, raw, ulen in blocks:
            data = data_all[c_off - first[0]:c_off - first[0] + csize]
            if len(data) != csize:
                raise corrupt(self.source, f"lz4 block at byte {c_off} is cut short")
            piece = _decode_block(self.source, data, raw, ulen if ulen >= 0 else bmax,
                                  history if linked else None, c_off)
            if 0 <= ulen != len(piece):
                raise corrupt(self.source, f"lz4 block at byte {c_off} decoded to "
                              f"{len(piece)} bytes instead of {ulen}")
            if linked:
                history = _keep_history(history, piece)
            yield piece

    def _describe(self, index: SeekIndex) -> str:
        info = index.info
        kind = "linked" if info.get("linked") else "independent"
        text = (f"{info.get('frames', 0)} frame(s), {info.get('blocks', 0)} {kind} blocks "
                f"in {index.spans} spans (about {human(index.size / max(index.spans, 1))} each)")
        return text + self._trailing_note(index, "the last frame")


def _keep_history(history: bytes, block: bytes) -> bytes:
    """The last HISTORY bytes of ``history + block`` (a linked block's dictionary).

    A block of HISTORY or more replaces it: joining first copied every
    decoded byte (lz4 blocks are 4 MiB by default) to keep 64 KiB.
    """
    if len(block) >= HISTORY:
        return block[-HISTORY:]
    return (history + block)[-HISTORY:]


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


#: Frame content checksums are taken beside the pass: inline, XXH32 was
#: half of the lz4 pass's samples (py-spy, the bench's 1.4 GB image), and
#: xxhash releases the GIL.  With ``--threads 1`` they run in the pass.
_sum_pool = tuning.HelperPool("imagefs-lz4sum")
#: At most this many blocks (4 MiB each as lz4 writes them) wait for the
#: checksum: the memory a lagging helper may hold.
SUM_BACKLOG = 4


class _ContentSum:
    """A frame's XXH32, fed its output in order on the helper thread."""

    __slots__ = ("_hash", "_pool", "_pending")

    def __init__(self) -> None:
        self._hash = xxhash.xxh32()
        self._pool = _sum_pool.get()       # one executor: updates run in order
        self._pending: deque[Future[None]] = deque()

    def update(self, data: bytes) -> None:
        self._pending.append(self._pool.submit(self._hash.update, data))
        while len(self._pending) > SUM_BACKLOG:
            self._pending.popleft().result()

    def intdigest(self) -> int:
        """The checksum of everything fed (waits for the helper)."""
        while self._pending:
            self._pending.popleft().result()
        return self._hash.intdigest()


class _Lz4Pass:
    """The index pass: one walk of the frames, spans committed as they end.

    Independent blocks are decoded one by one (their sizes go into the
    index); a linked frame is fed to liblz4's frame decoder in block-aligned
    slices of about 1 MiB (it keeps the 64 KiB history and checks the block
    and content checksums itself), and its spans carry a snapshot of the
    history before them.  Every piece's sum is recorded.
    """

    def __init__(self, src: ByteSource, build: IndexBuild) -> None:
        self.src = src
        self.build = build
        self.cur = ChunkReader(src, build.update)
        self.out_pos = 0
        self.blobs = build.blobs
        self.hasher = PieceHasher()
        self.offers = PieceOffers(build)   # for a reader following the pass
        self.history: deque[bytes] = deque()
        self.history_len = 0
        self.frames = self.blocks = 0
        self.linked_any = False

    def emit(self, out: bytes, linked: bool) -> None:
        if not out:
            return
        self.hasher.feed(out)
        self.offers.feed(out)
        self.out_pos += len(out)
        if linked:
            self.history.append(out)
            self.history_len += len(out)
            while self.history_len - len(self.history[0]) >= HISTORY:
                self.history_len -= len(self.history.popleft())

    def commit(self, span: list[Any]) -> None:
        sums = self.hasher.close()
        if self.out_pos > self.build.committed and span[2]:
            self.offers.span_ends()
            self.build.commit(self.out_pos, span, sums)

    def snapshot(self) -> int:
        """Store the last 64 KiB of output as a blob; its number (-1: none)."""
        if not self.history_len:
            return -1
        tail = b"".join(self.history)[-HISTORY:]
        self.blobs.append(lz4.block.compress(tail))
        return len(self.blobs) - 1

    def run(self) -> SeekIndex:
        cur = self.cur
        total = cur.total
        pos = 0
        while pos < total:
            if self.frames and pos + 4 > total:
                return self.finish(trailing=total - pos)
            (magic,) = struct.unpack("<I", cur.need(pos, 4, "a frame magic"))
            if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC:
                (length,) = struct.unpack("<I", cur.need(pos + 4, 4, "a skippable frame"))
                if pos + 8 + length > total:
                    raise truncated(self.src, f"lz4 skippable frame at byte {pos} is cut short")
                pos += 8 + length
                continue
            if magic != FRAME_MAGIC:
                if self.frames:
                    return self.finish(trailing=total - pos)
                raise corrupt(self.src, f"no lz4 frame at compressed byte {pos}")
            pos = self.frame(pos)
        return self.finish()

    def frame(self, frame_c: int) -> int:
        src, cur = self.src, self.cur
        flg, bd = cur.need(frame_c + 4, 2, "a frame header")
        head = frame_header(src, frame_c, flg, bd)
        linked, content_sum, bmax = head.linked, head.content_sum, head.block_max
        block_sum = 4 if head.block_sum else 0    # the bytes of each block's checksum
        head_len = head.length
        content_size = None
        if head.has_content_size:
            (content_size,) = struct.unpack("<Q", cur.need(frame_c + 6, 8, "a frame header"))
        cur.need(frame_c, head_len, "a frame header")
        self.frames += 1
        self.linked_any |= linked
        frame_u = self.out_pos
        self.history.clear()
        self.history_len = 0
        dec = None
        if linked:
            dec = lz4.frame.LZ4FrameDecompressor()
            self._feed(dec, frame_c, frame_c + head_len)
        hasher = _ContentSum() if content_sum and not linked else None
        span: list[Any] = [int(linked), -1, [], bmax]
        span_u = self.out_pos
        target = LINKED_SPAN_TARGET if linked else SPAN_TARGET
        pos = feed_from = frame_c + head_len
        while True:
            if linked and not cur.have(pos, 4):
                self._feed(dec, feed_from, pos)
                feed_from = pos
            (word,) = struct.unpack("<I", cur.need(pos, 4, "a block size"))
            if word == 0:
                pos += 4
                break
            raw, csize = bool(word & 0x80000000), word & 0x7FFFFFFF
            if csize > bmax:
                raise corrupt(src, f"lz4 block at byte {pos} is larger than its frame allows")
            c_off = pos + 4
            if linked and not cur.have(pos, 4 + csize + block_sum):
                self._feed(dec, feed_from, pos)
                feed_from = pos
            # Loaded from the size word on: a linked frame feeds it too.
            data = cur.need(pos, 4 + csize + block_sum, "a block")[4:]
            self.blocks += 1
            pos = c_off + csize + block_sum
            if linked:
                span[2].append([c_off, csize, int(raw), -1])
                if pos - feed_from >= FEED_BYTES:
                    self._feed(dec, feed_from, pos)
                    feed_from = pos
                    if self.out_pos - span_u >= target:
                        self.commit(span)
                        span, span_u = [1, self.snapshot(), [], bmax], self.out_pos
                continue
            if block_sum:
                (want,) = struct.unpack_from("<I", data, csize)
                if xxhash.xxh32_intdigest(data[:csize]) != want:
                    raise corrupt(src, f"lz4 block at byte {c_off} fails its checksum")
            out = _decode_block(src, data[:csize], raw, bmax, None, c_off)
            if hasher is not None:
                hasher.update(out)
            span[2].append([c_off, csize, int(raw), len(out)])
            self.emit(out, False)
            if self.out_pos - span_u >= target:
                self.commit(span)
                span, span_u = [0, -1, [], bmax], self.out_pos
        if content_sum:
            if linked and not cur.have(pos, 4):
                self._feed(dec, feed_from, pos)
                feed_from = pos
            want_bytes = bytes(cur.need(pos, 4, "a content checksum"))
            pos += 4
            if hasher is not None and hasher.intdigest() != struct.unpack("<I", want_bytes)[0]:
                raise corrupt(src, f"lz4 frame at byte {frame_c} fails its content checksum")
        if linked:
            self._feed(dec, feed_from, pos)
        if content_size is not None and content_size != self.out_pos - frame_u:
            raise corrupt(src, f"lz4 frame at byte {frame_c} holds {self.out_pos - frame_u} "
                          f"bytes, its header says {content_size}")
        self.commit(span)
        return pos

    def _feed(self, dec: Any, start: int, end: int) -> None:
        if end <= start:
            return
        try:
            out = dec.decompress(self.cur.get(start, end - start))
        except RuntimeError as exc:
            raise corrupt(self.src, f"lz4 data is damaged between compressed bytes {start} "
                          f"and {end} ({exc})") from None
        self.emit(out, True)

    def finish(self, trailing: int = 0) -> SeekIndex:
        info: dict[str, Any] = {"frames": self.frames, "blocks": self.blocks,
                                "linked": self.linked_any}
        if trailing:
            info["trailing"] = trailing
        return self.build.complete_index(self.out_pos, info)
