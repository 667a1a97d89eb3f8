"""Allocator tuning for large short-lived buffers and many threads.

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


def tune_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; False if not glibc."""
    global _done
    if _done:
        return True
    try:
        # The running process's own symbols hold libc's: no library search
        # (ctypes.util.find_library runs ldconfig, ~8 ms of every start-up).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and \
        bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
    _done = ok
    if not ok:
        log.debug("mallopt refused the thresholds; continuing with defaults")
    return ok
