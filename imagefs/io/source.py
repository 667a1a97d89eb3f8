"""Byte sources with ``read_at(offset, size)``.

A byte source is an immutable sequence of bytes with a known ``size``.
``read_at`` never moves a shared cursor (it is ``os.pread`` underneath), so
one source serves any number of threads at once.  ``read_at`` returns fewer
bytes than asked only at the end of the source; a source that turns out to
be shorter than it claims raises :class:`~imagefs.errors.TruncatedError`.
The zero-copy sibling ``read_into`` lives in :mod:`imagefs.io.scatter`.

Sources describe themselves, so no layer has to inspect their classes:
``cheap_size()`` is the size when knowing it costs nothing (a decompressed
stream learns its size only by indexing, which a header probe must not
trigger) and ``backing_files()`` names the files whose bytes make up the
source (the key of a persisted index; None when that is not a set of files).

Sources stack: a piece set is a :class:`ConcatSource` of :class:`FileSource`
pieces, a decompressed stream (imagefs.codecs) wraps any source, and the
formats read through whatever they are given.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from imagefs.errors import TRUNCATED_HINT, SourceChangedError, SourceError, TruncatedError
from imagefs.io.fdpool import FdPool, default_fd_pool
from imagefs.io.identity import CHANGED_HINT, Identity, describe_change, identity_of, not_a_file
from imagefs.io.scatter import peek_views, preadv_fully, read_into, split_views


@runtime_checkable
class ByteSource(Protocol):
    """What every layer below the virtual partition implements."""

    #: A short human-readable name (a path, or a description of the stack).
    name: str

    @property
    def size(self) -> int:
        """Total length in bytes (may do work: a compressed stream indexes itself)."""

    def read_at(self, offset: int, size: int) -> bytes:
        """Return ``size`` bytes from ``offset`` (fewer only at the end)."""

    def cheap_size(self) -> int | None:
        """The size if knowing it costs no decoding, else None."""

    def backing_files(self) -> list[str] | None:
        """The files whose bytes this source is made of, in order; None if not files."""

    def close(self) -> None:
        """Release resources; reads after close may reopen them."""

    # Optional: ``read_into(offset, views)`` (see imagefs.io.scatter.read_into).


class FileSource:
    """One regular file read with pread through a shared :class:`FdPool`.

    The size and identity (device, inode, size, mtime) are taken once at
    construction: backups are immutable.  Every read then checks that the
    path still names that same, unchanged file (:mod:`imagefs.io.identity`);
    after a change every read raises SourceChangedError, so no read returns
    bytes of the changed file or a mix of old and new bytes.  ``size``, when
    given, is the size the caller saw (a directory listing): a file that no
    longer has it has changed already.
    """

    def __init__(self, path: str | os.PathLike, pool: FdPool | None = None,
                 size: int | None = None) -> None:
        self.path = os.fspath(path)
        self.name = self.path
        self._pool = pool or default_fd_pool()
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise SourceError(self.path, f"cannot read: {exc.strerror}",
                              "check that the file exists and is readable") from None
        wrong = not_a_file(self.path, st)
        if wrong is not None:
            raise wrong
        self._identity: Identity = identity_of(st)
        self._changed: SourceChangedError | None = None
        if size is not None and size != st.st_size:
            self._changed = self._change_error(st)
        self._size = st.st_size if size is None else size

    def _change_error(self, st: os.stat_result | None) -> SourceChangedError:
        return SourceChangedError(self.path, "changed since mounted: "
                                  + describe_change(self._identity, st), CHANGED_HINT)

    def _raise_changed(self) -> None:
        known = self._changed
        assert known is not None
        # A fresh exception each time: re-raising one instance grows its traceback.
        raise SourceChangedError(self.path, known.problem, known.hint)

    def check_unchanged(self) -> None:
        """Raise SourceChangedError if the path no longer names the file first opened."""
        if self._changed is not None:
            self._raise_changed()
        try:
            st: os.stat_result | None = os.stat(self.path)
        except OSError:
            st = None
        if st is None or identity_of(st) != self._identity:
            self._changed = self._change_error(st)
            self._raise_changed()

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        if self._changed is not None:
            self._raise_changed()
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
        self.check_unchanged()          # after the read: what was read is the file opened
        if len(data) < size:
            raise TruncatedError(self.path, f"file ended at byte {offset + len(data)} "
                                 f"but was {self._size} bytes when opened", TRUNCATED_HINT)
        return data

    def read_into(self, offset: int, views: Sequence[memoryview]) -> None:
        """Scatter ``[offset, offset + total)`` into ``views`` with preadv."""
        if offset < 0:
            raise ValueError("negative offset")
        if self._changed is not None:
            self._raise_changed()
        total = sum(map(len, views))
        if offset + total > self._size:
            raise TruncatedError(self.path, f"ends at byte {self._size}, before byte "
                                 f"{offset + total}", TRUNCATED_HINT)
        fd = self._pool.acquire(self.path)
        try:
            got = preadv_fully(fd, views, offset, total)
        except OSError as exc:
            raise SourceError(self.path, f"read error at byte {offset}: {exc.strerror}",
                              "check the disk holding the backup") from None
        finally:
            self._pool.release(self.path, fd)
        self.check_unchanged()          # after the read: what landed is the file opened
        if got < total:
            raise TruncatedError(self.path, f"file ended at byte {offset + got} "
                                 f"but was {self._size} bytes when opened", TRUNCATED_HINT)

    def cheap_size(self) -> int:
        return self._size

    def backing_files(self) -> list[str]:
        return [self.path]

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

    def cheap_size(self) -> int:
        return len(self._data)

    def backing_files(self) -> None:
        return None

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
        self._fill(offset, views, False)

    def peek_into(self, offset: int, views: Sequence[memoryview]) -> None:
        """:meth:`read_into` as a peek of the base (see :func:`imagefs.io.scatter.read_into`)."""
        self._fill(offset, views, True)

    def peek_views(self, offset: int, size: int) -> list[memoryview] | None:
        """The base's views of these bytes, if it has them (see
        :func:`imagefs.io.scatter.peek_views`)."""
        if self._length is not None and offset + size > self._length:
            return None                    # peek_into raises the truncation
        return peek_views(self.base, self.start + offset, size)

    def _fill(self, offset: int, views: Sequence[memoryview], peek: bool) -> None:
        if self._length is not None:
            total = sum(map(len, views))
            if offset + total > self._length:
                raise TruncatedError(self.name, f"ends at byte {self._length}, before byte "
                                     f"{offset + total}", TRUNCATED_HINT)
        read_into(self.base, self.start + offset, views, peek)

    def cheap_size(self) -> int | None:
        if self._length is not None:
            return self._length
        base = self.base.cheap_size()
        return None if base is None else max(0, base - self.start)

    def backing_files(self) -> list[str] | None:
        return self.base.backing_files()

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
        self._fill(offset, views, False)

    def peek_into(self, offset: int, views: Sequence[memoryview]) -> None:
        """:meth:`read_into` as a peek of the parts (see :func:`imagefs.io.scatter.read_into`)."""
        self._fill(offset, views, True)

    def _fill(self, offset: int, views: Sequence[memoryview], peek: bool) -> None:
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
                read_into(self.parts[index], local, views, peek)   # inside one piece
                return
            batch, pending = split_views(pending, min(room, total))
            if room > 0:
                read_into(self.parts[index], local, batch, peek)
            taken = min(room, total)
            offset += taken
            total -= taken
            index += 1

    def cheap_size(self) -> int | None:
        if self._starts is not None:
            return self._size
        total = 0
        for part in self.parts:
            size = part.cheap_size()
            if size is None:
                return None
            total += size
        return total

    def backing_files(self) -> list[str] | None:
        out: list[str] = []
        for part in self.parts:
            files = part.backing_files()
            if files is None:
                return None
            out += files
        return out

    def close(self) -> None:
        for part in self.parts:
            part.close()
