"""The zstd index pass: frames, resume points, window snapshots, piece sums.

One decoder runs over the stream once, fed large slices of the compressed
bytes (block-aligned, read in big chunks: no Python per block beyond a
3-byte header walk) and writing straight into reused buffers
(:mod:`~imagefs.codecs.zstdstream`), so the pass runs at libzstd's own speed.  Inside a
large frame (``zstd -T0`` writes one for the whole image), once
``spacing`` bytes have been decoded since the last restart point, the next
block boundary whose block defines all its entropy tables is tried as a
*resume point*: a decoder started there with the preceding window as a
raw-content prefix and a synthesized frame header must reproduce that
first block (most misses are repeat offsets from before the point; the
following boundaries are tried).  A point that passes is committed; the
window is stored compressed as its snapshot.

Between those *full* points the pass also places *light* points at the
starts of zstdmt jobs.  ``zstd -T0`` (Clonezilla's default) cuts its input
into jobs of ``max(1 MiB, 4 x window)`` bytes, compressed independently,
each seeing only the last ``window / 8`` bytes of the job before it (the
"overlap" of libzstd's fast, dfast, greedy and lazy strategies: levels 1-7;
it is larger only from level 8 on) and starting with fresh repeat offsets.
A block boundary exactly at a multiple of the job size (whatever its
block type: a job starts with fresh repeat offsets) whose block passes the
trial with only that much history becomes a light point with a snapshot
one eighth the size: on the bench's 2 GiB image 231 points instead of 52
for 111 MB of index instead of 70, and a random read decodes about 4 MiB
instead of 16.  A light
point is only as good as that assumption (a stream from a higher level or
a single-threaded compressor may reach further back later in the span);
such a span fails its piece sums or its decoder refuses an offset beyond
its history, and is then decoded from the full point before it
(:meth:`~imagefs.codecs.zstd.ZstdSource._span_mismatch`).

Resume points are not decoded a second time over their whole span here
(the old pass ran a checker beside the main decoder: twice the work).
Instead the pass records an XXH3-64 *piece sum* of every decoded piece, and
every later decode of a piece is checked against it before it is served
(:mod:`~imagefs.codecs.spans`): a point whose span ever diverges is caught
there and the span falls back to an earlier origin
(:meth:`ZstdSource._span_mismatch`).  The sums were taken from the
sequential decode, which the frame's content checksum covers.

Spans are committed as they are finished, so reads inside the part already
passed are served while the pass goes on (:mod:`~imagefs.codecs.building`).
"""

from __future__ import annotations

import struct
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import pyzstd

from imagefs.codecs import tuning
from imagefs.codecs.adapters import ChunkReader
from imagefs.codecs.problems import corrupt, truncated
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.spans import BackgroundHasher
from imagefs.codecs.zstdframe import (
    BLOCK_MAX,
    MAX_WINDOW,
    SKIPPABLE_MAGIC,
    SKIPPABLE_MASK,
    ZSTD_MAGIC,
    FrameHeader,
    header_length,
    self_contained,
    synth_header,
)
from imagefs.codecs.zstdstream import (
    StreamDecoder,
    ZstdStreamError,
    frame_decoder,
    prefix_decoder,
)
from imagefs.errors import UnsupportedError
from imagefs.io.source import ByteSource

if TYPE_CHECKING:
    from imagefs.codecs.building import IndexBuild

