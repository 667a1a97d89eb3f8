"""The zstd index pass: frames, resume points, window snapshots, piece sums.

One decoder runs over the stream once, a block per call (libzstd's
buffer-less and block APIs, :mod:`~imagefs.codecs.zstdstream`), writing
straight into the pass's own output segments, which are its window
(:mod:`~imagefs.codecs.zstdoutput`): no copy of the output, no Python per
block beyond a 3-byte header walk and one foreign call, by address.  Inside a
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
A reader that had to wait for the pass is handed the pieces the pass decodes
past its read (a copy of each, made by the hasher's thread): reading a fresh
image from its start decodes it once, not once for the index and again for
the reader.
"""

from __future__ import annotations

import struct
from collections import deque
from concurrent.futures import Future
from functools import partial
from typing import TYPE_CHECKING, Any

from imagefs.codecs import tuning
from imagefs.codecs.adapters import ChunkReader
from imagefs.codecs.problems import corrupt, truncated
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.spans import SUB_CHUNK, BackgroundHasher
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
from imagefs.codecs.zstdoutput import OutputSegments
from imagefs.codecs.zstdstream import (
    BlockDecoder,
    ZstdStreamError,
    block_decoder,
    compress_frame,
)
from imagefs.codecs.zstdtrial import prefix_decoder
from imagefs.errors import UnsupportedError
from imagefs.io.scatter import buffer_address
from imagefs.io.source import ByteSource

if TYPE_CHECKING:
    from imagefs.codecs.blobspill import SpilledBlobs
    from imagefs.codecs.building import IndexBuild

#: After a failed resume trial, skip this many blocks before the next (then
#: twice as many, up to MAX_TRIAL_SKIP): a region of blocks that all reuse
#: state must not cost a trial (a window copy) per block.
TRIAL_BACKOFF = 2
#: 32 blocks: at most 4 MiB of output between trials in such a region.
MAX_TRIAL_SKIP = 32
#: Snapshots are compressed with this zstd level (level 1 is 3x faster than
#: 3 on windows and within a few percent of its size).
SNAPSHOT_LEVEL = 1
#: A light point keeps this fraction of the window: zstdmt's overlap for
#: levels 1-7 (``window >> (9 - overlapLog)``, overlapLog 6).
LIGHT_WINDOW_SHIFT = 3
#: zstdmt's job size is ``1 << max(20, windowLog + 2)`` (zstdmt_compress.c,
#: ZSTDMT_computeTargetJobLog, without long-distance matching).
MIN_JOB = 1 << 20
#: Decoded bytes go to the hasher's thread at least this many at a time
#: while no reader follows the pass.  Each hand-off costs the pass thread
#: GIL and futex round trips with the hasher (50 us a time on a VM, where
#: waking an idle vCPU is slow): 4 MiB instead of one 1 MiB piece cut the
#: pass thread's context switches from about 1450 to 1000 per pass of the
#: bench's 2 GiB zstd image and its wall time by 2-3 %; 8 MiB was slower
#: (the pass then waits for the hasher to free segments).
EMIT_BATCH = 4 << 20


#: Compresses window snapshots beside the passes.
_snapshot_pool = tuning.HelperPool("imagefs-snapshot")


