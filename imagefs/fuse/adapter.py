"""The FUSE adapter: mfusepy operations on top of the catalog's node protocol.

This is the only module that speaks FUSE and the only place where errors
become errno values:

=============================  ==========
catalog / image problem        errno
=============================  ==========
NotFound                       ENOENT
NotADirectory                  ENOTDIR
NoSuchAttribute                ENODATA
NotReadable (a device node)    EACCES
not permitted (files views)    EACCES
ImageError (broken, truncated)  EIO
any other failure of a read    EIO (logged: never wrong bytes, never a crash)
any write, create, chmod, ...  EROFS
=============================  ==========

It knows only :mod:`imagefs.catalog.nodes`: directories list children, file
nodes open into an :class:`~imagefs.catalog.nodes.OpenFile`, links answer
readlink.  Open files live in a handle table guarded by ``_handles_lock``.

Every file is immutable, so the kernel may keep what it read: virtual
partitions and mirrored files are opened with ``keep_cache`` and entries and
attributes get long timeouts.  ``.info`` files change when an image is
opened or fails, so they are opened ``direct_io`` (read fresh every time).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from imagefs.catalog import (
    Catalog,
    DirectoryNode,
    FileLikeNode,
    LinkNode,
    Node,
    NoSuchAttribute,
    NotADirectory,
    NotFound,
    OpenFile,
)
from imagefs.catalog.nodes import NotReadable
from imagefs.errors import ImageError
from imagefs.fuse.library import load_mfusepy

log = logging.getLogger(__name__)

load_mfusepy()                # choose the libfuse first: mfusepy binds it on import
import mfusepy  # noqa: E402 - must follow the library choice

from imagefs.fuse.access import EXEC, READ, WRITE, Context, permits  # noqa: E402

FuseOSError = mfusepy.FuseOSError

#: The tree never changes while mounted; a day is "forever" for the kernel's
#: dentry and attribute caches but still lets a remount pick up changes.
CACHE_TIMEOUT = 86400.0
#: Readahead the kernel may do in one go (it caps this at its own limit):
#: large sequential requests amortise the per-call cost of a Python FS.
MAX_READAHEAD = 1 << 20
#: st_blksize: tells cp/dd/fsck to use big reads (one cache chunk).
BLKSIZE = 256 * 1024

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


def _erofs(*_args: Any, **_kw: Any) -> int:
    raise FuseOSError(errno.EROFS)


def _not_implemented(*_args: Any, **_kw: Any) -> Any:
    raise FuseOSError(errno.ENOSYS)


_not_implemented.libfuse_ignore = True  # type: ignore[attr-defined]  # mfusepy's marker


#: The catalog's exceptions and the errno each becomes at the FUSE boundary.
_ERRNOS: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, errno.ENOENT), (NotADirectory, errno.ENOTDIR),
    (NoSuchAttribute, errno.ENODATA), (NotReadable, errno.EACCES), (ImageError, errno.EIO),
)


@contextmanager
def _errnos() -> Iterator[None]:
    """Turn the catalog's exceptions into FuseOSError (the one errno mapping)."""
    try:
        yield
    except FuseOSError:
        raise
    except Exception as exc:
        for kind, number in _ERRNOS:
            if isinstance(exc, kind):
                raise FuseOSError(number) from None
        raise


def raise_readahead(mountpoint: str, kib: int = MAX_READAHEAD >> 10) -> None:
    """Let the kernel read ahead ``kib`` on this mount (root only).

    The kernel caps a FUSE mount's readahead at its default 128 KiB whatever
    ``max_readahead`` init asks for; only the mount's bdi setting in sysfs
    raises it.  Fewer, larger requests matter for a Python file system: each
    request costs a round trip through libfuse and the interpreter.
    """
    if os.geteuid() != 0:
        return
    try:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w", encoding="ascii") as f:
            f.write(str(kib))
    except OSError as exc:
        log.debug("cannot raise readahead on %s: %s", mountpoint, exc)


