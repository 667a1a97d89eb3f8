"""Byte sources with ``read_at(offset, size)``.

A byte source is an immutable sequence of bytes with a known ``size``.
``read_at`` never moves a shared cursor (it is ``os.pread`` underneath), so
one source serves any number of threads at once.  ``read_at`` returns fewer
bytes than asked only at the end of the source; a source that turns out to
be shorter than it claims raises :class:`~imagefs.errors.TruncatedError`.

:func:`read_into` is the zero-copy sibling of ``read_at``: it fills caller
buffers (a FUSE reply buffer, say) in order from consecutive bytes, so file
sources scatter one ``preadv`` straight into them and skip the interleaved
checksums by pointing those iovecs at scratch space.

Sources stack: a piece set is a :class:`ConcatSource` of :class:`FileSource`
pieces, a decompressed stream (imagefs.codecs) wraps any source, and the
formats read through whatever they are given.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Iterable, Protocol, Sequence, runtime_checkable
from bisect import bisect_right

from imagefs.errors import SourceError, TRUNCATED_HINT, TruncatedError

#: Linux's IOV_MAX: one preadv takes at most this many buffers.
_IOV_MAX = 1024


@runtime_checkable
class ByteSource(Protocol):
    """What every layer below the virtual partition implements."""

    #: A short human-readable name (a path, or a description of the stack).
    name: str

    @property
    def size(self) -> int:
        """Total length in bytes."""

    def read_at(self, offset: int, size: int) -> bytes:
        """Return ``size`` bytes from ``offset`` (fewer only at the end)."""

    def close(self) -> None:
        """Release resources; reads after close may reopen them."""

    # Optional: ``read_into(offset, views)`` (see the module function).


def read_into(source: ByteSource, offset: int, views: Sequence[memoryview]) -> None:
    """Fill ``views`` in order from the consecutive bytes of ``source`` at ``offset``.

    Sources that can scatter (files, slices and concatenations of them)
    implement ``read_into`` themselves; others (decompressed streams, memory)
    are read with ``read_at`` and copied.  Raises TruncatedError if the source
    ends before every view is full: a caller never gets a partly filled buffer.
    """
    fill = getattr(source, "read_into", None)
    if fill is not None:
        fill(offset, views)
        return
    copy_read(source, offset, views)


def copy_read(source: ByteSource, offset: int, views: Sequence[memoryview]) -> None:
    """:func:`read_into` done with ``read_at`` and one copy (for any source)."""
    total = sum(map(len, views))
    data = source.read_at(offset, total)
    if len(data) < total:
        raise TruncatedError(source.name, f"ends at byte {offset + len(data)}, "
                             f"before byte {offset + total}", TRUNCATED_HINT)
    scatter((data,), views)


def scatter(pieces: Iterable[bytes | memoryview], views: Sequence[memoryview]) -> int:
    """Copy consecutive ``pieces`` into consecutive ``views``; returns bytes copied.

    One copy per byte, whatever the two cuttings; stops when either runs out.
    """
    vi, vpos, copied = 0, 0, 0
    for piece in pieces:
        src = memoryview(piece)
        spos = 0
        while spos < len(src) and vi < len(views):
            view = views[vi]
            take = min(len(view) - vpos, len(src) - spos)
            view[vpos:vpos + take] = src[spos:spos + take]
            vpos += take
            spos += take
            copied += take
            if vpos >= len(view):
                vi, vpos = vi + 1, 0
        if vi >= len(views):
            break
    return copied


def split_views(views: Sequence[memoryview], size: int
                ) -> tuple[list[memoryview], list[memoryview]]:
    """The first ``size`` bytes of ``views`` and the rest, cutting one view if needed."""
    head: list[memoryview] = []
    i = 0
    while i < len(views) and size > 0:
        view = views[i]
        if len(view) > size:
            head.append(view[:size])
            return head, [view[size:], *views[i + 1:]]
        head.append(view)
        size -= len(view)
        i += 1
    return head, list(views[i:])


def _preadv_fully(fd: int, views: Sequence[memoryview], offset: int, total: int) -> int:
    """preadv until all ``total`` bytes of ``views`` are in or the file ends."""
    count = len(views)
    if count <= _IOV_MAX:
        done = os.preadv(fd, views, offset)
        if done == total:
            return done                      # the common case: one syscall
    else:
        done = 0
    # Short read or too many buffers: advance view by view.
    pending = list(views)
    if done:
        _, pending = split_views(pending, done)
    while pending:
        n = os.preadv(fd, pending[:_IOV_MAX], offset + done)
        if n <= 0:
            break
        done += n
        _, pending = split_views(pending, n)
    return done


class FdPool:
    """A bounded LRU of open read-only file descriptors, shared by sources.

    A mount can expose thousands of images made of thousands of pieces; the
    pool keeps at most ``capacity`` descriptors open and reopens on demand.
    ``pread`` needs no exclusive use of a descriptor, so each path has one
    descriptor shared by every reader, with a use count: eviction closes
    only descriptors nobody is using (8 threads reading one image used to
    open and close it on every read; the bench profile showed 7.7% of the
    time there).
    """

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._lock = threading.Lock()
        # path -> [fd, users]; LRU order, most recently used last.
        self._open: OrderedDict[str, list[int]] = OrderedDict()
        self.opens = 0  # how many open() calls were made (tests use it)

    def acquire(self, path: str) -> int:
        with self._lock:
            entry = self._open.get(path)
            if entry is not None:
                entry[1] += 1
                self._open.move_to_end(path)
                return entry[0]
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise SourceError(path, f"cannot open: {exc.strerror}",
                              "check that the file exists and is readable") from None
        duplicate = None
        with self._lock:
            self.opens += 1
            entry = self._open.get(path)
            if entry is not None:          # another thread opened it meanwhile
                duplicate = fd
                fd = entry[0]
                entry[1] += 1
            else:
                self._open[path] = [fd, 1]
            self._open.move_to_end(path)
            victims = self._evict_locked()
        if duplicate is not None:
            victims.append(duplicate)
        for victim in victims:
            os.close(victim)
        return fd

    def release(self, path: str, fd: int) -> None:
        with self._lock:
            entry = self._open.get(path)
            if entry is not None and entry[0] == fd:
                entry[1] -= 1
            victims = self._evict_locked()
        for victim in victims:
            os.close(victim)

    def _evict_locked(self) -> list[int]:
        """Unlink idle descriptors past capacity; the caller closes them."""
        victims = []
        excess = len(self._open) - self.capacity
        if excess > 0:
            for path, (fd, users) in list(self._open.items()):
                if excess <= 0:
                    break
                if users == 0:
                    del self._open[path]
                    victims.append(fd)
                    excess -= 1
        return victims

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def close_path(self, path: str) -> None:
        with self._lock:
            entry = self._open.get(path)
            if entry is None or entry[1] > 0:
                return
            del self._open[path]
        os.close(entry[0])

    def close_all(self) -> None:
        with self._lock:
            idle = [p for p, (_, users) in self._open.items() if users == 0]
            fds = [self._open.pop(p)[0] for p in idle]
        for fd in fds:
            os.close(fd)


_default_pool: FdPool | None = None
_default_pool_lock = threading.Lock()


def default_fd_pool() -> FdPool:
    """The process-wide descriptor pool (bounded well below RLIMIT_NOFILE)."""
    global _default_pool
    with _default_pool_lock:
        if _default_pool is None:
            try:
                import resource
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            except (ImportError, ValueError, OSError):
                soft = 1024
            # Leave room for FUSE, logging, sockets and the codecs' own files.
            cap = max(16, min(512, soft // 4)) if soft > 0 else 256
            _default_pool = FdPool(cap)
        return _default_pool


class FileSource:
    """One regular file read with pread through a shared :class:`FdPool`.

    The size is taken once at construction: backups are immutable, and a file
    that shrinks afterwards shows up as a TruncatedError on read.
    """

    def __init__(self, path: str | os.PathLike, pool: FdPool | None = None,
                 size: int | None = None) -> None:
        self.path = os.fspath(path)
        self.name = self.path
        self._pool = pool or default_fd_pool()
        if size is None:
            try:
                size = os.stat(self.path).st_size
            except OSError as exc:
                raise SourceError(self.path, f"cannot read: {exc.strerror}",
                                  "check that the file exists and is readable") from None
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        size = min(size, self._size - offset)
        if size <= 0:
            return b""
        fd = self._pool.acquire(self.path)
        try:
            data = os.pread(fd, size, offset)
            if len(data) < size:
                # pread may return short reads on some file systems; loop.
                parts = [data]
                got = len(data)
                while got < size:
                    more = os.pread(fd, size - got, offset + got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
        except OSError as exc:
            raise SourceError(self.path, f"read error at byte {offset}: {exc.strerror}",
                              "check the disk holding the backup") from None
        finally:
            self._pool.release(self.path, fd)
        if len(data) < size:
            raise TruncatedError(self.path, f"file ended at byte {offset + len(data)} "
                                 f"but was {self._size} bytes when opened", TRUNCATED_HINT)
        return data

    def read_into(self, offset: int, views: Sequence[memoryview]) -> None:
        """Scatter ``[offset, offset + total)`` into ``views`` with preadv."""
        if offset < 0:
            raise ValueError("negative offset")
        total = sum(map(len, views))
        if offset + total > self._size:
            raise TruncatedError(self.path, f"ends at byte {self._size}, before byte "
                                 f"{offset + total}", TRUNCATED_HINT)
        fd = self._pool.acquire(self.path)
        try:
            got = _preadv_fully(fd, views, offset, total)
        except OSError as exc:
            raise SourceError(self.path, f"read error at byte {offset}: {exc.strerror}",
                              "check the disk holding the backup") from None
        finally:
            self._pool.release(self.path, fd)
        if got < total:
            raise TruncatedError(self.path, f"file ended at byte {offset + got} "
                                 f"but was {self._size} bytes when opened", TRUNCATED_HINT)

    def close(self) -> None:
        self._pool.close_path(self.path)

    def __repr__(self) -> str:
        return f"FileSource({self.path!r}, size={self._size})"


class MemorySource:
    """Bytes held in memory (tests, small synthesized streams)."""

    def __init__(self, data: bytes, name: str = "<memory>") -> None:
        self._data = bytes(data)
        self.name = name

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        return self._data[offset:offset + size]

    def close(self) -> None:
        pass


class SliceSource:
    """The window ``[start, start + length)`` of another source.

    ``length`` None means "to the end of the base"; it is resolved only when
    ``size`` is first needed, so slicing a compressed stream does not force
    its index to be built.
    """

    def __init__(self, base: ByteSource, start: int, length: int | None = None,
                 name: str | None = None) -> None:
        if start < 0 or (length is not None and length < 0):
            raise ValueError("negative start or length")
        self.base = base
        self.start = start
        self._length = length
        self.name = name or base.name

    @property
    def size(self) -> int:
        if self._length is None:
            self._length = max(0, self.base.size - self.start)
        elif self.start + self._length > self.base.size:
            raise TruncatedError(self.base.name, f"needs bytes up to {self.start + self._length} "
                                 f"but has {self.base.size}", TRUNCATED_HINT)
        return self._length

    def read_at(self, offset: int, size: int) -> bytes:
        if self._length is not None:
            size = min(size, self._length - offset)
        if size <= 0:
            return b""
        return self.base.read_at(self.start + offset, size)

    def read_into(self, offset: int, views: Sequence[memoryview]) -> None:
        if self._length is not None:
            total = sum(map(len, views))
            if offset + total > self._length:
                raise TruncatedError(self.name, f"ends at byte {self._length}, before byte "
                                     f"{offset + total}", TRUNCATED_HINT)
        read_into(self.base, self.start + offset, views)

    def close(self) -> None:
        self.base.close()


class ConcatSource:
    """Several sources read as one stream, in order (split pieces, volumes).

    Offsets map to parts through a cumulative table and ``bisect``; a read
    crossing part boundaries is served by one read per part.  The table is
    built on first need: a read inside the first part does not ask the other
    parts for their sizes (which, for compressed parts, means indexing).
    """

    def __init__(self, parts: Sequence[ByteSource], name: str | None = None) -> None:
        if not parts:
            raise ValueError("ConcatSource needs at least one part")
        self.parts = list(parts)
        self.name = name or self.parts[0].name
        self._starts: list[int] | None = None
        self._size = 0

    def _table(self) -> list[int]:
        if self._starts is None:
            starts = []
            pos = 0
            for part in self.parts:
                starts.append(pos)
                pos += part.size
            self._size = pos
            self._starts = starts
        return self._starts

    @property
    def size(self) -> int:
        self._table()
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        if self._starts is None and len(self.parts) > 1:
            # Fast path for header probes: stay inside part 0 if we can.
            head = self.parts[0].read_at(offset, size)
            if len(head) == size:
                return head
        starts = self._table()
        size = min(size, self._size - offset)
        if size <= 0:
            return b""
        index = bisect_right(starts, offset) - 1
        out = []
        while size > 0:
            part = self.parts[index]
            local = offset - starts[index]
            chunk = part.read_at(local, min(size, part.size - local))
            if not chunk:
                raise TruncatedError(part.name, f"piece ended at byte {local}", TRUNCATED_HINT)
            out.append(chunk)
            offset += len(chunk)
            size -= len(chunk)
            index += 1
        return out[0] if len(out) == 1 else b"".join(out)

    def read_into(self, offset: int, views: Sequence[memoryview]) -> None:
        starts = self._table()
        total = sum(map(len, views))
        if offset < 0:
            raise ValueError("negative offset")
        if offset + total > self._size:
            raise TruncatedError(self.name, f"ends at byte {self._size}, before byte "
                                 f"{offset + total}", TRUNCATED_HINT)
        index = bisect_right(starts, offset) - 1
        pending: Sequence[memoryview] = views
        while total > 0:
            local = offset - starts[index]
            room = self.parts[index].size - local
            if room >= total and pending is views:
                read_into(self.parts[index], local, views)   # inside one piece
                return
            batch, pending = split_views(pending, min(room, total))
            if room > 0:
                read_into(self.parts[index], local, batch)
            taken = min(room, total)
            offset += taken
            total -= taken
            index += 1

    def close(self) -> None:
        for part in self.parts:
            part.close()


def known_size(source: ByteSource) -> int | None:
    """``source.size`` if it costs nothing to know, else None.

    Plain files and slices or concatenations of them know their size; a
    decompressed stream learns it only by indexing, which a header probe
    must not trigger.
    """
    if isinstance(source, (FileSource, MemorySource)):
        return source.size
    if isinstance(source, SliceSource):
        base = known_size(source.base)
        return None if base is None else source.size
    if isinstance(source, ConcatSource):
        if all(known_size(p) is not None for p in source.parts):
            return source.size
        return None
    return None
