"""The one background index build of a stream, readable while it runs.

A stream's seek index is built by one sequential pass (:class:`IndexBuild`)
in a thread of its own, started by the first read that needs it and shared
by every reader of the stream: opening an image never waits for it.  Codecs
whose pass discovers spans in order (zstd, lz4) *commit* each span as soon
as it is complete (:meth:`IndexBuild.commit`); a read inside the committed
part is served at once from a partial :class:`SeekIndex`, a read beyond it
waits until the pass has passed it (:meth:`IndexBuild.wait`).  Codecs
whose spans are known only at the end (rapidgzip's checkpoints) make
readers beyond the head wait for the whole pass.

A pass that decodes (zstd, lz4) also hands its output to the stream's
cache where a reader waits for it or reads close behind it
(:meth:`IndexBuild.offer`, FOLLOW_BYTES past the read): a reader following
the pass, the usual first read of a fresh backup, finds each piece there
instead of decoding it a second time, and the pass waits briefly for such
a reader rather than leave it behind (:meth:`IndexBuild.following`).

The build survives the reader that started it: closing a file or a
``CodecSource`` leaves it running; only :func:`cancel_all` (interpreter
exit) stops builds, at their next progress report.

Threading: every field of a build is guarded by its ``_cond``; readers wait
on it for ``covered`` to grow or for the end.  At most
:data:`~imagefs.codecs.tuning.BUILD_SLOTS` passes decode at once over all
streams (a build waits for a slot before it starts).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from imagefs.codecs import tuning
from imagefs.codecs.blobspill import SpilledBlobs
from imagefs.codecs.seekindex import SeekIndex
from imagefs.services.units import human

log = logging.getLogger("imagefs.codecs")

#: A reader that had to wait for the pass is *following* it: the pass hands
#: what it decodes from that read on to the reader's cache
#: (:meth:`IndexBuild.offer`) for this far past the read, so a sequential
#: reader finds each piece there instead of decoding it a second time.
#: 64 MiB: a quarter of the mount's default 256 MiB cache, and 8 spans of
#: the bench's zstd image; each later read near the pass extends it.  A
#: smaller cache gets a quarter of its size (``IndexBuild.follow_bytes``):
#: pieces handed over and evicted before their read are decoded again.
FOLLOW_BYTES = 64 << 20
#: The longest the pass waits at once for a follower to read on (see
#: :meth:`IndexBuild.following`): one that does not read a piece in this
#: long has stopped or is much slower than the pass, and decodes for itself.
PACE_LIMIT = 0.25


class BuildCancelled(Exception):
    """Raised inside a build's progress callback once it was cancelled."""


_builds: weakref.WeakSet[IndexBuild] = weakref.WeakSet()
_builds_lock = threading.Lock()
_slots_lock = threading.Lock()
_slots: threading.BoundedSemaphore | None = None
_slots_n = 0


def _slot() -> threading.BoundedSemaphore:
    global _slots, _slots_n
    with _slots_lock:
        if _slots is None or _slots_n != tuning.BUILD_SLOTS:
            _slots, _slots_n = threading.BoundedSemaphore(tuning.BUILD_SLOTS), tuning.BUILD_SLOTS
        return _slots


