"""Process-wide knobs of the codec layer and the pools they size.

Set once at start-up (:func:`imagefs.codecs.configure`, the ``codecs``
section of the configuration); read by every stream.  Changing them while
streams decode is allowed: the prefetch pool is replaced and the old one
finishes its queued work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from imagefs.services.cache import BlockCache

_CPUS = os.cpu_count() or 1
_T = TypeVar("_T")

#: Decode the next spans in background threads while a sequential reader
#: consumes this one (span decoding releases the GIL): the codecs whose
#: tools decode in parallel (xz -T0, plzip, pigz helpers) keep up this way.
PREFETCH = _CPUS > 1
#: How many spans ahead: one per CPU keeps every core decoding.
PREFETCH_DEPTH = max(1, min(8, _CPUS))
#: Threads rapidgzip uses for its index pass.
INDEX_THREADS = _CPUS
#: Index passes running at once over all streams (each keeps one core busy;
#: ``imagefs index TREE`` starts all and they queue for these slots).
BUILD_SLOTS = _CPUS

_lock = threading.Lock()
_default_cache: BlockCache | None = None


class LazyPool:
    """A process-wide thread pool, made on first use (no threads for an
    uncompressed mount) with as many workers as ``workers()`` says then."""

    def __init__(self, prefix: str, workers: Callable[[], int]) -> None:
        self._prefix = prefix
        self._workers = workers
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers(), thread_name_prefix=self._prefix)
            return self._pool

    def replace(self) -> None:
        """The next get() makes a new pool; the old one finishes its queued work."""
        with self._lock:
            old, self._pool = self._pool, None
        if old is not None:
            old.shutdown(wait=False)


class _Inline:
    """Runs each task at once in the caller's thread (the ``submit`` of a pool)."""

    def submit(self, fn: Callable[..., _T], /, *args: Any) -> Future[_T]:
        done: Future[_T] = Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 -- delivered where the pool's would be
            done.set_exception(exc)
        return done


_INLINE = _Inline()


class HelperPool:
    """One helper thread beside the index passes (piece sums, snapshots), or
    none when the user asked for one CPU thread (``--threads 1``): then each
    task runs in the pass's own thread, in order."""

    def __init__(self, prefix: str) -> None:
        self._pool = LazyPool(prefix, lambda: 1)

    def get(self) -> ThreadPoolExecutor | _Inline:
        """Where to submit the next task (decide once per pass and keep it:
        tasks that must run in order need the one executor)."""
        return self._pool.get() if INDEX_THREADS > 1 else _INLINE


#: Background span decoders (streaming.py).
_prefetch = LazyPool("imagefs-prefetch", lambda: PREFETCH_DEPTH)


def prefetch_lanes(fast_decoder: bool) -> int:
    """How many spans one sequential stream decodes ahead at once.

    A decoder that outruns what the reply path delivers (zstd, lz4, lzop:
    1.4-3.5 GB/s on one core, where the FUSE threads' copying and checking
    of the replies keeps another core busy) gets one lane fewer than there
    are prefetch workers: a second decoder of the same stream only took
    that core from the readers.  O_DIRECT reads of the bench's 2 GiB image
    on 2 CPUs, old (one task per span, two workers) against one lane,
    medians of 4-6 alternating rounds: lz4 1.37 s against 1.04 s, lzop
    1.34 against 1.17, zstd 1.46 against 1.46; gzip, whose decoder is the
    slow side, 2.75 s with one worker against 2.41 with two, so slow
    decoders (gzip, bzip2, xz, lzip) keep every worker.
    """
    return max(1, PREFETCH_DEPTH - 1) if fast_decoder else PREFETCH_DEPTH


def set_threads(n: int) -> None:
    """CPU threads for index passes and prefetching; 1 disables prefetching, 0 = one per CPU."""
    global PREFETCH, PREFETCH_DEPTH, INDEX_THREADS, BUILD_SLOTS
    n = n if n > 0 else _CPUS
    PREFETCH = n > 1
    PREFETCH_DEPTH = max(1, min(8, n))
    INDEX_THREADS = n
    BUILD_SLOTS = n
    _prefetch.replace()


# -- demand before prefetch --------------------------------------------------
#
# A random read of one image must not wait behind the decode-ahead of another
# image's sequential reader: while any reader waits for a piece that is not
# part of a stream (a demand decode), prefetch workers pause between pieces
# (for at most PAUSE_LIMIT each, so a storm of random reads cannot stall a
# stream for good), and rapidgzip jobs of such readers go first.

#: Longest pause of a prefetch worker per piece while demand decodes run.
PAUSE_LIMIT = 0.05

_demand = threading.Condition()
_demand_count = 0
_local = threading.local()


class demand:
    """Context: this thread decodes for a reader that is waiting (not prefetch)."""

    def __enter__(self) -> None:
        global _demand_count
        with _demand:
            _demand_count += 1
        _local.urgent = getattr(_local, "urgent", 0) + 1

    def __exit__(self, *exc: object) -> None:
        global _demand_count
        _local.urgent -= 1
        with _demand:
            _demand_count -= 1
            if not _demand_count:
                _demand.notify_all()


def urgent() -> bool:
    """Whether this thread decodes for a waiting reader now."""
    return bool(getattr(_local, "urgent", 0))


def yield_to_demand() -> None:
    """Prefetch workers call this between pieces (see above)."""
    with _demand:
        if _demand_count:
            _demand.wait(PAUSE_LIMIT)


def prefetch_pool() -> ThreadPoolExecutor:
    """The shared pool of background span decoders (created on first use)."""
    return _prefetch.get()


def default_cache() -> BlockCache:
    """A process-wide cache for callers that do not pass their own (256 MiB)."""
    global _default_cache
    with _lock:
        if _default_cache is None:
            _default_cache = BlockCache(256 << 20)
        return _default_cache
