#!/usr/bin/env python3
"""The ceiling: a minimal mfusepy file system whose ``read`` is one ``os.pread``.

    python bench/passthrough.py MOUNTPOINT FILE [FILE ...] [--stats JSON] [--no-kernel-cache]

Shows each FILE (by its base name) read-only in the root of MOUNTPOINT and
stays in the foreground until ``fusermount -u MOUNTPOINT``.  Nothing else
happens per read: no locks, no lookups beyond one dict access, so the time
a read takes here is what FUSE + mfusepy + one pread cost on this machine.

FUSE settings (kept equal to what imagefs uses, so ratios compare the
Python work only; see bench/README.md):

- libfuse 3 (as imagefs; mfusepy alone would pick libfuse 2, which caps
  requests at 128 KiB), multithreaded loop (mfusepy's default, no ``-s``);
- ``ro``; ``kernel_cache`` (immutable files: pages survive open/close, so
  a second read is page-cache speed);
- ``max_read=1 MiB`` and, in ``init_with_config``, ``max_readahead`` raised
  to 1 MiB (the kernel clamps it to what it offered: 128 KiB), plus the
  mount's bdi ``read_ahead_kb`` set to 1024 in sysfs when root, as imagefs
  does (that is what really gives 1 MiB requests);
- ``st_blksize`` 1 MiB so that cp/cat pick large buffers;
- glibc's mmap threshold raised to 8 MiB (trim threshold 64 MiB), the
  process tuning the imagefs command applies (imagefs.services.memtune): without it
  every 1 MiB read buffer is a fresh, page-faulted mmap;
- long attr/entry timeouts (1 h): the tree never changes.

``--stats FILE`` writes the count and sizes of read requests on unmount,
which shows the request size the kernel really sends.

``--virtual`` serves each FILE's *virtual partition* instead
(``VirtualPartition(probe(FileSource(FILE)).open(), BlockCache(256 MiB)).read``)
with exactly the same FUSE settings: the bench's "core-fuse" contender,
which separates the cost of the core reader from that of the mount adapter.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import queue
import stat
import sys
import threading
import time


def _load_mfusepy():
    """mfusepy bound to libfuse 3 when present, as imagefs binds it.

    mfusepy alone loads libfuse.so.2 first; libfuse 2 cannot negotiate
    requests above 128 KiB (no FUSE_MAX_PAGES) and has no fuse_config, so
    the ceiling must use the library imagefs uses.  FUSE_LIBRARY_PATH wins.
    """
    import ctypes.util
    if not os.environ.get("FUSE_LIBRARY_PATH"):
        lib = ctypes.util.find_library("fuse3") or ctypes.util.find_library("fuse")
        if lib:
            os.environ["FUSE_LIBRARY_PATH"] = lib
    import mfusepy as module
    return module


mfusepy = _load_mfusepy()

#: glibc thresholds as imagefs.services.memtune sets them: 1 MiB read buffers then come
#: from the heap instead of a fresh mmap (page-faulted in) per request.
MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 16 << 20


def tune_allocator() -> bool:
    """mallopt(M_MMAP_THRESHOLD / M_TRIM_THRESHOLD), the process tuning imagefs applies."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, MMAP_THRESHOLD)) and bool(libc.mallopt(-1, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False

#: Largest FUSE read request asked for; the kernel caps it at max_pages
#: (libfuse 3 negotiates 256 pages = 1 MiB).
MAX_READ = 1 << 20
#: Readahead asked for in init (the kernel clamps to the bdi's offer).
MAX_READAHEAD = 1 << 20
#: The mount's bdi readahead, written to sysfs when root (imagefs: 1 MiB).
READAHEAD_KB = 1024
#: Reported st_blksize: cp and cat size their buffers by it.
BLKSIZE = 1 << 20
#: The tree is immutable: cache attributes and names for an hour.
TIMEOUT = 3600.0


