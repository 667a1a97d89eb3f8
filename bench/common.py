"""Shared helpers of the benchmark suite: commands, mounts, timing, cleanup.

Everything the bench writes goes under :data:`BENCH_DIR` (or a tempdir
inside it), never into the source tree.  Every loop that waits for
something has a deadline, and every mount or loop device made here is
undone in a ``finally`` block by the caller through :class:`Cleanup`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

#: Cached fixtures and the imagebackup venv live here (survives reboots of
#: the bench, not of the machine; safe to delete at any time).
BENCH_DIR = Path(os.environ.get("IMAGEFS_BENCH_DIR", "/var/tmp/imagefs-bench"))
REPO = Path(__file__).resolve().parent.parent
VENV_PY = Path(sys.executable)

MiB = 1 << 20
GiB = 1 << 30


def log(msg: str) -> None:
    """Progress line on stderr (stdout carries the results)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], *, check: bool = True, quiet: bool = True,
        timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run a command; its output is captured (and shown only on failure)."""
    res = subprocess.run(list(map(str, cmd)), capture_output=quiet, text=True,
                         timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"command failed ({res.returncode}): {' '.join(map(str, cmd))}\n"
                           f"{(res.stdout or '')[-2000:]}{(res.stderr or '')[-2000:]}")
    return res


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def is_root() -> bool:
    return os.geteuid() == 0


def drop_caches() -> bool:
    """Empty the page cache (needs root); False when it could not."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def ensure_bench_dir() -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return BENCH_DIR


def bench_tempdir(prefix: str) -> Path:
    """A fresh directory under BENCH_DIR (same file system as the fixtures)."""
    ensure_bench_dir()
    return Path(tempfile.mkdtemp(prefix=prefix, dir=BENCH_DIR))


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]   # drop NaN (a failed round)
    return statistics.median(vals) if vals else float("nan")


def is_mounted(path: str | os.PathLike) -> bool:
    """True when ``path`` is a mount point right now (reads /proc/self/mountinfo).

    os.path.ismount would stat the FUSE root, which can block on a stuck
    daemon; mountinfo never does.
    """
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                return True
    return False


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.002) -> bool:
    """Poll ``pred`` until it holds or ``timeout`` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def unmount(path: str | os.PathLike, fuse: bool = True) -> None:
    """Unmount quietly; lazily if the plain attempt fails (never leave a mount)."""
    if not is_mounted(path):
        return
    cmds = ([["fusermount3", "-u", path], ["fusermount", "-u", path]] if fuse else [])
    cmds += [["umount", path], ["umount", "-l", path]]
    for cmd in cmds:
        if not have(cmd[0]):
            continue
        subprocess.run(list(map(str, cmd)), capture_output=True, timeout=60)
        if not is_mounted(path):
            return


class Cleanup:
    """A stack of undo actions run in reverse order, errors logged not raised."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def push(self, fn: Callable[[], object], what: str) -> None:
        def guarded() -> None:
            try:
                fn()
            except Exception as exc:   # cleanup must go on whatever fails
                log(f"cleanup of {what} failed: {exc}")
        self._stack.callback(guarded)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "Cleanup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def loop_device(path: Path, read_only: bool = True) -> Iterator[str]:
    """Attach ``path`` to a free loop device; always detached afterwards."""
    cmd = ["losetup", "--find", "--show"] + (["-r"] if read_only else []) + [str(path)]
    dev = run(cmd).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)


@contextlib.contextmanager
def loop_mount(path: Path, mnt: Path, options: str = "loop,ro",
               fstype: str | None = None) -> Iterator[Path]:
    """``mount -o loop`` a file system image; always unmounted afterwards.

    With ``-o loop`` mount(8) sets autoclear on the loop device, so the
    unmount also detaches it.
    """
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-o", options] + (["-t", fstype] if fstype else []) + [str(path), str(mnt)]
    run(cmd)
    try:
        yield mnt
    finally:
        unmount(mnt, fuse=False)


def read_file_seq(path: str | os.PathLike, block: int = MiB,
                  limit: int | None = None, time_limit: float | None = None,
                  direct: bool = False) -> tuple[int, float]:
    """Read sequentially in ``block`` reads; return (bytes, seconds).

    ``limit``/``time_limit`` bound slow contenders: the figure is then the
    throughput over the part that was read.  ``direct``: O_DIRECT reads into
    one page-aligned buffer, so every read reaches the file system and none
    fills the page cache (see measures.sequential_direct for why).
    """
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    buf = mmap.mmap(-1, block) if direct else None     # page-aligned, as O_DIRECT needs
    try:
        total = 0
        t0 = time.perf_counter()
        deadline = t0 + time_limit if time_limit else None
        while True:
            n = block if limit is None else min(block, limit - total)
            if n <= 0:
                break
            if buf is not None:
                got = os.preadv(fd, [memoryview(buf)[:n]], total)
            else:
                got = len(os.read(fd, n))
            if not got:
                break
            total += got
            if deadline and time.perf_counter() > deadline:
                break
        return total, time.perf_counter() - t0
    finally:
        os.close(fd)
        if buf is not None:
            buf.close()


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a live process (KiB), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_anon_mib(pid: int) -> int | None:
    """RssAnon of a live process (MiB), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) >> 10
    except OSError:
        return None
    return None


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs so far (/proc/stat), None off Linux.

    Steal is time the hypervisor gave this VM's virtual CPUs to others: on
    the 2-vCPU bench VMs it swung from 1 % to 28 % within a minute, and a
    16-thread latency figure taken at 20 % steal had three times the p99 of
    one taken at 2 % (bench/RESULTS.md, twenty-eighth session), so latency
    stages report it beside their figures.
    """
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]:
    # guest time is already counted in user, so only the first eight add up.
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The fraction of CPU time stolen between two :func:`cpu_ticks` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def fmt_rate(nbytes: float, seconds: float) -> str:
    if not seconds or seconds != seconds:
        return "n/a"
    return f"{nbytes / seconds / MiB:.0f} MiB/s"
