#!/usr/bin/env python3
"""Index build against the codec's own tool, in process, side by side.

For each compressed copy of the bench image (bench/codecs_mount.py makes
them under BENCH_DIR/compressed), round by round with the file in the page
cache: ``TOOL -dc FILE > /dev/null`` and imagefs's index pass (a fresh
index each round, nothing persisted), as compressed bytes per second.
Issue 12's target: the pass >= 0.8 x the tool.

    .venv/bin/python bench/index_vs_tool.py [--rounds 3] [--codecs zstd,lz4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from codecs_mount import CODECS  # noqa: E402
from common import BENCH_DIR  # noqa: E402

from imagefs.codecs import open_decompressed  # noqa: E402
from imagefs.io import FileSource  # noqa: E402
from imagefs.services.cache import BlockCache  # noqa: E402
from imagefs.services.memtune import tune_allocator  # noqa: E402


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--codecs", default=",".join(CODECS))
    args = ap.parse_args()
    tune_allocator()                       # as the imagefs command does
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    print("| codec | compressed MiB | tool s | index pass s | pass / tool speed |")
    print("|---|---|---|---|---|")
    for name in args.codecs.split(","):
        _comp, dec, suffix = CODECS[name]
        found = sorted((BENCH_DIR / "compressed" / name).glob(f"*{suffix}"))
        if not found:
            print(f"| {name} | not built (run bench/codecs_mount.py first) | | | |")
            continue
        path = found[0]
        tool, index = [], []
        for _ in range(args.rounds):
            _warm(path)
            t = time.perf_counter()
            subprocess.run(dec + [str(path)], stdout=subprocess.DEVNULL, check=True)
            tool.append(time.perf_counter() - t)
            _warm(path)
            t = time.perf_counter()
            stream = open_decompressed(FileSource(path), cache=BlockCache(64 << 20),
                                       progress=False)
            stream.build()
            index.append(time.perf_counter() - t)
            stream.close()
        ts, ix = statistics.median(tool), statistics.median(index)
        print(f"| {name} | {path.stat().st_size / 2**20:.0f} | {ts:.2f} ({min(tool):.2f}-"
              f"{max(tool):.2f}) | {ix:.2f} ({min(index):.2f}-{max(index):.2f}) | "
              f"{ts / ix:.2f}× |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
