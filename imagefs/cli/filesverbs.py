"""``imagefs files`` and ``imagefs extract``: an image's files without FUSE.

For machines without /dev/fuse (containers, locked-down hosts): the same
files layer the mount's ``VNAME.files/`` uses, driven from the command line.

    imagefs files IMAGE [PATH]             list a directory like ls -l
    imagefs extract IMAGE [PATH...] [-C DIR]   copy files and trees out

``extract`` keeps modes and times (owners too when run as root), never
overwrites an existing file, shows a progress bar on a terminal and reports
each file it cannot copy in one line, then exits 2 if any failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from imagefs.blockio.opener import OpenContext, open_path
from imagefs.blockio.partition import VirtualPartition
from imagefs.errors import ImageError, SourceError
from imagefs.files import FilesUnavailable, FileTree, image_partition, open_tree
from imagefs.services.cache import BlockCache
from imagefs.services.indexstore import IndexStore
from imagefs.services.progress import progress_bar

log = logging.getLogger(__name__)

#: Copy buffer: large reads keep the files layer's per-call cost small.
COPY_CHUNK = 4 << 20
#: The cache for one command's metadata reads (directories, inodes).
CACHE_BYTES = 64 << 20


@contextmanager
def opened_tree(image: str, index_dir: str | None = None) -> Iterator[FileTree]:
    """The file tree of the image at ``image``; one-line errors if there is none."""
    ctx = OpenContext(index_store=IndexStore(index_dir), cache=BlockCache(CACHE_BYTES))
    opened = open_path(image, ctx)
    try:
        header = opened.probe()
        vp = VirtualPartition(header.open(ctx.index_store), ctx.cache)
    except BaseException:
        opened.stream.close()                 # not an image, or a bad header
        raise
    try:
        tree = open_tree(image_partition(vp), header.fs_type, name=os.path.basename(image))
    except FilesUnavailable as exc:
        vp.close()
        raise SourceError(image, exc.reason) from None
    try:
        yield tree
    finally:
        tree.close()
        vp.close()


def resolve(tree: FileTree, path: str, image: str) -> int:
    """The inode at ``path`` inside the tree (``/`` or empty: the root)."""
    ino = tree.root
    for part in os.fsencode(path).split(b"/"):
        if not part or part == b".":
            continue
        found = tree.lookup(ino, part)
        if found is None:
            raise SourceError(image, f"{path}: no such file or directory in the image")
        ino = found
    return ino


#: Runs of zeros this long (and aligned) stay holes in extracted files.
HOLE_BLOCK = 64 << 10
_ZERO_BLOCK = bytes(HOLE_BLOCK)


def _write_sparse(fd: int, data: memoryview, pos: int) -> None:
    """Write ``data`` at ``pos``, skipping whole zero blocks (they stay holes)."""
    start = 0
    n = len(data)
    for off in range(0, n, HOLE_BLOCK):
        block = data[off:off + HOLE_BLOCK]
        if len(block) == HOLE_BLOCK and block == _ZERO_BLOCK:
            if off > start:
                os.pwrite(fd, data[start:off], pos + start)
            start = off + HOLE_BLOCK
    if start < n:
        os.pwrite(fd, data[start:], pos + start)


def _ignore(_n: int) -> None:
    """A progress callback that reports nothing."""


def _line(tree: FileTree, name: bytes, ino: int) -> str:
    st = tree.stat(ino)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.mtime_ns / 1e9))
    size = (f"{os.major(st.rdev)}, {os.minor(st.rdev)}"
            if stat.S_ISCHR(st.mode) or stat.S_ISBLK(st.mode) else str(st.size))
    shown = os.fsdecode(name)
    if stat.S_ISLNK(st.mode):
        shown += " -> " + os.fsdecode(tree.readlink(ino))
    return (f"{stat.filemode(st.mode)} {st.nlink:>3} {st.uid:>5} {st.gid:>5} {size:>12} "
            f"{when} {shown}")


def files_main(args: argparse.Namespace) -> int:
    """List one directory (or show one entry) of an image's file system."""
    with opened_tree(args.image, args.index_dir) as tree:
        ino = resolve(tree, args.path, args.image)
        if not stat.S_ISDIR(tree.stat(ino).mode):
            print(_line(tree, os.fsencode(os.path.basename(args.path.rstrip("/"))), ino))
            return 0
        for name, child in sorted(tree.listdir(ino)):
            print(_line(tree, name, child))
    return 0


