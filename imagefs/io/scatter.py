"""Filling caller buffers from byte sources: the zero-copy side of ``read_at``.

:func:`read_into` fills caller buffers (a FUSE reply buffer, say) in order
from consecutive bytes of a source.  File sources scatter one ``preadv``
straight into them and skip interleaved checksums by pointing those iovecs
at scratch space; other sources are read with ``read_at`` and copied once.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from imagefs.errors import TRUNCATED_HINT, TruncatedError

if TYPE_CHECKING:
    from imagefs.io.source import ByteSource

#: Linux's IOV_MAX: one preadv takes at most this many buffers.
IOV_MAX = 1024


def read_into(source: ByteSource, offset: int, views: Sequence[memoryview],
              peek: bool = False) -> None:
    """Fill ``views`` in order from the consecutive bytes of ``source`` at ``offset``.

    Sources that can scatter (files, slices and concatenations of them)
    implement ``read_into`` themselves; others (decompressed streams, memory)
    are read with ``read_at`` and copied.  Raises TruncatedError if the source
    ends before every view is full: a caller never gets a partly filled buffer.

    ``peek``: the bytes are read only to be checked and the reader will ask
    for them again (verify on read widens a read to whole checksum groups).
    A source that tracks what a sequential reader has taken (a decompressed
    stream frees pieces once they are out) offers ``peek_into`` so that such
    bytes are not counted as taken; other sources read them as usual.
    """
    fill = getattr(source, "peek_into", None) if peek else None
    if fill is None:
        fill = getattr(source, "read_into", None)
    if fill is not None:
        fill(offset, views)
        return
    copy_read(source, offset, views)


def peek_views(source: ByteSource, offset: int, size: int) -> list[memoryview] | None:
    """``size`` bytes of ``source`` at ``offset`` as read-only views of memory
    the source already holds (a decompressed stream's cached pieces), read as
    a peek (see :func:`read_into`); None where the source has no such
    memory: read them with ``read_into(..., peek=True)`` instead."""
    views = getattr(source, "peek_views", None)
    return None if views is None else views(offset, size)


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


#: Copies at least this long run with the GIL released (``ctypes.memmove``):
#: a slice assignment holds it, and the FUSE threads' copies of decoded
#: pieces into reply buffers were a quarter of the time the GIL was held in
#: a sequential zstd read through the mount (py-spy --gil), time in which
#: the decoding threads could not even start their next call.  Below it the
#: ~1 µs of a foreign call is not worth it.
RELEASED_COPY = 64 << 10


def _bytes_address(data: bytes) -> int:
    """The address of the contents of ``data`` (valid while it is referenced)."""
    address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert address is not None
    return address


class _PyBuffer(ctypes.Structure):
    # Py_buffer (Include/pybuffer.h), as PyObject_GetBuffer fills it.
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.restype = ctypes.c_int
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.restype = None
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
#: PyObject_GetBuffer's PyBUF_SIMPLE: one contiguous run of bytes.
_PYBUF_SIMPLE = 0


def buffer_address(data: bytes | memoryview) -> int:
    """The address of the contents of ``data``, read-only views included
    (ctypes' ``from_buffer`` takes writable ones only); valid while ``data``
    is referenced.  A view must be contiguous: pieces always are."""
    if type(data) is bytes:
        return _bytes_address(data)
    view = _PyBuffer()
    _get_buffer(data, ctypes.byref(view), _PYBUF_SIMPLE)   # raises for a non-contiguous view
    address = view.buf
    # Releasing drops this export only: the view's own keeps the memory.
    _release_buffer(ctypes.byref(view))
    assert address is not None
    return int(address)


def scatter_parts(parts: Iterable[tuple[bytes | memoryview, int, int]],
                  views: Sequence[memoryview]) -> int:
    """:func:`scatter` of ``(data, start, length)`` slices of bytes objects
    or of contiguous views (zero-copy decoded pieces); long copies run with
    the GIL released.  Returns bytes copied."""
    vi, vpos, copied = 0, 0, 0
    dst: int | None = None                   # the address of views[vi], once needed
    for data, spos, n in parts:
        send = spos + n
        src: int | None = None
        while spos < send and vi < len(views):
            view = views[vi]
            take = min(len(view) - vpos, send - spos)
            if take >= RELEASED_COPY and not view.readonly:
                if src is None:
                    src = buffer_address(data)
                if dst is None:
                    dst = ctypes.addressof(ctypes.c_char.from_buffer(view))
                ctypes.memmove(dst + vpos, src + spos, take)
            else:
                view[vpos:vpos + take] = memoryview(data)[spos:spos + take]
            vpos += take
            spos += take
            copied += take
            if vpos >= len(view):
                vi, vpos, dst = vi + 1, 0, None
        if vi >= len(views):
            break
    return copied


_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


def join_released(views: Sequence[memoryview]) -> bytes:
    """``b"".join(views)`` of contiguous views (an index pass's output, a
    decoded piece cut by a change of segment), copied with the GIL released
    (see RELEASED_COPY)."""
    total = sum(map(len, views))
    if total < RELEASED_COPY:
        return b"".join(views)
    out = new_bytes(total)
    dst = _bytes_address(out)
    for view in views:
        if view:
            ctypes.memmove(dst, buffer_address(view), len(view))
            dst += len(view)
    return out


def new_bytes(size: int) -> bytes:
    """A bytes object of ``size`` bytes with unset contents, for its maker
    to fill through :func:`buffer_address` before anyone else reads that
    part of it: how C code builds one, without Python's zero fill."""
    out: bytes = _new_bytes(None, size)
    return out


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


def preadv_fully(fd: int, views: Sequence[memoryview], offset: int, total: int) -> int:
    """preadv until all ``total`` bytes of ``views`` are in or the file ends."""
    count = len(views)
    if count <= IOV_MAX:
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
        n = os.preadv(fd, pending[:IOV_MAX], offset + done)
        if n <= 0:
            break
        done += n
        _, pending = split_views(pending, n)
    return done
