"""The tree interface every file system backend implements, and its caches.

Threading contract: the parser libraries are not thread-safe (shared file
cursors, lazily filled attributes), so every call into a parser runs under
the tree's ``_lock``.  What is read most — file data — does not go through
the parser at all: a file's :class:`~imagefs.files.datamap.DataMap` is built
once under the lock, cached, and read without it, so reads of different
files (and of the same file) proceed in parallel.  The caches below have
their own small locks and are never held during I/O.

Errors: a backend raises whatever its parser raises; :meth:`FileTree._call`
turns everything that is not already an ImageError (the partition's
TruncatedError and the like pass through unchanged) into a one-line
:class:`~imagefs.files.errors.FilesError` naming ``NAME:/path``.
"""

from __future__ import annotations

import logging
import stat as st
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from imagefs.errors import ImageError
from imagefs.files.datamap import DataMap, DecodedCache
from imagefs.files.errors import FilesError, NoSuchAttribute, NotADirectory, NotASymlink
from imagefs.files.filestat import FileStat
from imagefs.files.partition import Partition
from imagefs.services.lru import LRU

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Inode ids handed out are below this, so the catalog can put a tree
#: number in the bits above (design: unique st_ino across the mount).
INO_LIMIT = 1 << 48

#: Cache sizes per tree.  Measured per entry (tracemalloc): a FileStat
#: ~300 bytes, a directory entry ~250 bytes (name, id, lookup table), a
#: parent link ~200 bytes.  Full, a tree's caches take ~2.5 MB, so many
#: open trees stay small (bench/RESULTS-files.md: 20 trees walked).  The
#: kernel keeps its own attribute and entry caches in front of these, so
#: they only need a directory's working set.
STAT_ENTRIES = 2048
DIR_NAMES = 6000
MAP_ENTRIES = 256