class Passthrough(mfusepy.Operations):
    """Read-only view of a fixed list of files, flat in the root."""

    use_ns = True

    def __init__(self, files: list[str], stats_path: str | None = None,
                 virtual: bool = False, cache_mib: int = 256) -> None:
        self.files = {"/" + os.path.basename(f): os.path.realpath(f) for f in files}
        self.fds = {name: os.open(path, os.O_RDONLY) for name, path in self.files.items()}
        self.vps = _open_virtual(self.files, cache_mib) if virtual else {}
        self.fd_pools: dict[str, queue.SimpleQueue] = {}
        self.mountpoint: str | None = None
        self.readahead_kb = READAHEAD_KB
        self.stats_path = stats_path
        self._lock = threading.Lock()
        self.nreads = 0
        self.nbytes = 0
        self.sizes: dict[int, int] = {}
        self._root = os.stat(os.path.dirname(next(iter(self.files.values()))))

    # -- setup ---------------------------------------------------------------
    def init_with_config(self, conn, config) -> None:
        if conn is not None:
            conn.max_readahead = MAX_READAHEAD
            if hasattr(conn, "max_read"):
                conn.max_read = MAX_READ
        threading.Thread(target=self._raise_readahead, daemon=True).start()
        if config is not None:
            config.kernel_cache = 1
            config.attr_timeout = TIMEOUT
            config.entry_timeout = TIMEOUT
            config.negative_timeout = TIMEOUT

    def use_fd_pools(self, per_file: int) -> None:
        """Give each concurrent read its own descriptor (its own kernel readahead state).

        With one descriptor shared by libfuse's threads, two interleaved
        sequential streams share one struct file's readahead window and
        the underlying file's readahead collapses now and then.
        """
        for name, path in self.files.items():
            q: queue.SimpleQueue = queue.SimpleQueue()
            for _ in range(per_file):
                q.put(os.open(path, os.O_RDONLY))
            self.fd_pools[name] = q

    def _raise_readahead(self) -> None:
        """Set the mount's bdi read_ahead_kb, as imagefs does when root.

        The kernel caps FUSE readahead at 128 KiB whatever init asks for;
        only sysfs raises it.  imagefs writes 1 MiB there, so the ceiling
        must too, or the two would be measured with different request sizes.
        """
        if self.readahead_kb <= 0 or os.geteuid() != 0 or not self.mountpoint:
            return
        try:
            dev = os.stat(self.mountpoint).st_dev    # blocks until INIT is answered
            with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as fh:
                fh.write(str(self.readahead_kb))
        except OSError as exc:
            print(f"passthrough: cannot set readahead: {exc}", file=sys.stderr)

    def destroy(self, path: str) -> None:
        if self.stats_path:
            with open(self.stats_path, "w") as fh:
                json.dump({"reads": self.nreads, "bytes": self.nbytes,
                           "sizes": {str(k): v for k, v in sorted(self.sizes.items())}}, fh)
        for fd in self.fds.values():
            os.close(fd)

    # -- metadata ------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict:
        if path == "/":
            st = self._root
            return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2,
                    "st_mtime": st.st_mtime_ns, "st_atime": st.st_atime_ns,
                    "st_ctime": st.st_ctime_ns}
        real = self.files.get(path)
        if real is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        st = os.stat(real)
        size = self.vps[path].size if path in self.vps else st.st_size
        return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size,
                "st_mtime": st.st_mtime_ns, "st_atime": st.st_atime_ns,
                "st_ctime": st.st_ctime_ns, "st_blksize": BLKSIZE,
                "st_blocks": (size + 511) // 512}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", ".."] + [name[1:] for name in self.files]

    def open(self, path: str, flags: int) -> int:
        if path not in self.fds:
            raise mfusepy.FuseOSError(errno.ENOENT)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise mfusepy.FuseOSError(errno.EROFS)
        return self.fds[path]

    # -- the hot path ----------------------------------------------------------
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        vp = self.vps.get(path) if self.vps else None
        if vp is not None:
            data = vp.read(offset, size)
        elif self.fd_pools:
            pool = self.fd_pools[path]
            fd = pool.get()          # a descriptor no other thread is using now
            try:
                data = os.pread(fd, size, offset)
            finally:
                pool.put(fd)
        else:
            data = os.pread(fh, size, offset)
        if self.stats_path:          # only when asked: the lock costs a little
            with self._lock:
                self.nreads += 1
                self.nbytes += len(data)
                self.sizes[size] = self.sizes.get(size, 0) + 1
        return data

    def statfs(self, path: str) -> dict:
        return {"f_bsize": BLKSIZE, "f_frsize": BLKSIZE, "f_namemax": 255}


def _open_virtual(files: dict[str, str], cache_mib: int) -> dict:
    """Virtual partitions of the images, sharing one block cache (0: none)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from imagefs.blockio import VirtualPartition
    from imagefs.services.cache import BlockCache
    from imagefs.formats import probe
    from imagefs.io import FileSource
    cache = BlockCache(cache_mib << 20) if cache_mib > 0 else None
    return {name: VirtualPartition(probe(FileSource(path)).open(), cache)
            for name, path in files.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("mountpoint")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--stats", help="write read-request statistics here on unmount")
    ap.add_argument("--virtual", action="store_true",
                    help="serve each image's virtual partition through imagefs's core reader")
    ap.add_argument("--cache-mib", type=int, default=256,
                    help="with --virtual: BlockCache size in MiB (0: no BlockCache)")
    ap.add_argument("--readahead-kb", type=int, default=READAHEAD_KB,
                    help="bdi read_ahead_kb to set when root (0: leave the kernel's 128)")
    ap.add_argument("--fd-pool", type=int, default=0,
                    help="N descriptors per file, one per concurrent read (0: one shared fd)")
    ap.add_argument("--no-tune-alloc", action="store_true",
                    help="keep glibc's default mmap threshold (imagefs raises it)")
    ap.add_argument("--no-kernel-cache", action="store_true",
                    help="drop kernel_cache (to see its effect)")
    args = ap.parse_args(argv)
    if not args.no_tune_alloc:
        tune_allocator()
    ops = Passthrough(args.files, args.stats, args.virtual, args.cache_mib)
    ops.mountpoint = os.path.abspath(args.mountpoint)
    if args.fd_pool:
        ops.use_fd_pools(args.fd_pool)
    ops.readahead_kb = args.readahead_kb
    opts = dict(foreground=True, ro=True, max_read=MAX_READ,
                fsname="core-fuse" if args.virtual else "passthrough",
                default_permissions=True)
    if not args.no_kernel_cache:
        opts["kernel_cache"] = True
    t0 = time.perf_counter()
    mfusepy.FUSE(ops, args.mountpoint, **opts)
    print(f"passthrough: unmounted after {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