class IndexBuild:
    """One pass over a compressed stream, with its partial index and progress.

    ``run(build)`` is the codec's pass: it calls :meth:`update` with the
    compressed bytes it consumed, :meth:`commit` for each finished span (if
    it can) and returns the complete :class:`SeekIndex` (published by
    ``finish``, run in the build thread before readers are woken).
    """

    def __init__(self, name: str, total: int, run: Callable[[IndexBuild], Any],
                 finish: Callable[[Any], SeekIndex], spill_dir: str | None = None) -> None:
        """``spill_dir``: where the pass's blobs wait for the saved index
        (an unnamed file; None: the system's temporary directory)."""
        self.name = name
        self.total = max(total, 1)         # compressed bytes to pass
        self._run = run
        self._finish = finish
        self._cond = threading.Condition()
        self.done = 0                      # compressed bytes consumed so far
        self.started: float | None = None  # when the pass got its slot
        self.finished: float | None = None
        self.error: BaseException | None = None
        self.index: SeekIndex | None = None   # the complete index, once done
        self.cancelled = False
        # The committed part (appended by the pass only):
        self._starts: list[int] = [0]
        self._meta: list[Any] = []
        self._sums: list[int] = []
        self._sum_base: list[int] = [0]
        self.blobs = SpilledBlobs(spill_dir)   # not in memory: ~5% of a zstd stream
        self._partial: SeekIndex | None = None
        self._thread: threading.Thread | None = None
        #: Observers of progress (the ``index`` verb's overall bar): told
        #: the compressed bytes of each update.
        self.listeners: list[Callable[[int], None]] = []
        #: Where the stream's reader caches piece k of span i that the pass
        #: decoded (set by the reader; passes that decode call :meth:`offer`).
        self.sink: Callable[[int, int, bytes], None] | None = None
        self._follow: list[tuple[int, int]] = []   # output ranges readers wait in
        self.follow_bytes = FOLLOW_BYTES   # how far past a read (set by the reader)
        self._waiters = 0                  # readers blocked in wait()
        self._paced = 0.0                  # seconds the pass waited for followers

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Run the pass in a thread of its own (once)."""
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._main, daemon=True,
                                            name="imagefs-index")
        with _builds_lock:
            _builds.add(self)
        self._thread.start()

    def _main(self) -> None:
        slot = _slot()
        slot.acquire()
        try:
            with self._cond:
                self.started = time.monotonic()
                if self.cancelled:
                    raise BuildCancelled()
            index = self._finish(self._run(self))
            with self._cond:
                self.index = index
                self._drop_pass_blobs_locked()   # before any reader sees the index
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting reader
            with self._cond:
                self.error = exc
            if not isinstance(exc, BuildCancelled):
                log.debug("%s: index pass failed: %s", self.name, exc)
        finally:
            slot.release()
            with self._cond:
                self.finished = time.monotonic()
                self._drop_pass_blobs_locked()
                self._cond.notify_all()

    def _drop_pass_blobs_locked(self) -> None:
        # The pass's blobs live on in the index where nothing saved them; a
        # saved index reads its own file.  Readers still holding the partial
        # index keep the temporary file until they drop it; this build (kept
        # by its stream) does not.
        self._partial = None
        self.blobs = SpilledBlobs()

    def cancel(self) -> None:
        """Stop the pass at its next progress report (waiters get the error)."""
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()        # a pass waiting for a follower stops waiting

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        with self._cond:
            return self.finished is None

    # -- called by the pass -----------------------------------------------------

    def update(self, n: int) -> None:
        """``n`` more compressed bytes consumed (raises BuildCancelled when cancelled)."""
        with self._cond:
            self.done += n
            if self.cancelled:
                raise BuildCancelled()
        for listener in self.listeners:
            listener(n)

    def restart(self) -> None:
        """The pass starts over from the first byte (progress back to zero)."""
        with self._cond:
            undone, self.done = self.done, 0
        for listener in self.listeners:
            listener(-undone)                # a bar counts the second pass once

    def commit(self, end: int, meta: Any, sums: list[int] | None = None) -> None:
        """Span ``[previous end, end)`` is complete; ``sums`` its piece hashes."""
        with self._cond:
            if end <= self._starts[-1]:
                return
            # Partial indexes share these lists and read them without the
            # lock: the order keeps every span they can see complete (its
            # sums, then its end, then its meta: ``spans`` counts meta).
            if sums is not None:
                self._sums.extend(sums)
            self._sum_base.append(len(self._sums))
            self._starts.append(end)
            self._meta.append(meta)
            self._cond.notify_all()

    def may_follow(self, start: int, end: int) -> bool:
        """Whether a reader may wait for output in ``[start, end)`` (then the
        pass asks :meth:`following` piece by piece).  Read without the lock:
        a reader that starts following just after misses a piece or two,
        which it then reads from the committed span."""
        return self.sink is not None and any(lo < end and start < hi
                                             for lo, hi in self._follow)

    def following(self, start: int, end: int) -> bool:
        """Whether a reader waits for output ``[start, end)`` (the pass then
        hands those pieces to :meth:`offer`); ranges the pass has passed
        are forgotten.

        A follower whose range ends before ``end`` is about to be left
        behind: unless some reader waits for the pass, the pass waits for
        the follower to read on (at most PACE_LIMIT each time, and never
        for longer in all than it has worked), so that a reader a little
        slower than the pass keeps being handed every piece.
        """
        with self._cond:
            if self.sink is None or not self._follow:
                return False
            deadline = None
            while (not self._waiters and not self.cancelled
                   and self._behind_locked(start, end)):
                now = time.monotonic()
                if deadline is None:
                    worked = now - (self.started or now) - self._paced
                    deadline = now + min(PACE_LIMIT, max(0.0, worked - self._paced))
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)
                self._paced += time.monotonic() - now
            self._follow = [r for r in self._follow if r[1] > start]
            return any(lo < end for lo, _hi in self._follow)

    def _behind_locked(self, start: int, end: int) -> bool:
        """Whether a follower's range ends inside ``(start, end]`` while it
        still has committed bytes to read (its last read ended
        ``follow_bytes`` before its range does): it can catch up."""
        committed = self._starts[-1]
        return any(start < hi <= end and hi - self.follow_bytes < committed
                   for _lo, hi in self._follow)

    def offer(self, span: int, piece: int, data: bytes) -> None:
        """Piece ``piece`` of span ``span`` (numbered as committed), decoded by
        the pass for a reader following it."""
        sink = self.sink
        if sink is not None:
            sink(span, piece, data)

    def unfollow(self) -> None:
        """The stream's reader closed: hand nothing more to it."""
        with self._cond:
            self._follow.clear()
            self._cond.notify_all()        # a pass waiting for that reader goes on

    @property
    def committed(self) -> int:
        """Where the last committed span ends (0 before the first)."""
        return self._starts[-1]

    @property
    def spans_committed(self) -> int:
        """How many spans are committed (the open span's number)."""
        return len(self._starts) - 1

    def complete_index(self, size: int, info: dict[str, Any]) -> SeekIndex:
        """The pass's result: every span it committed (its last ends at ``size``)."""
        with self._cond:
            return SeekIndex(size, self._starts, self._meta, self.blobs, info,
                             sums=self._sums, sum_base=self._sum_base)

    def _partial_locked(self, end: int) -> SeekIndex | None:
        """The partial index if the committed part covers ``end`` (a newer one
        only when a reader needs it)."""
        if self._starts[-1] < end:
            return None
        if self._partial is None or self._partial.size < end:
            self._publish_locked()
        return self._partial

    def _publish_locked(self) -> None:
        # The committed lists themselves, not copies: they only grow, and a
        # reader following the build front asks for a newer partial index
        # at every span (a copy each time made a long stream's pass
        # quadratic).  ``size`` bounds what this one covers; spans committed
        # later are complete too (see :meth:`commit`).
        sums = self._sums if self._sums else None
        self._partial = SeekIndex(self._starts[-1], self._starts, self._meta,
                                  self.blobs, {"partial": True}, sums=sums,
                                  sum_base=self._sum_base if sums else None)

    # -- readers ------------------------------------------------------------------

    def wait(self, end: int, start: int | None = None) -> SeekIndex:
        """An index covering ``[0, end)``: the partial one if it does, else the
        complete one once the pass is done (raises the pass's error).

        ``start``: the waiting read begins there; from it to ``follow_bytes``
        past ``end`` the pass hands its output to the reader's cache.
        """
        with self._cond:
            followed = False
            while True:
                if self.index is not None:
                    return self.index
                if self.error is not None:
                    raise self.error
                partial = self._partial_locked(end)
                if partial is not None:
                    return partial
                if start is not None and not followed:
                    self._follow_locked(start, end + self.follow_bytes)
                    followed = True
                self._waiters += 1         # the pass does not wait for followers now
                try:
                    self._cond.wait()
                finally:
                    self._waiters -= 1

    def _follow_locked(self, start: int, end: int) -> None:
        """A reader waits in ``[start, end)``: hand it the pass's output there."""
        for n, (lo, hi) in enumerate(self._follow):
            if lo <= end and start <= hi:      # overlapping ranges merge: one per reader
                if end > hi:
                    self._follow[n] = (min(lo, start), end)
                    self._cond.notify_all()    # a pass waiting for this reader goes on
                return
        self._follow.append((start, end))
        self._cond.notify_all()

    def covering(self, end: int, start: int | None = None) -> SeekIndex | None:
        """The complete or partial index if it already covers ``end``, else None.

        ``start``: a read from there to ``end`` is served from the partial
        index; if it is less than ``follow_bytes`` behind the pass, the reader
        follows it on (the pass keeps handing it pieces: a reader that is
        checking checksums, or sharing the cores with the pass, falls a
        little behind it and would otherwise decode everything again).
        """
        with self._cond:
            if self.index is not None:
                return self.index
            partial = self._partial_locked(end)
            if (partial is not None and start is not None
                    and start + self.follow_bytes >= self._starts[-1]):
                self._follow_locked(start, end + self.follow_bytes)
            return partial

    def state(self, codec: str) -> str:
        """The progress line for ``.info``: percent, rate, time left, readable part."""
        with self._cond:
            done, started, readable = self.done, self.started, self._starts[-1]
        if started is None:
            return f"{codec}: index build queued (other images are being indexed)"
        elapsed = max(time.monotonic() - started, 1e-3)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else 0.0
        text = (f"{codec}: building the index, {100.0 * done / self.total:.0f}% "
                f"({rate / 1e6:.0f} MB/s compressed, {left:.0f} s left)")
        if readable:
            text += f"; the first {human(readable)} are readable now"
        return text


def cancel_all(timeout: float = 5.0) -> None:
    """Cancel every running build and wait for them (interpreter exit, unmount)."""
    with _builds_lock:
        builds = list(_builds)
    for build in builds:
        build.cancel()
    deadline = time.monotonic() + timeout
    for build in builds:
        build.join(max(0.0, deadline - time.monotonic()))


atexit.register(cancel_all)
