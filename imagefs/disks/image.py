"""The assembled disk: ``read`` / ``read_into`` over a plan's extents.

A read is served in one call however many extents it crosses: metadata
from memory, the hidden sectors by ``os.pread`` from their file, each
partition through its reader's ``read_into`` straight into the caller's
buffer, zeros between.  Partition readers are opened on the first read that
touches them, once, under a per-partition lock (other partitions read on
meanwhile); a failed open is remembered and answers every later read of
that range with the same error.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Callable
from typing import Protocol

from imagefs.disks.info import SlotState, render
from imagefs.disks.layout import Extent, FileSlice, Slot
from imagefs.disks.plan import DiskPlan
from imagefs.errors import FormatError, ImageError, TruncatedError

log = logging.getLogger(__name__)

#: Zeros to copy from (a memoryview slice of it is free).
_ZEROS = memoryview(bytes(1 << 20))


class PartitionReader(Protocol):
    """What a partition's content must offer (imagefs.blockio.VirtualPartition does)."""

    size: int

    def read(self, offset: int, size: int) -> bytes: ...

    def read_into(self, offset: int, dest: memoryview) -> int: ...


OpenPartition = Callable[[str], "PartitionReader | None"]


class _Lazy:
    """One partition's reader, opened on first use."""

    def __init__(self, plan: DiskPlan, device: str, length: int, opener: OpenPartition) -> None:
        self.plan = plan
        self.device = device
        self.length = length
        self._opener = opener
        self._lock = threading.Lock()
        self.state = SlotState()

    def reader(self) -> PartitionReader | None:
        st = self.state
        if not st.opened:
            with self._lock:
                if not st.opened:
                    self._open()
        if st.error is not None:
            raise st.error
        return st.reader

    def _open(self) -> None:
        st = self.state
        part = self.plan.partition(self.device)
        image = part.image if part and part.image else self.device
        path = os.path.join(self.plan.directory, image)
        try:
            reader = self._opener(self.device)
            if reader is not None and reader.size > self.length:
                raise FormatError(path, f"the image holds {reader.size} bytes, more than the "
                                  f"{self.length} bytes of partition {self.device}",
                                  "the partition table and the image do not belong together")
            st.reader = reader
            if reader is None:
                st.why = "no image could be opened for it: zeros"
        except ImageError as exc:
            st.error = exc
            log.warning("%s: %s", self.plan.file_name, exc)
        st.opened = True


class DiskImage:
    """A whole disk, read-only, thread-safe: exactly what a restore would write."""

    def __init__(self, plan: DiskPlan, open_partition: OpenPartition) -> None:
        if plan.problem:
            raise ValueError(f"cannot assemble {plan.name}: {plan.problem}")
        self.plan = plan
        self.size = plan.size
        self._extents: list[Extent] = list(plan.extents)
        self._starts = [e.start for e in self._extents]
        self._slots: dict[str, _Lazy] = {}
        for e in self._extents:
            if isinstance(e.piece, Slot):
                self._slots[e.piece.device] = _Lazy(plan, e.piece.device, e.piece.length,
                                                    open_partition)
        self._fds: dict[str, int] = {}
        self._fd_lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; short only at the end of the disk."""
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        n = max(0, min(size, self.size - offset))
        buf = bytearray(n)
        self.read_into(offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, offset: int, dest: memoryview) -> int:
        """Fill ``dest`` from ``offset``; returns the count (short only at the end)."""
        if offset < 0:
            raise ValueError("negative offset")
        n = min(len(dest), self.size - offset)
        if n <= 0:
            return 0
        end = offset + n
        pos = offset
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        extents = self._extents
        while pos < end:
            e = extents[i] if i < len(extents) else None
            if e is None or pos < e.start:              # a gap: zeros up to the next extent
                stop = end if e is None else min(end, e.start)
                _zero(dest, pos - offset, stop - offset)
                pos = stop
                continue
            if pos >= e.end:
                i += 1
                continue
            stop = min(end, e.end)
            self._fill(e, pos - e.start, dest[pos - offset:stop - offset])
            pos = stop
            i += 1
        return n

    def _fill(self, e: Extent, rel: int, dest: memoryview) -> None:
        piece = e.piece
        if isinstance(piece, bytes):
            dest[:] = piece[rel:rel + len(dest)]
        elif isinstance(piece, Slot):
            reader = self._slots[piece.device].reader()
            got = 0
            if reader is not None and rel < reader.size:
                want = min(len(dest), reader.size - rel)
                got = reader.read_into(rel, dest[:want])
                if got != want:
                    raise TruncatedError(self.plan.file_name,
                                         f"partition {piece.device} gave {got} of {want} bytes",
                                         "the image may have changed while mounted")
            _zero(dest, got, len(dest))
        else:
            self._pread(piece, rel, dest)

    def _pread(self, piece: FileSlice, rel: int, dest: memoryview) -> None:
        fd = self._fd(piece.path)
        done = 0
        while done < len(dest):
            got = os.preadv(fd, [dest[done:]], piece.offset + rel + done)
            if got <= 0:
                raise TruncatedError(piece.path, "the file is shorter than when it was listed",
                                     "it changed since; list the directory again")
            done += got

    def _fd(self, path: str) -> int:
        with self._fd_lock:
            fd = self._fds.get(path)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except OSError as exc:
                    raise ImageError(path, f"cannot be opened: {exc.strerror}",
                                     "check that the file is readable") from None
                self._fds[path] = fd
            return fd

    def opened(self, device: str) -> bool:
        """Whether ``device``'s reader has been asked for yet (for tests and .info)."""
        slot = self._slots.get(device)
        return slot is not None and slot.state.opened

    def info_text(self, file_name: str | None = None) -> str:
        """The ``.info`` text, with the state of each partition opened so far."""
        states = {dev: slot.state for dev, slot in self._slots.items()}
        return render(self.plan, file_name or self.plan.file_name, states)

    def close(self) -> None:
        """Close the hidden-data file (the partition readers belong to the caller)."""
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def assemble(plan: DiskPlan, open_partition: OpenPartition) -> DiskImage:
    """The readable disk of ``plan``; ``open_partition(device)`` is called lazily, once.

    ``open_partition`` returns the partition's reader, None when it has no
    image (zeros; .info says so), or raises ImageError when the image is
    broken (reads of that partition then raise it; the rest still reads).
    Raises ValueError for a plan with a problem.
    """
    return DiskImage(plan, open_partition)


def _zero(dest: memoryview, lo: int, hi: int) -> None:
    step = len(_ZEROS)
    while lo < hi:
        k = min(step, hi - lo)
        dest[lo:lo + k] = _ZEROS[:k]
        lo += k
