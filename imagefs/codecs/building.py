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
from imagefs.codecs.seekindex import SeekIndex
from imagefs.services.units import human

log = logging.getLogger("imagefs.codecs")

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
                 finish: Callable[[Any], SeekIndex]) -> None:
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
        self.blobs: list[bytes] = []
        self._partial: SeekIndex | None = None
        self._thread: threading.Thread | None = None
        #: Observers of progress (the ``index`` verb's overall bar): told
        #: the compressed bytes of each update.
        self.listeners: list[Callable[[int], None]] = []

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
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting reader
            with self._cond:
                self.error = exc
            if not isinstance(exc, BuildCancelled):
                log.debug("%s: index pass failed: %s", self.name, exc)
        finally:
            slot.release()
            with self._cond:
                self.finished = time.monotonic()
                self._cond.notify_all()

    def cancel(self) -> None:
        """Stop the pass at its next progress report (waiters get the error)."""
        with self._cond:
            self.cancelled = True

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

    @property
    def committed(self) -> int:
        """Where the last committed span ends (0 before the first)."""
        return self._starts[-1]

    def complete_index(self, size: int, info: dict[str, Any]) -> SeekIndex:
        """The pass's result: every span it committed (its last ends at ``size``)."""
        with self._cond:
            return SeekIndex(size, self._starts, self._meta, list(self.blobs), info,
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

    def wait(self, end: int) -> SeekIndex:
        """An index covering ``[0, end)``: the partial one if it does, else the
        complete one once the pass is done (raises the pass's error)."""
        with self._cond:
            while True:
                if self.index is not None:
                    return self.index
                if self.error is not None:
                    raise self.error
                partial = self._partial_locked(end)
                if partial is not None:
                    return partial
                self._cond.wait()

    def covering(self, end: int) -> SeekIndex | None:
        """The complete or partial index if it already covers ``end``, else None."""
        with self._cond:
            if self.index is not None:
                return self.index
            return self._partial_locked(end)

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
