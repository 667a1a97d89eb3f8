"""A fresh mount of an unindexed compressed image against the codec's tool, alternating.

Issue 12's first-read figure on its own: for each codec, round by round
with the compressed file read just before (the page cache of these VMs
holds only a few GB, and a cold read runs at disk speed), ``TOOL -dc FILE
> /dev/null`` and a fresh imagefs mount with an empty index directory,
timed from the mount command to the first byte of the virtual partition
and to its last stored block (that read waits for the background index
build; the partition's tail is free space and needs no decoding); then,
with the index removed again, a fresh mount read from start to end in
1 MiB reads, as ``dd``/``cp`` of a new backup does (the reader follows
the index pass and is handed its pieces: one decode, not two).
bench/codecs_mount.py times this once per codec inside its longer series;
here it is repeated, so the medians hold against this machine's noise::

    sudo .venv/bin/python bench/unindexed.py --rounds 5 --codecs zstd,pzstd,lz4

Targets: the first byte within 0.5 s, the last stored block within 1.25x
the tool's time (the whole read has no target of its own; issue 12's
0.8x through the mount is for indexed images).  Uses run.py's 2 GiB ext4 fixture and codecs_mount.py's
compressed copies (built once, cached under BENCH_DIR).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path

import codecs_mount as cm
import contenders as ct
import fixtures
from common import GiB, MiB, bench_tempdir, log, median


def _fresh_sequential_time(c: ct.Contender, mnt: Path, work: Path) -> float:
    """Mount command to the end of a 1 MiB-read pass over an unindexed image."""
    t0 = time.perf_counter()
    m = ct.start(c, mnt, work)
    try:
        fd = os.open(c.path(mnt), os.O_RDONLY)
        try:
            while os.read(fd, MiB):
                pass
            return time.perf_counter() - t0
        finally:
            os.close(fd)
    finally:
        ct.stop(m)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--codecs", default="zstd,pzstd,lz4")
    ap.add_argument("--size-gb", type=float, default=2.0, help="the ext4 fixture (run.py's)")
    args = ap.parse_args(argv)
    size = int(args.size_gb * GiB) // MiB * MiB
    image = fixtures.ext4_image(size, name=f"ext4-{size // MiB}m").image
    last_offset = cm.last_stored_offset(image)
    ct.compile_bytecode()
    work = bench_tempdir("unindexed-")
    print("| codec | tool s | first byte s | last stored block s | last / tool "
          "| whole partition s | whole / tool |")
    print("|---|---|---|---|---|---|---|")
    try:
        for name in args.codecs.split(","):
            _comp, dec, _suffix = cm.CODECS[name]
            path = cm.compressed_copy(image, name)
            index_dir = work / "index" / name
            c = ct.imagefs(path.parent, image.name, f"index_dir={index_dir}")
            tool: list[float] = []
            first: list[float] = []
            last: list[float] = []
            whole: list[float] = []
            for r in range(args.rounds):
                cm._warm(path)
                t = time.perf_counter()
                subprocess.run(dec + [str(path)], stdout=subprocess.DEVNULL, check=True)
                tool.append(time.perf_counter() - t)
                shutil.rmtree(index_dir, ignore_errors=True)
                cm._warm(path)
                f_s, l_s = cm._fresh_mount_times(c, work / f"mnt-{name}", work, last_offset)
                first.append(f_s)
                last.append(l_s)
                shutil.rmtree(index_dir, ignore_errors=True)
                cm._warm(path)
                whole.append(_fresh_sequential_time(c, work / f"mnt-{name}", work))
                log(f"{name} round {r + 1}: tool {tool[-1]:.2f} s, first byte {f_s:.3f} s, "
                    f"last stored block {l_s:.2f} s, whole partition {whole[-1]:.2f} s")
            print(f"| {name} | {median(tool):.2f} ({min(tool):.2f}-{max(tool):.2f}) | "
                  f"{median(first):.3f} | {median(last):.2f} ({min(last):.2f}-{max(last):.2f}) | "
                  f"{median(last) / median(tool):.2f}x | {median(whole):.2f} "
                  f"({min(whole):.2f}-{max(whole):.2f}) | {median(whole) / median(tool):.2f}x |",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