class _Handle:
    """An open file or directory: its node and, for files, how to read it."""

    __slots__ = ("node", "file")

    def __init__(self, node: Node, file: OpenFile | None = None) -> None:
        self.node = node
        self.file = file


#: Per libfuse worker thread, once its Python thread state is kept.
_worker_state = threading.local()


def _keep_thread_state() -> None:
    """Keep this libfuse worker thread's Python thread state between callbacks.

    libfuse calls each operation on a C thread of its own.  ctypes gives the
    call a Python thread state (``PyGILState_Ensure``) and deletes it again
    when the call returns, so every request built and tore down a thread
    state (an mmap and munmap of its 16 KiB frame stack each: 2,097 of each
    over one 2 GiB ``dd``) and lost everything thread-local with it - the
    reused scratch buffers of verify on read among them, allocated and
    zero-filled afresh for every request.  One more ``PyGILState_Ensure``,
    never released, keeps the state for the thread's life.  libfuse's
    workers are long-lived: there are at most ``max_threads`` of them (10 at
    most here, libfuse 2's own limit too) and a worker only ends when more
    than that many would be idle, so at most that many states are kept.
    """
    ctypes.pythonapi.PyGILState_Ensure()
    _worker_state.kept = True


class ImageFUSE(mfusepy.FUSE):
    """mfusepy's FUSE with a read callback that fills libfuse's buffer in place.

    mfusepy's own ``read`` takes bytes from the operations and copies them
    into the reply buffer.  Here ``ImageFS.read_into`` is handed that buffer:
    image data is scattered into it by ``preadv`` with no Python-side copy
    (the bench profile put the reply copy at 16% and the checksum-stripping
    join at 10% of a hot sequential read).
    """

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        # Every libfuse callback comes here first (mfusepy binds it per operation).
        if not getattr(_worker_state, "kept", False):
            _keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        if size <= 0:
            return 0
        address = ctypes.addressof(buf.contents)   # 2.5x cheaper than ctypes.cast
        dest = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
        return self.operations.read_into(fip.contents.fh, dest, offset)


