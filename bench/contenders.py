"""The FUSE file systems under test and how to start, find and stop them.

A contender is a command that mounts one partclone image somewhere and
shows its virtual partition (or, for the passthrough, the image file
itself) as a file.  Every contender is run in the foreground (or, for
vpartclone, which forks, found by its command line) so that its process
can be measured (peak RSS) and always stopped in ``finally``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (BENCH_DIR, REPO, is_mounted, log, peak_rss_kib, run, unmount, wait_until)

MOUNT_TIMEOUT = 120.0      # seconds a mount may take to go live (index builds)

IB_VENV = BENCH_DIR / "ibvenv"
IB_VERSION = "0.2.2"


@dataclass
class Contender:
    """How to mount one image and which file of the mount to read."""

    name: str
    argv: list[str]                 # with the mount point already in it
    target: str                     # file under the mount point to read
    loop_target: str                # file to loop-mount (a partition)
    env: dict[str, str] = field(default_factory=dict)
    forks: bool = False             # the command returns; the daemon lives on
    backing: Path | None = None     # the file its reads end up on (pre-read before tests)
    loop_backing: Path | None = None  # the same for the loop-mount test

    def path(self, mnt: Path) -> Path:
        return mnt / self.target


@dataclass
class Mounted:
    contender: Contender
    mnt: Path
    proc: subprocess.Popen
    pid: int | None
    seconds_to_live: float
    logfile: Path


def _daemon_pid(mnt: Path) -> int | None:
    """The pid of a process whose command line names ``mnt`` (forking daemons)."""
    needle = str(mnt).encode()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if needle in fh.read():
                    return int(entry)
        except OSError:
            continue
    return None


#: Python daemons keep their bytecode here, outside the source tree.  An
#: installed imagefs (pip) has its .pyc files; without them every start
#: compiled about a hundred modules (0.07 s of the 0.18 s start to first
#: byte, measured), which timed the compiler rather than the mount.
BYTECODE = {"PYTHONPYCACHEPREFIX": str(BENCH_DIR / "pycache"), "PYTHONDONTWRITEBYTECODE": ""}


def compile_bytecode() -> None:
    """Compile imagefs and the bench daemons into BYTECODE once (before timing)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "imagefs"),
                    str(REPO / "bench" / "passthrough.py")],
                   env=dict(os.environ, **BYTECODE), check=False, timeout=300,
                   stdout=subprocess.DEVNULL)


def start(c: Contender, mnt: Path, logdir: Path) -> Mounted:
    """Start ``c`` on ``mnt`` and wait until the mount is live (bounded)."""
    mnt.mkdir(parents=True, exist_ok=True)
    logfile = logdir / f"{c.name}-{time.monotonic_ns()}.log"
    env = dict(os.environ, **BYTECODE, **c.env)
    t0 = time.perf_counter()
    with open(logfile, "w") as lf:
        proc = subprocess.Popen([a if a != "{mnt}" else str(mnt) for a in c.argv],
                                stdout=lf, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
    live = wait_until(lambda: is_mounted(mnt) or (proc.poll() not in (None, 0)), MOUNT_TIMEOUT)
    dt = time.perf_counter() - t0
    if not live or not is_mounted(mnt):
        stop_proc(proc)
        raise RuntimeError(f"{c.name} did not mount within {MOUNT_TIMEOUT:.0f} s: "
                           f"{logfile.read_text()[-800:]}")
    if c.forks:
        # The launcher exits right after forking; the daemon is the process
        # left holding the mount point on its command line.
        wait_until(lambda: proc.poll() is not None, 10, 0.01)
        pid = _daemon_pid(mnt)
    else:
        pid = proc.pid
    return Mounted(c, mnt, proc, pid, dt, logfile)


def stop_proc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def stop(m: Mounted) -> int | None:
    """Unmount, wait for the daemon; return its peak RSS (KiB) seen just before."""
    rss = peak_rss_kib(m.pid) if m.pid else None
    unmount(m.mnt)
    try:
        m.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stop_proc(m.proc)
    if m.pid and m.pid != m.proc.pid:
        # A forked daemon: give it a moment to exit after the unmount.
        wait_until(lambda: not os.path.exists(f"/proc/{m.pid}"), 10, 0.05)
    return rss


def bdi_readahead_kb(mnt: Path) -> int | None:
    """read_ahead_kb of the mount's backing device info (what the kernel prefetches)."""
    target = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            f = line.split()
            if len(f) > 4 and f[4] == target:
                try:
                    return int(Path(f"/sys/class/bdi/{f[2]}/read_ahead_kb").read_text())
                except OSError:
                    return None
    return None


def set_bdi_readahead_kb(mnt: Path, kb: int) -> None:
    target = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            f = line.split()
            if len(f) > 4 and f[4] == target:
                Path(f"/sys/class/bdi/{f[2]}/read_ahead_kb").write_text(str(kb))


# ------------------------------------------------------------- the contenders

def passthrough(image: Path, raw: Path, stats: Path | None = None) -> Contender:
    argv = [sys.executable, str(REPO / "bench" / "passthrough.py"), "{mnt}", str(image), str(raw)]
    if stats:
        argv += ["--stats", str(stats)]
    return Contender("passthrough", argv, image.name, raw.name, backing=image, loop_backing=raw)


def core_fuse(image: Path, cache_mib: int = 256) -> Contender:
    """passthrough.py --virtual: imagefs's core reader behind the passthrough's FUSE settings.

    With ``cache_mib=0`` it reads without the BlockCache (the kernel page
    cache of the FUSE file is then the only cache): the two variants show
    what the block cache costs or saves on an uncompressed image.
    """
    argv = [sys.executable, str(REPO / "bench" / "passthrough.py"), "{mnt}", str(image),
            "--virtual", "--cache-mib", str(cache_mib)]
    name = "core-fuse" if cache_mib else "core-fuse-nocache"
    return Contender(name, argv, image.name, image.name, backing=image)


def imagefs_cmd() -> list[str]:
    """The imagefs command: the installed script if any, else ``python -m imagefs``."""
    exe = Path(sys.executable).parent / "imagefs"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "imagefs"]


