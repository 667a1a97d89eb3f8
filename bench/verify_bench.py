#!/usr/bin/env python3
"""Verify on read and the changed-source check: what they cost, side by side.

    sudo .venv/bin/python bench/verify_bench.py [--size-gb 2] [--rounds 3]

Mounts the bench's partclone image (ext4, CRC32 every 256 blocks: 1 MiB
groups) three ways in one run, rotating the order round by round:

* ``passthrough`` - one pread per FUSE read of the image file (the ceiling);
* ``imagefs`` - the default: every checksum group checked on its first read;
* ``imagefs-noverify`` - ``-o verify=off``.

Figures (medians of the rounds, min-max in brackets): sequential 1 MiB
reads with a cold page cache, the same with the image file in the page
cache (no disk: the steadier figure), random 4 KiB reads with a cold
cache on a fresh mount (every group still unchecked: each first read of a
group reads all of its 1 MiB), and random 4 KiB reads after one sequential
pass checked every group (page cache dropped again).

Then, in process, the price of the changed-source check of every read
(``os.stat`` of the path after each pread) against ``os.fstat`` and
against no check, for a 4 KiB FileSource read from the page cache.
Results go to BENCH_DIR/results/verify-*.md and .json; nothing is written
into the source tree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders as ct  # noqa: E402
import fixtures  # noqa: E402
import measures as ms  # noqa: E402
from common import (BENCH_DIR, GiB, MiB, bench_tempdir, drop_caches, log, median,  # noqa: E402
                    read_file_seq, unmount)

TESTS = ["seq", "seqhot", "rand1", "rand1-checked"]


def prewarm(path: Path) -> None:
    with open(path, "rb") as fh:
        while fh.read(8 * MiB):
            pass


def one(c: ct.Contender, test: str, work: Path, cfg: dict) -> dict:
    """Mount ``c`` afresh, run ``test``, unmount."""
    if c.backing is not None:
        prewarm(c.backing)
    mnt = work / f"mnt-{c.name}"
    m = ct.start(c, mnt, work)
    try:
        target = c.path(mnt)
        if test == "seq":
            return ms.sequential(target, cfg["seq_time"])
        if test == "seqhot":
            return ms.sequential_hot(target, cfg["seq_time"])
        if test == "rand1":
            return ms.random_reads(target, 1, cfg["rand_reads"], cfg["rand_time"])
        read_file_seq(target, MiB)           # one pass: every group gets checked
        drop_caches()
        return ms.random_reads(target, 1, cfg["rand_reads"], cfg["rand_time"])
    finally:
        ct.stop(m)


def stat_costs(path: Path, n: int = 200_000) -> dict:
    """Microseconds per 4 KiB FileSource read: no check, fstat, stat of the path."""
    from imagefs.io import FdPool, FileSource
    from imagefs.io import source as source_mod

    buf = memoryview(bytearray(4096))
    out: dict[str, float] = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        for name, fn in (("fstat_us", lambda: os.fstat(fd)),
                         ("stat_us", lambda: os.stat(path))):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            out[name] = (time.perf_counter() - t) / n * 1e6
    finally:
        os.close(fd)
    src = FileSource(str(path), FdPool(4))
    src.read_into(0, [buf])
    real_check = source_mod.FileSource.check_unchanged

    def timed() -> float:
        t = time.perf_counter()
        for i in range(n):
            src.read_into((i * 4096) % (64 * MiB), [buf])
        return (time.perf_counter() - t) / n * 1e6

    try:
        out["read_with_stat_us"] = timed()
        source_mod.FileSource.check_unchanged = lambda self: None  # type: ignore[method-assign]
        out["read_unchecked_us"] = timed()
        pool_fd = os.open(path, os.O_RDONLY)
        source_mod.FileSource.check_unchanged = lambda self: os.fstat(pool_fd) and None  # type: ignore[method-assign,func-returns-value]
        out["read_with_fstat_us"] = timed()
        os.close(pool_fd)
    finally:
        source_mod.FileSource.check_unchanged = real_check  # type: ignore[method-assign]
    return out


def summarize(raw: dict) -> dict:
    out: dict = {}
    for name, tests in raw.items():
        for test, runs in tests.items():
            key = "iops" if test.startswith("rand") else "mibps"
            vals = [r[key] for r in runs if key in r]
            if vals:
                out.setdefault(name, {})[test] = (median(vals), min(vals), max(vals))
    return out


def report(res: dict) -> str:
    s = res["summary"]
    names = ["passthrough", "imagefs", "imagefs-noverify"]
    label = {"seq": "sequential 1 MiB, cold (MiB/s)",
             "seqhot": "sequential 1 MiB, image in page cache (MiB/s)",
             "rand1": "random 4 KiB, cold, groups unchecked (IOPS)",
             "rand1-checked": "random 4 KiB, cold, groups checked (IOPS)"}
    lines = [f"Run {res['date']}: `{res['command']}` ({res['elapsed_s']:.0f} s); "
             f"1-min load average {res['load_start']:.2f} at start, {res['load_end']:.2f} "
             f"at end; fixture {res['fixture']}", "",
             "| figure | " + " | ".join(names) + " | verify on / passthrough | "
             "verify on / verify off |", "|---" * (len(names) + 3) + "|"]
    for test in TESTS:
        cells = []
        for n in names:
            v = s.get(n, {}).get(test)
            cells.append(f"{v[0]:.0f} ({v[1]:.0f}-{v[2]:.0f})" if v else "-")
        on = s.get("imagefs", {}).get(test)
        off = s.get("imagefs-noverify", {}).get(test)
        pt = s.get("passthrough", {}).get(test)
        r1 = f"{on[0] / pt[0]:.2f}x" if on and pt else ""
        r2 = f"{on[0] / off[0]:.2f}x" if on and off else ""
        lines.append(f"| {label[test]} | " + " | ".join(cells) + f" | {r1} | {r2} |")
    c = res["stat_costs"]
    lines += ["", f"Changed-source check, in process, 4 KiB FileSource reads from the page "
              f"cache: unchecked {c['read_unchecked_us']:.2f} us, with fstat of the descriptor "
              f"{c['read_with_fstat_us']:.2f} us, with stat of the path (what imagefs does) "
              f"{c['read_with_stat_us']:.2f} us; bare fstat {c['fstat_us']:.2f} us, bare stat "
              f"{c['stat_us']:.2f} us.", "",
              f"Medians of {res['rounds']} rounds (min-max in brackets)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seq-time", type=float, default=20.0)
    p.add_argument("--tests", default=",".join(TESTS),
                   help=f"comma-separated subset of {','.join(TESTS)} (reruns of one figure)")
    args = p.parse_args(argv)
    tests = [t for t in args.tests.split(",") if t in TESTS]
    if os.geteuid() != 0:
        print("verify_bench.py needs root (drop_caches, loop devices, mount)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    load_start = os.getloadavg()[0]
    size = int(args.size_gb * GiB) // MiB * MiB
    fx = fixtures.ext4_image(size, name=f"ext4-{size // MiB}m")
    work = bench_tempdir("verify-")
    src = work / "src"
    src.mkdir()
    os.link(fx.image, src / fx.image.name)
    ct.compile_bytecode()
    on = ct.imagefs(src, fx.image.name)
    off = ct.imagefs(src, fx.image.name, "verify=off")
    off.name = "imagefs-noverify"
    cs = [ct.passthrough(fx.image, fx.raw), on, off]
    for c in cs:
        c.backing = fx.image
    cfg = {"seq_time": args.seq_time, "rand_reads": 3000, "rand_time": 6.0}
    raw: dict = {c.name: {t: [] for t in tests} for c in cs}
    try:
        for r in range(args.rounds):
            order = cs[r % len(cs):] + cs[:r % len(cs)]
            for test in tests:
                for c in order:
                    if test == "rand1-checked" and c.name == "passthrough":
                        continue
                    res = one(c, test, work, cfg)
                    raw[c.name][test].append(res)
                    key = "iops" if test.startswith("rand") else "mibps"
                    log(f"round {r + 1} {test:14s} {c.name:17s} {res[key]:9.1f} {key}")
        if "rand1-checked" in tests and "rand1" in tests:
            raw["passthrough"]["rand1-checked"] = raw["passthrough"]["rand1"]
        costs = stat_costs(fx.image)
    finally:
        for d in work.glob("mnt-*"):
            unmount(d)
        shutil.rmtree(work, ignore_errors=True)
    res = {"command": "sudo " + " ".join([sys.executable, "bench/verify_bench.py"]
                                           + (argv if argv is not None else sys.argv[1:])),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "fixture": f"ext4 {size / GiB:.2f} GiB, partclone image "
                      f"{fx.image.stat().st_size / MiB:.0f} MiB (CRC32 every 256 blocks)",
           "rounds": args.rounds, "raw": raw, "summary": summarize(raw), "stat_costs": costs,
           "load_start": load_start, "load_end": os.getloadavg()[0],
           "elapsed_s": time.monotonic() - t0}
    out = BENCH_DIR / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"verify-{stamp}.json").write_text(json.dumps(res, indent=1, default=str))
    text = report(res)
    (out / f"verify-{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