#: Compressed bytes fed to the decoder per call: large enough that Python
#: costs nothing per byte, small enough that each output (a few MiB) stays
#: in reused heap memory instead of fresh pages.
FEED_BYTES = 1 << 20
#: Blocks per feed at most: 32 blocks are at most 4 MiB of output even
#: where blocks compress to nothing (RLE runs of zeros).
FEED_BLOCKS = 32
#: After a failed resume trial, skip this many blocks before the next (then
#: twice as many, up to FEED_BLOCKS): a region of blocks that all reuse
#: state must not cost a trial (a window copy) per block.
TRIAL_BACKOFF = 2
#: Snapshots are compressed with this zstd level (level 1 is 3x faster than
#: 3 on windows and within a few percent of its size).
SNAPSHOT_LEVEL = 1
#: A light point keeps this fraction of the window: zstdmt's overlap for
#: levels 1-7 (``window >> (9 - overlapLog)``, overlapLog 6).
LIGHT_WINDOW_SHIFT = 3
#: zstdmt's job size is ``1 << max(20, windowLog + 2)`` (zstdmt_compress.c,
#: ZSTDMT_computeTargetJobLog, without long-distance matching).
MIN_JOB = 1 << 20
#: What the FEED_BLOCKS blocks of one feed can produce at most: the
#: fallback decoder's output per call (one bytes object per feed; with
#: python-zstandard's default of 128 KiB a feed's output came in ~14 chunks
#: that were then joined, a copy of every byte: 1.88 -> 1.59 s on the bench
#: image) and the size of the segments the output is decoded into.
OUT_BYTES = FEED_BLOCKS * BLOCK_MAX
SEGMENT = OUT_BYTES


#: Compresses window snapshots beside the passes.
_snapshot_pool = tuning.LazyPool("imagefs-snapshot", lambda: 1)


