#!/usr/bin/env python3
"""Where a FUSE daemon spends its time while it serves a workload (py-spy).

    sudo .venv/bin/python bench/profile_mount.py [--contender imagefs] [--workload seq]
         [--seconds 8] [--image IMG]

Mounts one contender (as bench/run.py does), samples it with ``py-spy
record`` (installed once into /var/tmp/imagefs-bench/tools) while the
workload runs in a loop (``seq``: cold 1 MiB sequential reads; ``rand``:
cold random 4 KiB reads, 4 threads; ``hot``: O_DIRECT 1 MiB reads with the
image in the page cache, i.e. pure per-request cost), then prints the functions with the
most samples, by own time and inclusive, over the non-idle samples of all
threads.  The raw collapsed stacks are kept under BENCH_DIR/profiles.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

# Nothing is written into the source tree: no bytecode caches from this
# script, the bench modules, imagefs or the daemons it starts.
sys.dont_write_bytecode = True
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders as ct      # noqa: E402
import fixtures              # noqa: E402
import measures as ms        # noqa: E402
from common import (BENCH_DIR, GiB, MiB, bench_tempdir, is_mounted, log, run,  # noqa: E402
                    unmount)

TOOLS = BENCH_DIR / "tools"


def ensure_pyspy() -> Path:
    exe = TOOLS / "bin" / "py-spy"
    if not exe.exists():
        log("installing py-spy into " + str(TOOLS))
        run([sys.executable, "-m", "venv", str(TOOLS)])
        run([str(TOOLS / "bin" / "pip"), "install", "-q", "py-spy"], timeout=900)
    return exe


def summarize(raw: Path, top: int = 25) -> str:
    """Own and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] if " (" in f else f
                  for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"{total} non-idle samples"]
    out.append("\n-- own time --")
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("\n-- inclusive --")
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def direct_pass(path: Path, stop: threading.Event, block: int = MiB) -> None:
    """One sequential pass with O_DIRECT: every 1 MiB read reaches the daemon.

    The backing image is in the page cache (read before the mount), so no
    disk I/O is involved: the profile is the daemon's per-request work.
    """
    import mmap
    buf = mmap.mmap(-1, block)             # page-aligned, as O_DIRECT needs
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        off = 0
        while not stop.is_set():
            n = os.preadv(fd, [buf], off)
            if n <= 0:
                break
            off += n
    finally:
        os.close(fd)
        buf.close()


def workload(path: Path, kind: str, stop: threading.Event) -> None:
    """Repeat the workload until told to stop (each pass bounded in time)."""
    while not stop.is_set():
        if kind == "seq":
            ms.sequential(path, 5.0)
        elif kind == "hot":
            direct_pass(path, stop)
        else:
            ms.random_reads(path, 4, 4000, 2.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="py-spy profile of a FUSE contender under load")
    ap.add_argument("--contender", default="imagefs",
                    choices=["imagefs", "passthrough", "core-fuse", "core-fuse-nocache"])
    ap.add_argument("--workload", default="seq", choices=["seq", "rand", "hot"],
                    help="seq: cold 1 MiB reads; rand: cold random 4 KiB, 4 threads; "
                         "hot: O_DIRECT 1 MiB reads with the image in the page cache")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--image", type=Path, help="partclone image (default: the --quick fixture)")
    args = ap.parse_args(argv)
    pyspy = ensure_pyspy()
    fx = fixtures.ext4_image(int(1.1 * GiB) // MiB * MiB, name="ext4-inproc")
    image = args.image or fx.image
    work = bench_tempdir("prof-")
    src = work / "src"
    src.mkdir()
    os.link(image, src / image.name)
    c = {"imagefs": lambda: ct.imagefs(src, image.name),
         "passthrough": lambda: ct.passthrough(image, fx.raw),
         "core-fuse": lambda: ct.core_fuse(image),
         "core-fuse-nocache": lambda: ct.core_fuse(image, 0)}[args.contender]()
    outdir = BENCH_DIR / "profiles"
    outdir.mkdir(exist_ok=True)
    raw = outdir / f"{args.contender}-{args.workload}-{time.strftime('%H%M%S')}.txt"
    if args.workload == "hot":
        run(["sh", "-c", f"cat '{image}' > /dev/null"])
    m = ct.start(c, work / "mnt", work)
    stop = threading.Event()
    try:
        t = threading.Thread(target=workload, args=(c.path(m.mnt), args.workload, stop))
        t.start()
        try:
            res = subprocess.run([str(pyspy), "record", "-p", str(m.pid), "-d", str(int(args.seconds)),
                                  "-r", "250", "-f", "raw", "-o", str(raw), "--nonblocking"],
                                 capture_output=True, text=True, timeout=args.seconds + 60)
            if not raw.exists():
                log(f"py-spy failed ({res.returncode}): {res.stderr[-1000:]}")
        finally:
            stop.set()
            t.join(timeout=60)
    finally:
        ct.stop(m)
        unmount(work / "mnt")
        if not is_mounted(work / "mnt"):
            shutil.rmtree(work, ignore_errors=True)   # never recurse into a live mount
    if not raw.exists():
        return 1
    print(f"{args.contender}, workload {args.workload}, {args.seconds:.0f} s; raw stacks: {raw}")
    print(summarize(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