def imagefs_available() -> tuple[bool, str]:
    """Whether this checkout has the mount (imagefs/mount.py importable)."""
    res = subprocess.run([sys.executable, "-c", "import imagefs.cli.mount"], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                         text=True, timeout=60)
    if res.returncode == 0:
        return True, ""
    last = (res.stderr.strip().splitlines() or ["?"])[-1]
    return False, f"imagefs.cli.mount cannot be imported ({last})"


def imagefs(source: Path, vname: str, options: str | None = None) -> Contender:
    """imagefs over ``source`` (a directory holding the image), foreground."""
    argv = imagefs_cmd() + [str(source), "{mnt}", "-f"]
    if options:
        argv += ["-o", options]
    return Contender("imagefs", argv, vname, vname, env={"PYTHONPATH": str(REPO)},
                     backing=source / vname if (source / vname).is_file() else None)


def ensure_imagebackup() -> tuple[bool, str]:
    """imagebackup 0.2.2 in its own venv under BENCH_DIR; (ok, reason if not)."""
    exe = IB_VENV / "bin" / "vpartclone"
    if exe.exists():
        return True, ""
    if subprocess.run(["pkg-config", "--exists", "fuse3"], capture_output=True).returncode != 0:
        return False, ("pyfuse3 (its dependency) needs libfuse3-dev, pkg-config and a C "
                       "compiler: apt-get install libfuse3-dev pkg-config gcc")
    log(f"installing imagebackup=={IB_VERSION} into {IB_VENV} (once)")
    try:
        if not (IB_VENV / "bin" / "pip").exists():
            run([sys.executable, "-m", "venv", str(IB_VENV)])
        run([str(IB_VENV / "bin" / "pip"), "install", "-q", f"imagebackup=={IB_VERSION}"],
            timeout=900)
    except Exception as exc:      # report, do not crash the bench
        return False, f"pip install imagebackup=={IB_VERSION} failed: {str(exc)[-300:]}"
    return exe.exists(), "" if exe.exists() else "vpartclone missing after install"


def vpartclone(image: Path) -> Contender:
    """imagebackup's vpartclone: shows IMAGE minus '.img' at the mount point; forks."""
    name = image.name[:-4] if image.name.lower().endswith(".img") else image.name
    return Contender("imagebackup", [str(IB_VENV / "bin" / "vpartclone"), str(image), "-m", "{mnt}"],
                     name, name, forks=True, backing=image)
