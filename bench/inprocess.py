#!/usr/bin/env python3
"""In-process throughput of ``VirtualPartition.read`` (no FUSE), warm page cache.

    sudo .venv/bin/python bench/inprocess.py [--image IMG] [--rounds 3] [--profile]

Without ``--image`` it builds (once, cached under /var/tmp/imagefs-bench) a
sparse 1.1 GiB ext4 filled to ~90% with files of mixed data and images it
with ``partclone.ext4 -c`` (default checksums: CRC32 every 256 blocks), a
~1 GB image.  Then, after one ``cat`` of the image into the page cache, it
reads the whole virtual partition in 1 MiB reads:

- ``uncached``: ``VirtualPartition(image, None)`` - bitmap extents, one
  pread per run of stored blocks, checksum trailers cut out;
- ``cached``: the same reads through a 256 MiB ``BlockCache`` (the mount's
  set-up; current blockio streams reads of a chunk or more past the cache,
  so this is the cost of that decision plus any cache bookkeeping);
- ``read-into``: ``read_into`` a reused 1 MiB buffer with the 256 MiB
  cache: what the mount does (libfuse's reply buffer is filled in place by
  one ``preadv`` per run, the checksum trailers landing in scratch space);
- ``cache-hit``: the first 128 MiB loaded into the cache with chunk-sized
  reads, then read again in 1 MiB reads (served from the cache);
- ``rand4k-uncached`` / ``rand4k-cached``: 20,000 random 4 KiB reads (in
  thousands of reads per second, not GB/s): the per-request cost of the
  reader, and of a cache miss that loads a whole chunk.

Target: >= 1.5 GB/s (10^9 bytes/s) on the uncached and cached
paths.  ``--profile`` adds a cProfile of one pass of each and prints where
the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

# Nothing is written into the source tree: no bytecode caches from this
# script, the bench modules, imagefs or the daemons it starts.
sys.dont_write_bytecode = True
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import GiB, MiB, log, median   # noqa: E402

TARGET_GBPS = 1.5
READ = MiB


def open_vp(image: Path, cache_bytes: int | None):
    """A VirtualPartition over ``image`` with a fresh cache (or none)."""
    from imagefs.blockio import VirtualPartition
    from imagefs.services.cache import BlockCache
    from imagefs.formats import probe
    from imagefs.io import FileSource
    cache = BlockCache(cache_bytes) if cache_bytes else None
    return VirtualPartition(probe(FileSource(str(image))).open(), cache)


def warm(path: Path) -> None:
    """Pull the image into the page cache (the figure is about CPU work)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 8 * MiB):
            pass
    finally:
        os.close(fd)


def seq_pass(vp, limit: int | None = None, block: int = READ) -> tuple[int, float]:
    """Read [0, limit) in ``block`` reads; (bytes, seconds)."""
    end = vp.size if limit is None else min(limit, vp.size)
    read = vp.read
    total = 0
    t0 = time.perf_counter()
    for off in range(0, end, block):
        total += len(read(off, min(block, end - off)))
    return total, time.perf_counter() - t0


def into_pass(vp, block: int = READ) -> tuple[int, float]:
    """The mount's path: ``read_into`` one reused buffer (FUSE's reply buffer)."""
    buf = memoryview(bytearray(block))
    read_into = vp.read_into
    total = 0
    t0 = time.perf_counter()
    for off in range(0, vp.size, block):
        total += read_into(off, buf[:min(block, vp.size - off)])
    return total, time.perf_counter() - t0


def measure(image: Path, rounds: int) -> dict[str, dict]:
    """Median GB/s of each mode over ``rounds`` rounds (modes alternate)."""
    modes = {
        "uncached": lambda: seq_pass(open_vp(image, None)),
        "cached": lambda: seq_pass(open_vp(image, 256 * MiB)),
        "read-into": lambda: into_pass(open_vp(image, 256 * MiB)),
        "cache-hit": lambda: _hit_pass(image),
        "rand4k-uncached": lambda: rand_pass(open_vp(image, None)),
        "rand4k-cached": lambda: rand_pass(open_vp(image, 256 * MiB)),
    }
    results: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode, fn in modes.items():
            n, dt = fn()
            results[mode].append(n / dt / 1e9)
            log(f"round {r + 1} {mode}: {n / dt / 1e9:.2f} G/s ({n / MiB:.0f} Mi in {dt:.2f} s)")
    return {m: {"gbps": median(v), "rounds": v} for m, v in results.items()}


def _hit_pass(image: Path) -> tuple[int, float]:
    """Load 128 MiB into the cache with chunk-sized reads, then time 1 MiB reads of it."""
    vp = open_vp(image, 256 * MiB)
    seq_pass(vp, 128 * MiB, block=vp.chunk_size)
    return seq_pass(vp, 128 * MiB)


def rand_pass(vp, reads: int = 20_000, seed: int = 1) -> tuple[int, float]:
    """Random page-aligned 4 KiB reads, warm page cache.

    Returns (reads * 10**6, seconds): measure() divides by 10**9, so the
    stored figure is thousands of reads per second.
    """
    import random
    rng = random.Random(seed)
    pages = vp.size // 4096 - 1
    offs = [rng.randrange(pages) * 4096 for _ in range(reads)]
    read = vp.read
    t0 = time.perf_counter()
    for off in offs:
        read(off, 4096)
    # Reported through the same n/dt/1e9 formula: 1e6 per read gives k-reads/s.
    return reads * 1_000_000, time.perf_counter() - t0


def profile(image: Path, top: int = 18) -> str:
    """cProfile text of one uncached and one cached pass."""
    out = io.StringIO()
    for label, cache in (("uncached", None), ("cached", 256 * MiB)):
        vp = open_vp(image, cache)
        prof = cProfile.Profile()
        prof.enable()
        seq_pass(vp)
        prof.disable()
        out.write(f"\n=== cProfile: {label} pass (sorted by own time) ===\n")
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def default_image() -> Path:
    import fixtures
    return fixtures.ext4_image(int(1.1 * GiB) // MiB * MiB, name="ext4-inproc").image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="in-process VirtualPartition.read throughput")
    ap.add_argument("--image", type=Path, help="partclone image (default: build the 1 GB one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="add a cProfile of each path")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--tune-alloc", action="store_true",
                    help="raise glibc's mmap threshold first, as the imagefs command does "
                         "(imagefs.services.memtune)")
    args = ap.parse_args(argv)
    if args.tune_alloc:
        from imagefs.services.memtune import tune_allocator
        log(f"tune_allocator: {tune_allocator()}")
    image = args.image or default_image()
    warm(image)
    res = measure(image, max(1, args.rounds))
    vp = open_vp(image, None)
    print(f"image {image} ({image.stat().st_size / 1e9:.2f} GB), partition {vp.size / 1e9:.2f} GB, "
          f"{READ // MiB} MiB reads, warm page cache, {args.rounds} rounds (median)"
          + (", allocator tuned" if args.tune_alloc else ""))
    for mode, r in res.items():
        if mode.startswith("rand4k"):
            print(f"  {mode:15s} {r['gbps'] * 1000:8.0f} reads/s (4 KiB, random)")
            continue
        verdict = "" if mode == "cache-hit" else (
            "  OK" if r["gbps"] >= TARGET_GBPS else f"  BELOW target {TARGET_GBPS} GB/s")
        print(f"  {mode:15s} {r['gbps']:8.2f} GB/s{verdict}")
    if args.json:
        args.json.write_text(json.dumps({"image": str(image), "results": res}, indent=1))
    if args.profile:
        print(profile(image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
