"""The individual measurements, each on a file of a live mount.

Each function returns plain numbers (a dict) so that run.py can take
medians over rounds and contenders; none of them knows which contender it
measures.  Page-cache state is set by the caller (drop_caches before the
cold measurements).
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from pathlib import Path

from common import MiB, drop_caches, loop_mount, read_file_seq

PAGE = 4096


def first_byte(path: Path) -> float:
    """Seconds to open ``path`` and get its first byte (the mount is already live)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        if len(os.pread(fd, 1, 0)) != 1:
            raise RuntimeError(f"{path}: empty read")
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def sequential(path: Path, time_limit: float) -> dict:
    """Cold-cache sequential 1 MiB reads, then the same bytes again (warm).

    Bounded by ``time_limit`` seconds each.  The second pass shows whether
    the mount keeps its pages in the kernel page cache across reads
    (kernel_cache / keep_cache on immutable files): then it runs at
    page-cache speed without a single request reaching the daemon.
    """
    drop_caches()
    n, dt = read_file_seq(path, MiB, time_limit=time_limit)
    n2, dt2 = read_file_seq(path, MiB, limit=n, time_limit=time_limit)
    return {"bytes": n, "seconds": dt, "mibps": n / dt / MiB if dt else float("nan"),
            "complete": n >= os.stat(path).st_size,
            "warm_mibps": n2 / dt2 / MiB if dt2 else float("nan")}


def sequential_hot(path: Path, time_limit: float) -> dict:
    """Sequential 1 MiB reads of a fresh mount whose backing file is in the page cache.

    No disk I/O at all (the caller pre-reads the backing file and does not
    drop caches; a fresh mount has no pages of its own yet): what remains
    is the per-request cost of FUSE + the daemon's Python, which is steady
    where the cold figure swings with the host's disk.
    """
    return _throughput(*read_file_seq(path, MiB, time_limit=time_limit))


def _throughput(n: int, dt: float) -> dict:
    return {"bytes": n, "seconds": dt, "mibps": n / dt / MiB if dt else float("nan")}


def sequential_direct(path: Path, time_limit: float) -> dict:
    """Sequential O_DIRECT 1 MiB reads of a fresh mount (backing file in the page cache).

    The daemon's own speed: a buffered read also makes the kernel copy every
    byte into new page-cache pages, and on a VM that reports freed memory to
    its host (virtio-balloon free page reporting) touching those pages costs
    host faults that swing one 2 GiB pass through a bare passthrough from
    0.6 to 3.4 s (bench/RESULTS.md, twelfth session).  O_DIRECT reads land
    in one reused buffer instead, so this figure holds from run to run.
    """
    return _throughput(*read_file_seq(path, MiB, time_limit=time_limit, direct=True))


def random_reads(path: Path, threads: int, reads_per_thread: int, time_limit: float,
                 seed: int = 42) -> dict:
    """Cold-cache random 4 KiB preads at page-aligned offsets, ``threads`` at once.

    The same seed gives every contender the same offset sequence (scaled to
    its file size).  POSIX_FADV_RANDOM turns kernel readahead off, as a
    random reader would, so each read really reaches the file system.
    """
    size = os.stat(path).st_size
    pages = max(1, size // PAGE - 1)
    drop_caches()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        lat: list[list[float]] = [[] for _ in range(threads)]
        deadline = time.perf_counter() + time_limit
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            out = lat[i]
            try:
                for _ in range(reads_per_thread):
                    off = rng.randrange(pages) * PAGE
                    t = time.perf_counter()
                    os.pread(fd, PAGE, off)
                    now = time.perf_counter()
                    out.append(now - t)
                    if now > deadline:
                        break
            except BaseException as exc:     # surface it in the caller
                errors.append(exc)

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        os.close(fd)
    if errors:
        raise errors[0]
    all_lat = sorted(x for per in lat for x in per)
    n = len(all_lat)
    return {"reads": n, "seconds": wall, "iops": n / wall if wall else float("nan"),
            "p50_ms": 1000 * all_lat[n // 2] if n else float("nan"),
            "p99_ms": 1000 * all_lat[min(n - 1, int(n * 0.99))] if n else float("nan"),
            "mean_ms": 1000 * statistics.fmean(all_lat) if n else float("nan")}


def loop_copy(partition: Path, loopmnt: Path, rel: str, time_limit: float = 120) -> dict:
    """Loop-mount ``partition`` read-only and read ``rel`` out of it, cold."""
    with loop_mount(partition, loopmnt, "loop,ro"):
        drop_caches()
        n, dt = read_file_seq(loopmnt / rel, MiB, time_limit=time_limit)
    return {"bytes": n, "seconds": dt, "mibps": n / dt / MiB if dt else float("nan")}