class _Extractor:
    """Copies inodes of a tree into a directory, counting bytes and failures."""

    def __init__(self, tree: FileTree, image: str, update: Callable[[int], None]) -> None:
        self.tree = tree
        self.image = image
        self.update = update
        self.failed = 0
        self.as_root = os.geteuid() == 0
        self._buf = bytearray(COPY_CHUNK)
        self._dirs: list[tuple[bytes, int]] = []     # (path, ino): times set last

    def _fail(self, what: bytes, exc: BaseException) -> None:
        self.failed += 1
        text = exc.problem if isinstance(exc, ImageError) else (
            getattr(exc, "strerror", None) or str(exc))
        print(f"imagefs: {os.fsdecode(what)}: {text}", file=sys.stderr)

    def total_bytes(self, ino: int) -> int:
        st = self.tree.stat(ino)
        if stat.S_ISREG(st.mode):
            return st.size
        if not stat.S_ISDIR(st.mode):
            return 0
        return sum(self.total_bytes(child) for _, child in self.tree.listdir(ino))

    def copy(self, ino: int, dest: bytes) -> None:
        try:
            st = self.tree.stat(ino)
            if os.path.lexists(dest) and not stat.S_ISDIR(st.mode):
                raise FileExistsError(17, "exists already; not overwritten")
            if stat.S_ISDIR(st.mode):
                os.makedirs(dest, exist_ok=True)
                for name, child in self.tree.listdir(ino):
                    self.copy(child, os.path.join(dest, name))
                self._dirs.append((dest, ino))
                return
            if stat.S_ISLNK(st.mode):
                os.symlink(self.tree.readlink(ino), dest)
            elif stat.S_ISREG(st.mode):
                self._copy_data(ino, dest, st.size)
            elif stat.S_ISFIFO(st.mode):
                os.mkfifo(dest, 0o600)
            elif self.as_root and (stat.S_ISCHR(st.mode) or stat.S_ISBLK(st.mode)):
                os.mknod(dest, stat.S_IFMT(st.mode) | 0o600, st.rdev)
            else:
                return                       # sockets, and devices for an ordinary user
            self._finish(dest, ino)
        except (ImageError, OSError) as exc:
            self._fail(dest, exc)

    def _copy_data(self, ino: int, dest: bytes, size: int) -> None:
        view = memoryview(self._buf)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            pos = 0
            while pos < size:
                n = self.tree.read_into(ino, pos, view[:min(COPY_CHUNK, size - pos)])
                if n <= 0:
                    break
                _write_sparse(fd, view[:n], pos)
                pos += n
                self.update(n)
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(dest)                  # never leave a partial file behind
            raise
        os.close(fd)

    def _finish(self, dest: bytes, ino: int) -> None:
        st = self.tree.stat(ino)
        if self.as_root:
            os.lchown(dest, st.uid, st.gid)
        if not stat.S_ISLNK(st.mode):
            os.chmod(dest, stat.S_IMODE(st.mode))
        os.utime(dest, ns=(st.atime_ns, st.mtime_ns), follow_symlinks=False)

    def finish_dirs(self) -> None:
        for dest, ino in reversed(self._dirs):   # children before parents
            try:
                self._finish(dest, ino)
            except (ImageError, OSError) as exc:
                self._fail(dest, exc)


def extract_main(args: argparse.Namespace) -> int:
    """Copy the given paths (default: everything) out of an image's file system."""
    target = os.fsencode(os.path.abspath(args.directory))
    os.makedirs(target, exist_ok=True)
    with opened_tree(args.image, args.index_dir) as tree:
        picks = [(p, resolve(tree, p, args.image)) for p in (args.paths or ["/"])]
        total = sum(_Extractor(tree, args.image, _ignore).total_bytes(ino) for _, ino in picks)
        with progress_bar(total, "extracting", False if args.quiet else None) as update:
            work = _Extractor(tree, args.image, update)
            for path, ino in picks:
                name = os.path.basename(path.rstrip("/"))
                dest = os.path.join(target, os.fsencode(name)) if name else target
                work.copy(ino, dest)
            work.finish_dirs()
    if work.failed:
        print(f"imagefs: {work.failed} file(s) could not be copied", file=sys.stderr)
        return 2
    return 0
