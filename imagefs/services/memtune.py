"""Allocator tuning for large short-lived buffers and many threads, and the
heap keeper that returns freed holes once the process is quiet.

Every virtual-partition read allocates a buffer of up to a few MiB for the
pread and one for the result.  glibc serves allocations above its mmap
threshold (128 KiB at start) with fresh mmap()s, so each read page-faults
its whole buffer in again and unmaps it afterwards: measured here, 1 MiB
reads of a warm 1 GB partclone image ran at 1.5 GB/s that way and at
5.5-6.5 GB/s with the thresholds below (bench/RESULTS.md).  Keeping such
buffers in the heap costs at most the trim threshold of idle memory.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Buffers up to this size come from the heap (covers 1 MiB FUSE reads,
#: cache chunks and codec spans).
MMAP_THRESHOLD = 8 << 20
#: Idle heap memory glibc may keep instead of returning it to the kernel
#: (part of the "cache size + 50 MB" memory budget of docs/design.md).  At
#: 16 MiB every decoded span freed gave its pages back and the next ones
#: faulted them in again: sequential zstd in process 214-288K minor faults
#: and 1300 MiB/s per 2 GiB, at 64 MiB 133K and 1470-1500 (peak RSS the same).
#: The kept memory is what a burst of decoding held a moment before, so it
#: only adds to RSS below its own peak; it is more than the 50 MB allowance
#: on its own, which is the price of not faulting every span in twice.
TRIM_THRESHOLD = 64 << 20

#: glibc gives each thread that allocates its own arena (up to 8 per core),
#: each holding freed memory of its own; FUSE worker and codec prefetch
#: threads made that 60 MB of RSS in the codec bench (lz4: 229 -> 168 MB
#: with two arenas).
ARENA_MAX = 2

_done = False


def _process_libc() -> ctypes.CDLL:
    """The C library as this process has it loaded.  The process's own
    symbols hold libc's: no library search (ctypes.util.find_library runs
    ldconfig, ~8 ms of every start-up)."""
    return ctypes.CDLL(None)


def tune_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; False if not glibc."""
    global _done
    if _done:
        return True
    try:
        mallopt = _process_libc().mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and \
        bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
    _done = ok
    if not ok:
        log.debug("mallopt refused the thresholds; continuing with defaults")
    return ok


# ---------------------------------------------------------------- heap keeper
#
# The thresholds above return the *top* of the heap.  Freed blocks between
# live ones are never returned: after 10 s of 16-thread random 4 KiB reads
# of one compressed image (256 MiB cache of 1 MiB pieces evicted in LRU
# order, between decoders' buffers of other sizes) glibc kept 86-118 MB
# free in such holes, and kept them once the reads stopped (RssAnon 33 ->
# 450 MB for zstd, 77 -> 543 MB for gzip; bench/RESULTS.md), against
# docs/design.md's "cache + 50 MB".  Only malloc_trim() gives holes back.
# Trimming while reads go on does not bound the memory: a /tmp driver
# trimming once a second saw the holes fault back in within that second
# (RssAnon 388-398 MB either way, 1.7x the faults).  So the keeper waits
# for the mount to go quiet and gives back what the burst left.

#: Freed-but-resident memory tolerated before a quiet mount is trimmed
#: (the 50 MB allowance of docs/design.md, rounded to whole MiB).
KEEP_LIMIT = 48 << 20
#: Seconds between looks.  A look costs ~0.1 ms (os.times(), mallinfo2's
#: walk of the free lists, /proc/self/status); a mount left alone gives its
#: holes back within two looks.
CHECK_PERIOD = 1.0
#: CPU seconds per second below which the process counts as quiet: 5% of
#: a core, about 25 random 4 KiB reads of a compressed image per second.
QUIET_CPU = 0.05


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
        "fsmblks", "uordblks", "fordblks", "keepcost")]


def _rss_anon() -> int:
    """This process's resident anonymous memory in bytes (0 if unknown)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class HeapKeeper:
    """Gives back the freed heap memory glibc keeps, once the process is quiet.

    *Kept* memory is the resident anonymous memory malloc does not count as
    in use: free holes and the heap's free top, plus what is not malloc's
    at all (Python's object arenas, thread stacks).  The keeper remembers
    the least it has seen since its last trim (its floor, taken first when
    it is made, before any holes).  When kept memory stands ``limit`` above the floor and
    the process used less than :data:`QUIET_CPU` of a core since the last
    look, it trims: all free pages go back, the top included (a quiet
    process has no burst to keep them for).  Growth a trim cannot give back
    (more Python objects) raises the floor, so it costs one trim, not one
    per look.
    """

    def __init__(self, limit: int = KEEP_LIMIT, period: float = CHECK_PERIOD,
                 quiet_cpu: float = QUIET_CPU) -> None:
        self.limit = limit
        self.period = period
        self.quiet_cpu = quiet_cpu
        self.trims = 0
        self._libc = _process_libc()
        self._libc.mallinfo2.restype = _Mallinfo2
        self._libc.malloc_trim.argtypes = [ctypes.c_size_t]
        self._floor = self.kept()
        self._cpu = _cpu_seconds()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def available(cls) -> bool:
        """Whether this libc has mallinfo2 and malloc_trim (glibc >= 2.33)
        and the kernel tells RssAnon."""
        try:
            libc = _process_libc()
        except OSError:
            return False
        return hasattr(libc, "mallinfo2") and hasattr(libc, "malloc_trim") and _rss_anon() > 0

    def kept(self) -> int:
        """Resident anonymous bytes that malloc does not count as in use."""
        info = self._libc.mallinfo2()
        return _rss_anon() - info.uordblks - info.hblkhd

    def check(self, elapsed: float) -> bool:
        """One look, ``elapsed`` seconds after the last: whether it trimmed."""
        cpu = _cpu_seconds()
        busy = cpu - self._cpu > self.quiet_cpu * max(elapsed, 1e-3)
        self._cpu = cpu
        kept = self.kept()
        if kept < self._floor:
            self._floor = kept
        if busy or kept - self._floor <= self.limit:
            return False
        self._libc.malloc_trim(0)
        self.trims += 1
        self._floor = self.kept()
        self._cpu = _cpu_seconds()           # the trim's own time is not load
        log.debug("heap keeper: quiet with %d MiB kept, %d MiB after trim %d",
                  kept >> 20, self._floor >> 20, self.trims)
        return True

    def start(self) -> None:
        """Look every ``period`` seconds from a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="imagefs-heapkeeper",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the looks (waits for the thread: at most one look)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.period):
            now = time.monotonic()
            self.check(now - last)
            last = now


def start_heap_keeper() -> HeapKeeper | None:
    """A started :class:`HeapKeeper` for a long-lived process (the mount),
    or None where the allocator is not glibc's."""
    if not HeapKeeper.available():
        log.debug("no mallinfo2/malloc_trim: freed heap holes stay resident")
        return None
    keeper = HeapKeeper()
    keeper.start()
    return keeper
