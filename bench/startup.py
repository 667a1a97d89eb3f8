"""Start to first byte, imagefs against the passthrough, alternating many times.

``bench/run.py`` records start to first byte as a by-product of its other
tests: each start follows a pre-read of the 1.9 GB image and, often, a
drop_caches of the test before, so its fifteen samples per contender swing
from 50 to 180 ms and a change of a few milliseconds does not show.  This
script measures only that: the same command as run.py's contenders, started
``--rounds`` times each, imagefs and the passthrough taking turns, with the
page cache either left warm or dropped before every start (``--cold``, the
first mount after a boot: every module and library read from disk).

``--also DIR`` adds imagefs run from another checkout (a ``git worktree``
of an older commit) as a third contender, to compare two versions in the
same minutes::

    git worktree add /tmp/old HEAD~5
    sudo .venv/bin/python bench/startup.py --rounds 21 --also /tmp/old
    sudo .venv/bin/python bench/startup.py --rounds 13 --cold --also /tmp/old

Prints the median of each and the ratios (passthrough time / imagefs time,
as run.py's "imagefs / passthrough": > 1 means imagefs is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path

import contenders as ct
import fixtures
import measures as ms
from common import GiB, MiB, bench_tempdir, drop_caches, log


def start_to_first_byte(c: ct.Contender, work: Path, cold: bool) -> float:
    """Seconds from starting ``c`` to the first byte of its target file."""
    if cold and not drop_caches():
        raise SystemExit("--cold needs root (drop_caches)")
    m = ct.start(c, work / f"mnt-{c.name}", work)
    try:
        return m.seconds_to_live + ms.first_byte(c.path(m.mnt))
    finally:
        ct.stop(m)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="starts per contender (default 15)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each start")
    ap.add_argument("--size-gb", type=float, default=2.0, help="the ext4 fixture (run.py's)")
    ap.add_argument("--also", metavar="DIR", help="another checkout's imagefs as a contender")
    args = ap.parse_args(argv)
    size = int(args.size_gb * GiB) // MiB * MiB
    fx = fixtures.ext4_image(size, name=f"ext4-{size // MiB}m")
    ct.compile_bytecode()
    work = bench_tempdir("startup-")
    try:
        src = work / "src"
        src.mkdir()
        os.link(fx.image, src / fx.image.name)
        cs = [ct.passthrough(fx.image, fx.raw), ct.imagefs(src, fx.image.name)]
        if args.also:
            other = ct.imagefs(src, fx.image.name)
            other.name = "imagefs@" + Path(args.also).name
            other.env = {"PYTHONPATH": str(Path(args.also).resolve())}
            cs.append(other)
        times: dict[str, list[float]] = {c.name: [] for c in cs}
        for r in range(args.rounds + 1):
            for c in cs:
                t = start_to_first_byte(c, work, args.cold)
                if r:                  # the first round warms the bytecode caches
                    times[c.name].append(t)
        med = {name: statistics.median(v) for name, v in times.items()}
        state = "cold (page cache dropped before each start)" if args.cold else "warm"
        log(f"start to first byte, {state}, median of {args.rounds}:")
        for name, t in med.items():
            ratio = med["passthrough"] / t
            log(f"  {name:<24} {1000 * t:6.1f} ms   passthrough / this {ratio:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