class _Pass:
    """The state of one pass (see the module docstring)."""

    def __init__(self, src: ByteSource, build: IndexBuild, spacing: int) -> None:
        self.src = src
        self.build = build
        self.spacing = spacing
        self.comp = ChunkReader(src, build.update)
        # A pass waiting for input (a slow disk, or the gate of a test)
        # commits the spans it has finished first: else a reader in them
        # waits for bytes the pass does not need for them.
        self.comp.on_stall = partial(self.commit_ready, wait=True)
        self.out_pos = 0
        self.blobs = build.blobs           # shared with the partial index
        self.blob_futures: list[Future[None]] = []   # the open span's snapshots, being stored
        # Piece sums are taken on another thread (``out`` reuses a segment
        # only once its hashing is done), and a finished span is committed
        # once its sums and snapshot are ready (``commits``: end, meta, sums,
        # snapshots; in order).
        self.hasher = BackgroundHasher()
        self.commits: deque[tuple[int, list[Any], Future[list[int]],
                                  list[Future[None]]]] = deque()
        self.queued_end = 0                # where the open span starts
        self.span_no = 0                   # the open span's number in the index
        # Decoded bytes go to the hasher EMIT_BATCH at a time, cut at piece
        # boundaries (``piece_end``: the open piece's end), and a piece at a
        # time where a reader waits in them, so that it is handed each piece
        # whole as soon as it is decoded (IndexBuild.offer).  A reader
        # waiting far ahead (the last block of a fresh image) does not
        # stop the batches before its range.
        self.piece_end = SUB_CHUNK
        self.prefix = prefix_decoder(MAX_WINDOW)     # the resume trials'
        # One main decoder for every frame: each begins it afresh.
        self.dec = block_decoder(MAX_WINDOW)
        # Decoded output, written in place by the decoder (the window it reads
        # its matches from); resume trials take their snapshots from it.
        self.out = OutputSegments(self.hasher)
        self.resume_points = 0
        self.light_points = 0
        self.rejected = 0
        self.frames = 0
        self.skippable = 0

    # -- output ---------------------------------------------------------------

    def decode(self, dec: BlockDecoder, block: memoryview, pos: int) -> memoryview:
        """Decode the block at compressed byte ``pos`` after the output so far:
        its output (pending until :meth:`emit_to`)."""
        room = self.out.room()
        try:
            n = dec.decode_block(block, room)
        except ZstdStreamError as exc:
            raise self.damaged(pos, exc) from None
        self.out.wrote(n)
        return room[:n]

    def damaged(self, pos: int, exc: ZstdStreamError) -> Exception:
        """The error for the block at compressed byte ``pos`` that libzstd refused."""
        return corrupt(self.src, f"zstd block at compressed byte {pos} is damaged ({exc})")

    def emit_to(self, end: int) -> None:
        """Hand the pending output below ``end`` (a piece boundary, or the
        open span's end) to the hasher: in one feed, or one piece per feed
        where a reader waits in it, each such piece handed to the build too
        (:meth:`IndexBuild.offer`)."""
        while self.out_pos < end:
            start = self.out_pos
            n = end - start
            publish = None
            if self.build.may_follow(start, end):
                n = min(end, self.piece_end) - start
                if self.build.following(start, start + n):
                    k = (start - self.queued_end) // SUB_CHUNK
                    publish = partial(self.build.offer, self.span_no, k)
            self.out_pos += self.out.emit(n, publish)
            while self.out_pos >= self.piece_end:
                self.piece_end += SUB_CHUNK
        if self.commits:
            self.commit_ready(wait=False)

    def close_span(self, meta: list[Any]) -> None:
        """End the open span at the current output position (committed
        once its sums and snapshot are ready)."""
        sums = self.hasher.close()
        if self.out_pos > self.queued_end:
            self.commits.append((self.out_pos, meta, sums, self.blob_futures))
            self.queued_end = self.out_pos
            self.span_no += 1
            self.piece_end = self.out_pos + SUB_CHUNK
        else:                              # an empty span: nothing to serve
            for future in self.blob_futures:
                future.result()
        self.blob_futures = []
        self.commit_ready(wait=False)

    def commit_ready(self, wait: bool) -> None:
        """Commit the finished spans whose sums and snapshot are ready (all
        of them, waiting, with ``wait``)."""
        while self.commits:
            end, meta, sums, snapshots = self.commits[0]
            if not wait and not (sums.done() and all(f.done() for f in snapshots)):
                return
            for future in snapshots:
                future.result()            # its snapshot is in the blobs
            self.build.commit(end, meta, sums.result())
            self.commits.popleft()

    def need(self, pos: int, n: int, what: str) -> memoryview:
        """Compressed bytes ``[pos, pos + n)`` (``what`` names them if they are missing)."""
        return self.comp.need(pos, n, what)

    # -- the pass -----------------------------------------------------------------

    def run(self) -> SeekIndex:
        total = self.comp.total
        pos = 0
        while pos < total:
            if self.frames and pos + 4 > total:
                return self.finish(frames_end=pos)
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
                    return self.finish(frames_end=pos)
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
        return self.frame_blocks(frame_c, fh, self.dec, hlen)

    def frame_blocks(self, frame_c: int, fh: FrameHeader, dec: BlockDecoder, hlen: int) -> int:
        """The blocks of the frame at ``frame_c`` (its header parsed): its spans."""
        out = self.out
        out.start_frame(fh.window)
        try:
            dec.begin(self.need(frame_c, hlen, "a frame header"))
        except ZstdStreamError as exc:
            raise corrupt(self.src, f"zstd frame header at compressed byte {frame_c} "
                          f"is refused ({exc})") from None
        frame_u = self.out_pos
        own_sum = fh.checksum and not dec.checks_content
        if own_sum:
            self.hasher.begin_content()     # the frame's XXH64, beside the pass
        # Resume points need a window descriptor; single-segment frames
        # (small, content size known) are served whole.
        can_resume = fh.window_byte is not None
        span: list[Any] = ["p", ["f", frame_c]]
        anchor_u = frame_u                  # the last full point (or the frame start)
        job = max(MIN_JOB, fh.window << 2)
        light_window = fh.window >> LIGHT_WINDOW_SHIFT
        # Light points only where jobs are closer together than full points.
        next_job = frame_u + job if can_resume and job < self.spacing else None
        spacing = self.spacing
        pos = frame_c + hlen
        skip = 0
        backoff = TRIAL_BACKOFF
        comp = self.comp
        # The spec's Block_Maximum_Size (RFC 8878, 3.1.1.2.3): the block API
        # leaves this check to its caller.
        max_block = min(fh.window, BLOCK_MAX)
        # The compressed chunk held and its address: blocks are decoded by
        # address (no view and no ctypes object per block).
        chunk: memoryview | None = None
        chunk_at = 0
        while True:
            view, off = comp.view, pos - comp.base
            if off < 0 or off + 3 > len(view):
                self.need(pos, 3, "a block header")
                view, off = comp.view, pos - comp.base
            bh = view[off] | view[off + 1] << 8 | view[off + 2] << 16
            last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
            if btype == 3:
                raise corrupt(self.src, f"reserved zstd block type at compressed byte {pos}")
            if bsize > max_block:
                raise corrupt(self.src, f"zstd block at compressed byte {pos} is larger "
                              f"than its frame allows ({bsize} > {max_block} bytes)")
            length = 3 + (1 if btype == 1 else bsize)
            if off + length > len(view):
                self.need(pos, length, "a block")
                view, off = comp.view, pos - comp.base
            at = self.out_pos + out.pending          # this block's output position
            at_job = False
            if next_job is not None and at >= next_job:
                rel = at - frame_u
                at_job = rel % job == 0
                next_job = frame_u + (rel // job + 1) * job
            full_due = can_resume and at > frame_u and at - anchor_u >= spacing
            # Never a point on a frame's last block: it saves one block of
            # decoding at most, and the empty last block zstd writes when a
            # frame ends on a job boundary (pzstd's 8 MiB frames) would start
            # a span of nothing, its snapshot stored for no span.
            tried = False
            if (full_due or at_job) and not last:
                block = view[off:off + length]
                if skip and not at_job:
                    skip -= 1
                elif (at_job and btype != 2) or (btype == 2 and self_contained(block[3:])):
                    # Elsewhere only a compressed block: after a raw or RLE
                    # block the repeat offsets are still the ones from before
                    # the point (a span that passed its first block diverged
                    # later on the bench image that way).  A job starts with
                    # fresh ones whatever its first block is (half of the
                    # bench image's jobs start with a raw block).
                    tried = True
                    history = fh.window if full_due else light_window
                    stored = self.trial(dec, block, pos, fh.window_byte or 0, history)
                    if stored is not None:
                        self.emit_to(at)           # the span before ends here
                        self.close_span(span + [pos, 0])
                        blob, stored_future = stored
                        self.blob_futures.append(stored_future)
                        kind = "r" if full_due else "l"
                        span = ["p", [kind, pos, fh.window_byte, blob]]
                        if full_due:
                            anchor_u = at
                            self.resume_points += 1
                            backoff = TRIAL_BACKOFF
                        else:
                            self.light_points += 1
                    else:
                        self.rejected += 1
                        if full_due:
                            skip, backoff = backoff, min(backoff * 2, MAX_TRIAL_SKIP)
            if not tried:
                if view is not chunk:
                    chunk, chunk_at = view, buffer_address(view)
                dst, room = out.room_at()
                try:
                    out.wrote(dec.decode_at(chunk_at + off, btype, bsize, dst, room))
                except ZstdStreamError as exc:
                    raise self.damaged(pos, exc) from None
            pos += length
            if last:
                break
            done = self.out_pos + out.pending
            if done >= self.piece_end and (out.pending >= EMIT_BATCH
                                           or self.build.may_follow(self.out_pos, done)):
                self.emit_to(done - (done - self.piece_end) % SUB_CHUNK)
        blocks_end = pos
        self.emit_to(self.out_pos + out.pending)
        checksum = self.need(pos, 4, "a frame checksum") if fh.checksum else memoryview(b"")
        pos += len(checksum)
        try:
            # The decoder checks the content checksum, or leaves it to the hasher
            # (checks_content: the XXH64 of the frame's output, compared below).
            complete = dec.end(checksum)
        except ZstdStreamError as exc:
            raise corrupt(self.src, f"zstd frame at compressed byte {frame_c} fails its "
                          f"checksum ({exc})") from None
        if not complete:
            raise corrupt(self.src, f"zstd frame at compressed byte {frame_c} did not end "
                          "after its last block")
        if own_sum and self.hasher.content_sum().result() & 0xFFFFFFFF != \
                int.from_bytes(checksum, "little"):
            raise corrupt(self.src, f"zstd frame at compressed byte {frame_c} fails its "
                          "checksum (the XXH64 of its content differs)")
        if fh.content_size is not None and fh.content_size != self.out_pos - frame_u:
            raise corrupt(self.src, f"zstd frame at compressed byte {frame_c} holds "
                          f"{self.out_pos - frame_u} bytes but its header says "
                          f"{fh.content_size}")
        self.close_span(span + [blocks_end, pos])
        return pos

    def trial(self, dec: BlockDecoder, block: memoryview, pos: int, window_byte: int,
              history: int) -> tuple[int, Future[None]] | None:
        """Decode the block at compressed byte ``pos`` with the main decoder (its
        output left pending) and with a decoder resumed here from the last
        ``history`` bytes of output.  Where both give the same bytes, the
        point holds: its snapshot's blob number, and its compression into
        that blob, under way."""
        snap = self.out.snapshot(history)
        made = self.decode(dec, block, pos)
        resumed = self.prefix.decode_block(snap, synth_header(window_byte), block)
        # bytes against bytes: a memoryview compared with bytes goes element
        # by element (~0.3 ms per 128 KiB block, measured), a copy is ~7 µs.
        if resumed is None or bytes(resumed) != bytes(made):
            return None
        # Compressed and stored on another core: the snapshot is needed only
        # once the span it starts is committed (``spacing`` bytes later).
        blob = self.blobs.append(b"")
        return blob, _snapshot_pool.get().submit(_store_snapshot, self.blobs, blob, snap)

    def finish(self, frames_end: int | None = None) -> SeekIndex:
        """The complete index; ``frames_end``: where the last frame ends, when
        bytes that are no frame follow it."""
        info: dict[str, Any] = {"frames": self.frames, "skippable": self.skippable,
                                "resume_points": self.resume_points,
                                "light_points": self.light_points,
                                "rejected": self.rejected, "spacing": self.spacing}
        if frames_end is not None:
            info["trailing"] = self.comp.total - frames_end
        self.commit_ready(wait=True)
        return self.build.complete_index(self.out_pos, info)


def _store_snapshot(blobs: SpilledBlobs, blob: int, snapshot: bytes) -> None:
    """Compress a window snapshot into its place among the pass's blobs (a
    snapshot-pool task: the write, too, stays off the pass's core)."""
    blobs[blob] = compress_frame(snapshot, SNAPSHOT_LEVEL)


def build_zstd_index(src: ByteSource, build: IndexBuild, spacing: int) -> SeekIndex:
    """The seek index of zstd stream ``src`` (one pass; spans committed to ``build``)."""
    state = _Pass(src, build, spacing)
    try:
        return state.run()
    finally:
        state.prefix.close()
        state.dec.close()