class FileTree(ABC):
    """A read-only file system tree over a partition (see the package docs)."""

    #: Short file system name for messages and describe() ("ext4", "ntfs").
    fs_name: str = "?"

    def __init__(self, partition: Partition, name: str) -> None:
        self.partition = partition
        self.name = name
        self.root: int = 0
        self._lock = threading.RLock()
        self._stats: LRU[int, FileStat] = LRU(STAT_ENTRIES)
        self._dirs: LRU[int, tuple[list[tuple[bytes, int]], dict[bytes, int]]] = LRU(DIR_NAMES)
        self._maps: LRU[int, DataMap] = LRU(MAP_ENTRIES)
        self._links: LRU[int, bytes] = LRU(256)
        # ls -l asks getxattr(security.selinux, system.posix_acl_access) of
        # every entry: without this cache each would re-parse the inode.
        self._xattr_cache: LRU[int, dict[bytes, bytes]] = LRU(STAT_ENTRIES // 2)
        self._decoded = DecodedCache()
        self._closed = False

    # ------------------------------------------------------------ backend
    @abstractmethod
    def _stat(self, ino: int) -> FileStat:
        """The inode's attributes (called under the lock)."""

    @abstractmethod
    def _listdir(self, ino: int) -> list[tuple[bytes, int]]:
        """Entries of a directory without "." and ".." (under the lock)."""

    @abstractmethod
    def _readlink(self, ino: int) -> bytes:
        """A symlink's target (under the lock)."""

    @abstractmethod
    def _datamap(self, ino: int, size: int) -> DataMap:
        """The runs of a regular file of ``size`` bytes (under the lock)."""

    def _xattrs(self, ino: int) -> dict[bytes, bytes]:
        """All extended attributes (name -> value); none by default."""
        return {}

    def _describe(self) -> list[tuple[str, str]]:
        return []

    def _close(self) -> None:  # noqa: B027 - an optional hook
        """Release parser resources (not the partition: its owner closes it)."""

    # ------------------------------------------------------------ helpers
    def parent_of(self, ino: int) -> tuple[int, bytes] | None:
        """``(directory, name)`` of an inode, from the cached listings (None if none holds it).

        A search, not a table: it is needed only for messages and rare
        re-reads, and a table filled by every listing cost a third of the
        time of ``ls -lR``.
        """
        for d, (_entries, table) in self._dirs.items():
            for nm, child in table.items():
                if child == ino:
                    return d, nm
        return None

    def path_of(self, ino: int) -> str:
        """``NAME:/a/b`` as far as the cached listings know the inode's parents."""
        parts: list[bytes] = []
        cur = ino
        for _ in range(256):
            if cur == self.root:
                break
            up = self.parent_of(cur)
            if up is None:
                parts.append(f"<inode {cur}>".encode())
                break
            cur, nm = up
            parts.append(nm)
        path = b"/" + b"/".join(reversed(parts))
        return f"{self.name}:{path.decode('utf-8', 'backslashreplace')}"

    def _call(self, ino: int, fn: Callable[..., T], *args: object) -> T:
        """Run a parser call under the lock, turning library errors into FilesError."""
        if self._closed:
            raise FilesError(self.name, "the file tree is closed", "")
        with self._lock:
            try:
                return fn(*args)
            except (ImageError, NoSuchAttribute):
                raise
            except RecursionError:
                raise FilesError(
                    self.path_of(ino), "its metadata loops (too deeply nested)"
                ) from None
            except Exception as exc:  # the parsers raise anything on damage
                text = " ".join(str(exc).split()) or type(exc).__name__
                log.debug("%s: %s", self.path_of(ino), text, exc_info=True)
                raise FilesError(
                    self.path_of(ino), f"cannot be read ({type(exc).__name__}: {text[:200]})"
                ) from None

    # ------------------------------------------------------------ public API
    def stat(self, ino: int) -> FileStat:
        """The attributes of inode ``ino``."""
        s = self._stats.get(ino)
        if s is None:
            s = self._call(ino, self._stat, ino)
            self._stats.put(ino, s)
        return s

    def _dir(self, ino: int) -> tuple[list[tuple[bytes, int]], dict[bytes, int]]:
        d = self._dirs.get(ino)
        if d is None:
            if not st.S_ISDIR(self.stat(ino).mode):
                raise NotADirectory(self.path_of(ino), "is not a directory", "")
            entries = self._call(ino, self._listdir, ino)
            table: dict[bytes, int] = {}
            for nm, child in entries:
                table.setdefault(nm, child)
            d = (entries, table)
            self._dirs.put(ino, d, max(1, len(entries)))
        return d

    def listdir(self, ino: int) -> list[tuple[bytes, int]]:
        """``[(name as stored, inode id), ...]`` of a directory, without "." and ".."."""
        return list(self._dir(ino)[0])

    def lookup(self, ino: int, name: bytes) -> int | None:
        """The inode id of ``name`` in directory ``ino``, or None."""
        return self._dir(ino)[1].get(name)

    def readlink(self, ino: int) -> bytes:
        """The target of a symbolic link, as stored."""
        t = self._links.get(ino)
        if t is None:
            if not st.S_ISLNK(self.stat(ino).mode):
                raise NotASymlink(self.path_of(ino), "is not a symbolic link", "")
            t = self._call(ino, self._readlink, ino)
            self._links.put(ino, t)
        return t

    def datamap(self, ino: int) -> DataMap:
        """The (cached) data map of a regular file."""
        m = self._maps.get(ino)
        if m is None:
            s = self.stat(ino)
            if not st.S_ISREG(s.mode):
                raise FilesError(self.path_of(ino), "is not a regular file", "")
            m = self._call(ino, self._datamap, ino, s.size)
            m.what = partial(self.path_of, ino)
            m.check(self.partition)
            self._maps.put(ino, m, 1)
        return m

    def read_into(self, ino: int, offset: int, dest: memoryview) -> int:
        """Fill ``dest`` from byte ``offset`` of the file; short only at EOF."""
        if offset < 0:
            raise ValueError("negative offset")
        m = self.datamap(ino)
        try:
            return m.read_into(self.partition, offset, dest, self._decoded)
        except ImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder error on damaged compressed data
            raise FilesError(
                self.path_of(ino),
                f"its data cannot be decoded ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]})",
            ) from None

    def read(self, ino: int, offset: int, size: int) -> bytes:
        """``size`` bytes of the file from ``offset`` (holes as zeros; short only at EOF)."""
        m = self.datamap(ino)
        n = max(0, min(size, m.size - offset))
        buf = bytearray(n)
        if n:
            self.read_into(ino, offset, memoryview(buf))
        return bytes(buf)

    def _xattr_table(self, ino: int) -> dict[bytes, bytes]:
        t = self._xattr_cache.get(ino)
        if t is None:
            t = self._call(ino, self._xattrs, ino)
            self._xattr_cache.put(ino, t)
        return t

    def listxattr(self, ino: int) -> list[bytes]:
        """Names of the inode's extended attributes (``user.x``, ``security.selinux`` ...)."""
        return list(self._xattr_table(ino))

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """The value of one extended attribute; NoSuchAttribute if absent."""
        table = self._xattr_table(ino)
        try:
            return table[name]
        except KeyError:
            raise NoSuchAttribute(name) from None

    def describe(self) -> list[tuple[str, str]]:
        """Lines for ``.info``: file system type, label, UUID, size, free space."""
        return self._call(self.root, self._describe)

    def close(self) -> None:
        """Drop caches and parser state; the partition stays open (its owner closes it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for c in (self._stats, self._dirs, self._maps, self._links, self._xattr_cache):
                c.clear()
            self._close()

    def __enter__(self) -> FileTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