class _Pass:
    """The state of one pass (see the module docstring)."""

    def __init__(self, src: ByteSource, build: IndexBuild, spacing: int) -> None:
        self.src = src
        self.build = build
        self.spacing = spacing
        self.comp = ChunkReader(src, build.update)
        self.out_pos = 0
        self.blobs = build.blobs           # shared with the partial index
        self.blob_futures: list[tuple[int, Future[bytes]]] = []
        # Piece sums are taken on another thread; a segment is written again
        # only once its hashing is done (``hashing``, by segment id), and a
        # finished span is committed once its sums and snapshot are ready
        # (``commits``: end, meta, sums, snapshots; in order).
        self.hasher = BackgroundHasher()
        self.hashing: dict[int, Future[None]] = {}
        self.commits: deque[tuple[int, list[Any], Future[list[int]],
                                  list[tuple[int, Future[bytes]]]]] = deque()
        self.queued_end = 0
        self.prefix = prefix_decoder(MAX_WINDOW)     # the resume trials'
        # Decoded output, written in place by the decoder: the segments hold
        # the last ``window`` bytes at least (resume trials take snapshots
        # from them) and output not yet accounted for (``pending``).
        self.segments: deque[bytearray] = deque()
        self.fill = 0                      # bytes written into the last segment
        self.held = 0                      # bytes in all segments
        self.pending = 0                   # of those, written but not yet emitted
        self.spare: list[bytearray] = []
        self.window = 0
        self.keep_history = False
        self.resume_points = 0
        self.light_points = 0
        self.rejected = 0
        self.frames = 0
        self.skippable = 0

    # -- output ---------------------------------------------------------------

    def space(self) -> memoryview:
        """Free room at the end of the last segment (a new one if it is full)."""
        if not self.segments or self.fill == SEGMENT:
            keep = max(self.window if self.keep_history else 0, self.pending)
            while self.segments and self.held - len(self.segments[0]) >= keep:
                self.held -= len(self.segments[0])
                self.retire(self.segments.popleft())
            self.segments.append(self.spare.pop() if self.spare else bytearray(SEGMENT))
            self.fill = 0
        return memoryview(self.segments[-1])[self.fill:]

    def retire(self, segment: bytearray) -> None:
        """Put ``segment`` among the spares once it is hashed."""
        hashing = self.hashing.pop(id(segment), None)
        if hashing is not None:
            hashing.result()
        self.spare.append(segment)

    def tail(self, n: int) -> list[memoryview]:
        """Views of the last ``n`` bytes written, in order."""
        views: list[memoryview] = []
        for i in range(len(self.segments) - 1, -1, -1):
            if n <= 0:
                break
            seg = self.segments[i]
            end = self.fill if i == len(self.segments) - 1 else SEGMENT
            take = min(n, end)
            views.append(memoryview(seg)[end - take:end])
            n -= take
        views.reverse()
        return views

    def decode(self, dec: StreamDecoder, data: memoryview, start: int,
               damaged: str | None = None) -> int:
        """Decode all of ``data`` (from compressed byte ``start``) into the
        segments; the bytes written, pending until :meth:`emit`.  ``damaged``:
        what a refusal by libzstd means here (default: damaged data)."""
        made = used = 0
        try:
            while True:
                room = self.space()
                took, wrote = dec.decode_into(data[used:], room)
                used += took
                self.fill += wrote
                self.held += wrote
                self.pending += wrote
                made += wrote
                if used >= len(data) and wrote < len(room):
                    return made
                if dec.eof and used < len(data):
                    raise corrupt(self.src, f"zstd frame ends at compressed byte "
                                  f"{start + used}, inside its own blocks")
        except ZstdStreamError as exc:
            what = damaged or (f"zstd data is damaged between compressed bytes {start} "
                               f"and {start + len(data)}")
            raise corrupt(self.src, f"{what} ({exc})") from None

    def emit(self) -> None:
        """Account for the bytes pending: hashed into the open span."""
        if self.pending:
            views = self.tail(self.pending)
            hashing = self.hasher.feed(views)
            for view in views:
                self.hashing[id(view.obj)] = hashing
            self.out_pos += self.pending
            self.pending = 0
        if self.commits:
            self.commit_ready(wait=False)

    def snapshot(self, length: int) -> bytes:
        """The last ``length`` (at most ``window``) decoded bytes (none pending)."""
        return b"".join(self.tail(min(length, self.window, self.held)))

    def close_span(self, meta: list[Any]) -> None:
        """End the open span at the current output position (committed
        once its sums and snapshot are ready)."""
        sums = self.hasher.close()
        if self.out_pos > self.queued_end:
            self.commits.append((self.out_pos, meta, sums, self.blob_futures))
            self.queued_end = self.out_pos
        else:                              # an empty span: nothing to serve
            for blob, future in self.blob_futures:
                self.blobs[blob] = future.result()
        self.blob_futures = []
        self.commit_ready(wait=False)

    def commit_ready(self, wait: bool) -> None:
        """Commit the finished spans whose sums and snapshot are ready (all
        of them, waiting, with ``wait``)."""
        while self.commits:
            end, meta, sums, snapshots = self.commits[0]
            if not wait and not (sums.done() and all(f.done() for _, f in snapshots)):
                return
            for blob, future in snapshots:
                self.blobs[blob] = future.result()
            self.build.commit(end, meta, sums.result())
            self.commits.popleft()

    # -- input ------------------------------------------------------------------

    def need(self, pos: int, n: int, what: str) -> memoryview:
        return self.comp.need(pos, n, what)

    def feed(self, dec: StreamDecoder, start: int, end: int) -> None:
        """Decode compressed ``[start, end)`` (all within the held chunk)."""
        if end > start:
            self.decode(dec, self.comp.get(start, end - start), start)
            self.emit()

    # -- the pass -----------------------------------------------------------------

    def run(self) -> SeekIndex:
        total = self.comp.total
        pos = 0
        while pos < total:
            if self.frames and pos + 4 > total:
                return self.finish(trailing=pos)
            head = self.need(pos, 4, "a frame magic")
            (magic,) = struct.unpack("<I", head)
            if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC:
                (length,) = struct.unpack("<I", self.need(pos + 4, 4, "a skippable frame"))
                if pos + 8 + length > total:
                    raise truncated(self.src, f"zstd skippable frame at byte {pos} is cut short")
                pos += 8 + length
                self.skippable += 1
                continue
            if magic != ZSTD_MAGIC:
                if self.frames:
                    return self.finish(trailing=pos)
                raise corrupt(self.src, f"no zstd frame at compressed byte {pos}")
            pos = self.frame(pos)
        return self.finish()

    def frame(self, frame_c: int) -> int:
        fhd = self.need(frame_c + 4, 1, "a frame header")[0]
        hlen = header_length(fhd)
        head = bytes(self.need(frame_c, hlen, "a frame header"))
        fh = FrameHeader(head, str(frame_c), self.src)
        if fh.dict_id:
            raise UnsupportedError(self.src.name, "zstd frame needs an external dictionary",
                                   "decompress it with zstd -D DICT -dc")
        self.frames += 1
        dec = frame_decoder(MAX_WINDOW, OUT_BYTES)
        try:
            return self.frame_blocks(frame_c, fh, dec, hlen)
        finally:
            dec.close()

    def frame_blocks(self, frame_c: int, fh: FrameHeader, dec: StreamDecoder, hlen: int) -> int:
        """The blocks of the frame at ``frame_c`` (its header parsed): its spans."""
        # A frame's history starts with it.
        while self.segments:
            self.retire(self.segments.popleft())
        self.fill = self.held = 0
        self.decode(dec, self.need(frame_c, hlen, "a frame header"), frame_c)
        frame_u = self.out_pos
        # Resume points need a window descriptor; single-segment frames
        # (small, content size known) are served whole.
        can_resume = fh.window_byte is not None
        self.window = fh.window
        self.keep_history = can_resume
        span: list[Any] = ["p", ["f", frame_c]]
        anchor_u = frame_u                  # the last full point (or the frame start)
        job = max(MIN_JOB, fh.window << 2)
        light_window = fh.window >> LIGHT_WINDOW_SHIFT
        # Light points only where jobs are closer together than full points.
        next_job = frame_u + job if can_resume and job < self.spacing else None
        pos = frame_c + hlen
        feed_from = pos
        pending_blocks = 0
        skip = 0
        backoff = TRIAL_BACKOFF
        # Small spacings (tests, tuning) need the output position often.
        feed_blocks = max(1, min(FEED_BLOCKS, self.spacing >> 19))
        comp = self.comp
        while True:
            if not comp.have(pos, 3):
                self.feed(dec, feed_from, pos)
                feed_from, pending_blocks = pos, 0
            bh = int.from_bytes(self.need(pos, 3, "a block header"), "little")
            last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
            if btype == 3:
                raise corrupt(self.src, f"reserved zstd block type at compressed byte {pos}")
            body = 1 if btype == 1 else bsize
            block_end = pos + 3 + body
            if not comp.have(pos, 3 + body):
                self.feed(dec, feed_from, pos)
                feed_from, pending_blocks = pos, 0
                self.need(pos, 3 + body, "a block")
            at_job = False
            if next_job is not None and self.out_pos + pending_blocks * BLOCK_MAX >= next_job:
                # This block may start at or after the next job boundary: the
                # exact output position decides (the blocks fed so far give it).
                self.feed(dec, feed_from, pos)
                feed_from, pending_blocks = pos, 0
                rel = self.out_pos - frame_u
                at_job = rel % job == 0
                if self.out_pos >= next_job:
                    next_job = frame_u + (rel // job + 1) * job
            full_due = (can_resume and self.out_pos > frame_u
                        and self.out_pos - anchor_u >= self.spacing)
            # Never a point on a frame's last block: it saves one block of
            # decoding at most, and the empty last block zstd writes when a
            # frame ends on a job boundary (pzstd's 8 MiB frames) would start
            # a span of nothing, its snapshot stored for no span.
            if (full_due or at_job) and not last:
                # Looking for a resume point (out_pos is exact only after a feed).
                if skip and not at_job:
                    skip -= 1
                elif ((at_job and btype != 2)
                      or (btype == 2 and self_contained(comp.get(pos + 3, body)))):
                    # Elsewhere only a compressed block: after a raw or RLE
                    # block the repeat offsets are still the ones from before
                    # the point (a span that passed its first block diverged
                    # later on the bench image that way).  A job starts with
                    # fresh ones whatever its first block is (half of the
                    # bench image's jobs start with a raw block).
                    self.feed(dec, feed_from, pos)
                    feed_from, pending_blocks = pos, 0
                    full_due = self.out_pos - anchor_u >= self.spacing and self.out_pos > frame_u
                    if full_due or at_job:
                        block = comp.get(pos, 3 + body)
                        history = fh.window if full_due else light_window
                        snapshot = self.trial(dec, block, pos, fh.window_byte or 0, history)
                        if snapshot is not None:
                            self.close_span(span + [pos, 0])
                            blob = len(self.blobs)
                            self.blobs.append(b"")      # filled before the span commits
                            self.blob_futures.append((blob, snapshot))
                            kind = "r" if full_due else "l"
                            span = ["p", [kind, pos, fh.window_byte, blob]]
                            if full_due:
                                anchor_u = self.out_pos
                                self.resume_points += 1
                                backoff = TRIAL_BACKOFF
                            else:
                                self.light_points += 1
                        else:
                            self.rejected += 1
                            if full_due:
                                skip, backoff = backoff, min(backoff * 2, FEED_BLOCKS)
                        self.emit()
                        feed_from = block_end
            pos = block_end
            pending_blocks += 1
            if last:
                break
            if pos - feed_from >= FEED_BYTES or pending_blocks >= feed_blocks:
                self.feed(dec, feed_from, pos)
                feed_from, pending_blocks = pos, 0
        blocks_end = pos
        self.feed(dec, feed_from, pos)
        if fh.checksum:
            # libzstd checks the content checksum (XXH64 of the frame's output).
            checksum = self.need(pos, 4, "a frame checksum")
            pos += 4
            self.decode(dec, checksum, pos - 4,
                        f"zstd frame at compressed byte {frame_c} fails its checksum")
            self.emit()
        if not dec.eof:
            raise corrupt(self.src, f"zstd frame at compressed byte {frame_c} did not end "
                          "after its last block")
        if fh.content_size is not None and fh.content_size != self.out_pos - frame_u:
            raise corrupt(self.src, f"zstd frame at compressed byte {frame_c} holds "
                          f"{self.out_pos - frame_u} bytes but its header says "
                          f"{fh.content_size}")
        self.close_span(span + [blocks_end, pos])
        return pos

    def trial(self, dec: StreamDecoder, block: memoryview, pos: int, window_byte: int,
              history: int) -> Future[bytes] | None:
        """Decode the block at compressed byte ``pos`` with the main decoder (its
        output left pending) and with a decoder resumed here from the last
        ``history`` bytes of output.  Where both give the same bytes, the
        point holds: the compression of its snapshot, under way."""
        snap = self.snapshot(history)
        out = b"".join(self.tail(self.decode(dec, block, pos)))
        resumed = self.prefix.decode_block(snap, synth_header(window_byte), block)
        # bytes against bytes: a memoryview compared with bytes goes element
        # by element (~0.3 ms per 128 KiB block, measured), a copy is ~7 µs.
        if resumed is None or bytes(resumed) != out:
            return None
        # Compressed on another core: the snapshot is needed only once the
        # span it starts is committed (``spacing`` bytes later).
        return _snapshot_pool.get().submit(pyzstd.compress, snap, SNAPSHOT_LEVEL)

    def finish(self, trailing: int | None = None) -> SeekIndex:
        info: dict[str, Any] = {"frames": self.frames, "skippable": self.skippable,
                                "resume_points": self.resume_points,
                                "light_points": self.light_points,
                                "rejected": self.rejected, "spacing": self.spacing}
        if trailing is not None:
            info["trailing"] = self.comp.total - trailing
        self.commit_ready(wait=True)
        return self.build.complete_index(self.out_pos, info)


def build_zstd_index(src: ByteSource, build: IndexBuild, spacing: int) -> SeekIndex:
    """The seek index of zstd stream ``src`` (one pass; spans committed to ``build``)."""
    state = _Pass(src, build, spacing)
    try:
        return state.run()
    finally:
        state.prefix.close()