class ImageFS(mfusepy.Operations):
    """Read-only FUSE operations over a :class:`~imagefs.catalog.Catalog`."""

    use_ns = True

    def __init__(self, catalog: Catalog, on_ready: Callable[[], None] | None = None,
                 max_read: int | None = None, check_access: bool | None = None,
                 context: Context | None = None) -> None:
        self.catalog = catalog
        self._on_ready = on_ready
        self._max_read = max_read
        files = catalog.settings.files
        #: Without default_permissions (a files view is shown) the adapter
        #: checks access itself (imagefs.fuse.access).
        self._check_access = files if check_access is None else check_access
        self._context: Context = context or mfusepy.fuse_get_context
        if not files:
            # No node then carries extended attributes: leave libfuse's
            # callbacks unset, so the kernel stops asking after one ENOSYS
            # (an implemented getxattr costs round trips on every ``ls -l``).
            for name in ("getxattr", "listxattr"):
                setattr(self, name, _not_implemented)
        #: True once the kernel's INIT arrived: later errors are not mount failures.
        self.started = False
        self._handles: dict[int, _Handle] = {}
        self._handles_lock = threading.Lock()
        self._next_fh = itertools.count(1)

    # ------------------------------------------------------------ lifecycle
    def init_with_config(self, conn: Any, config: Any) -> None:
        """Tune the connection, then tell the starter that the mount is live."""
        self.started = True
        if conn is not None:
            conn.max_readahead = MAX_READAHEAD
            if self._max_read and hasattr(conn, "max_read"):
                # libfuse 3 insists that init agrees with the max_read mount option.
                conn.max_read = self._max_read
        if config is not None:     # libfuse 3: the high-level settings live here
            config.entry_timeout = CACHE_TIMEOUT
            config.attr_timeout = CACHE_TIMEOUT
            config.negative_timeout = CACHE_TIMEOUT
            # Reads go by file handle: spare libfuse building a path for each
            # read (a global tree lock plus string work per request).
            config.nullpath_ok = 1
        if self._on_ready is not None:
            # init runs before libfuse's last checks of the session: confirm
            # from outside the loop that the mount answers before saying "live".
            threading.Thread(target=self._confirm_live, name="imagefs-ready",
                             daemon=True).start()

    def _confirm_live(self) -> None:
        mnt = self.catalog.mountpoint
        try:
            if mnt:
                os.stat(mnt)         # blocks until the kernel's INIT is answered
        except OSError as exc:
            log.debug("mount did not come up: %s", exc)
            return
        if mnt:
            raise_readahead(mnt)
        if self._on_ready is not None:
            self._on_ready()

    def destroy(self, path: str) -> None:
        with self._handles_lock:
            self._handles.clear()
        self.catalog.close()

    # ------------------------------------------------------------ lookups
    def _node(self, path: str, want: int = 0) -> Node:
        """The node at ``path``; every directory on the way must be searchable.

        ``want`` (READ/EXEC bits) is checked on the node itself.  Checks run
        only when the adapter enforces access (see imagefs.fuse.access).
        """
        with _errnos():
            node, chain = self.catalog.resolve(path)
        if self._check_access:
            uid, gid, pid = self._context()
            if uid != 0:
                for key in chain:
                    if not permits(key, EXEC, uid, gid, pid):
                        raise FuseOSError(errno.EACCES)
                if want and not permits(node.access_key(), want, uid, gid, pid):
                    raise FuseOSError(errno.EACCES)
        return node

    def _by_handle(self, fh: int) -> _Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise FuseOSError(errno.EBADF)
        return handle

    def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
        # fstat() of an open file comes without a path (nullpath_ok).
        if path is None and fh is not None:
            node = self._by_handle(fh.fh).node
        else:
            node = self._node(path or "/")
        with _errnos():
            return self._stat(node)

    @staticmethod
    def _stat(node: Node) -> dict[str, Any]:
        """``node``'s attributes as mfusepy's stat dictionary."""
        a = node.attr()
        out = {
            "st_mode": a.mode, "st_nlink": a.nlink, "st_size": a.size, "st_blocks": a.blocks,
            "st_blksize": BLKSIZE, "st_uid": a.uid, "st_gid": a.gid,
            "st_mtime": a.mtime_ns, "st_ctime": a.ctime_ns, "st_atime": a.atime_ns,
        }
        out["st_ino"] = a.ino or node.number
        if a.rdev:
            out["st_rdev"] = a.rdev
        return out

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if not isinstance(node, LinkNode):
            raise FuseOSError(errno.EINVAL)
        with _errnos():
            return node.readlink()

    def opendir(self, path: str) -> int:
        node = self._node(path, READ)
        if not isinstance(node, DirectoryNode):
            raise FuseOSError(errno.ENOTDIR)
        return self._register(_Handle(node))

    def releasedir(self, path: str | None, fh: int) -> int:
        with self._handles_lock:
            self._handles.pop(fh, None)
        return 0

    def readdir(self, path: str | None, fh: int) -> Iterable[Any]:
        # readdir comes without a path (nullpath_ok): the handle knows the directory.
        node = self._by_handle(fh).node if fh else self._node(path or "/")
        if not isinstance(node, DirectoryNode):
            raise FuseOSError(errno.ENOTDIR)
        with _errnos():
            listing = node.listing()
        # Both keys every time: mfusepy reuses one stat buffer across the
        # entries.  A type of 0 is DT_UNKNOWN (tools stat the entry; a files
        # view does not stat while listing); with use_ino an entry numbered 0
        # would be skipped by getdents.
        dot = node.attr().ino or node.number
        out: list[Any] = [(".", {"st_mode": stat.S_IFDIR, "st_ino": dot}, 0),
                          ("..", {"st_mode": stat.S_IFDIR, "st_ino": 1}, 0)]
        out += [(name, {"st_mode": kind, "st_ino": ino}, 0) for name, kind, ino in listing]
        return out

    def access(self, path: str, amode: int) -> int:
        self._node(path, amode & (READ | EXEC))
        if amode & WRITE:
            raise FuseOSError(errno.EROFS)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        # Nothing is free on a read-only image store; sizes follow the backing disk's use.
        try:
            sv = os.statvfs(self.catalog.roots[0])
            used = (sv.f_blocks - sv.f_bfree) * sv.f_frsize // BLKSIZE
            files = max(sv.f_files - sv.f_ffree, 0)
        except OSError:
            used, files = 0, 0
        return {"f_bsize": BLKSIZE, "f_frsize": BLKSIZE, "f_blocks": used, "f_bfree": 0,
                "f_bavail": 0, "f_files": files, "f_ffree": 0, "f_favail": 0,
                "f_namemax": 255}

    # ------------------------------------------------------------ files
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & _WRITE_FLAGS:
            raise FuseOSError(errno.EROFS)
        node = self._node(path, READ)
        if not isinstance(node, FileLikeNode):
            raise FuseOSError(errno.EISDIR if isinstance(node, DirectoryNode) else errno.EINVAL)
        try:
            with _errnos():
                opened = node.open()       # an image's first open reads its block map, once
        except FuseOSError:
            raise
        except Exception as exc:  # noqa: BLE001 - the FUSE boundary, see _guarded
            log.error("%s: unexpected error opening: %s: %s", node.vpath,
                      type(exc).__name__, exc)
            raise FuseOSError(errno.EIO) from None
        if opened.keep_cache:
            fi.keep_cache = 1
        if opened.direct_io:
            fi.direct_io = 1
        fi.fh = self._register(_Handle(node, opened))
        return 0

    def _register(self, handle: _Handle) -> int:
        fh = next(self._next_fh)
        with self._handles_lock:
            self._handles[fh] = handle
        return fh

    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        """mfusepy's bytes-returning read (used when mounted by plain mfusepy.FUSE)."""
        handle = self._by_handle(fi.fh)
        file = self._file(handle)
        data: bytes = self._guarded(handle, offset, file.read, offset, size)
        return data

    def read_into(self, fh: int, dest: memoryview, offset: int) -> int:
        """Fill ``dest`` (libfuse's reply buffer) from ``offset``; returns the byte count."""
        handle = self._by_handle(fh)
        file = self._file(handle)
        count: int = self._guarded(handle, offset, file.read_into, offset, dest)
        return count

    @staticmethod
    def _file(handle: _Handle) -> OpenFile:
        if handle.file is None:
            raise FuseOSError(errno.EISDIR)
        return handle.file

    @staticmethod
    def _guarded(handle: _Handle, offset: int, func: Callable[..., Any], *args: Any) -> Any:
        """Run a read; every failure becomes EIO (the FUSE boundary)."""
        try:
            return func(*args)
        except ImageError:
            # Logged once by the catalog; the reader gets EIO, never wrong bytes.
            raise FuseOSError(errno.EIO) from None
        except FuseOSError:
            raise
        except OSError as exc:
            log.error("%s: read at %d failed: %s", handle.node.vpath, offset, exc)
            raise FuseOSError(errno.EIO) from None
        except Exception as exc:  # noqa: BLE001 - the FUSE boundary: never EFAULT, never a crash
            # A library error we did not anticipate: refuse the bytes rather
            # than guess, and say where (mfusepy would answer EFAULT).
            log.error("%s: unexpected error reading at %d: %s: %s", handle.node.vpath, offset,
                      type(exc).__name__, exc)
            raise FuseOSError(errno.EIO) from None

    def release(self, path: str, fi: Any) -> int:
        with self._handles_lock:
            self._handles.pop(fi.fh, None)
        return 0

    # Extended attributes: a files view shows the backed-up file system's;
    # every other node has none.  Without files views these callbacks are
    # left unset (see __init__).
    def listxattr(self, path: str) -> list[str]:
        node = self._node(path)
        with _errnos():
            return node.listxattr()

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        node = self._node(path, READ)
        with _errnos():
            return node.getxattr(name)

    # ------------------------------------------------------------ writes: never
    chmod = chown = create = link = mkdir = mknod = rename = rmdir = _erofs
    setxattr = removexattr = symlink = truncate = unlink = utimens = write = _erofs
    fallocate = _erofs
