"""What the files layer reads from: a small partition protocol.

:class:`Partition` is all a tree needs: ``size``, ``read(offset, size)`` and
``read_into(offset, view)``, thread-safe (
:class:`imagefs.blockio.VirtualPartition` satisfies it).  Optionally a
partition can say which bytes its image does not hold
(:class:`StoredMap`): a file's data that lies there is an error, not zeros
(:func:`image_partition` adds that to a VirtualPartition).

The parser libraries want a file object with ``seek``/``read``;
:class:`PartitionFile` is one whose cursor is per thread, so that threads
sharing a parser never move each other's position.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from imagefs.errors import TruncatedError


@runtime_checkable
class Partition(Protocol):
    """Random-access, thread-safe bytes of one partition."""

    size: int

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; short only at the end."""
        ...

    def read_into(self, offset: int, dest: memoryview) -> int:
        """Fill ``dest`` from ``offset``; the count, short only at the end."""
        ...

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from imagefs.blockio.partition import VirtualPartition


@runtime_checkable
class StoredMap(Protocol):
    """Optional: which bytes of the partition the image really holds."""

    def first_unstored(self, offset: int, size: int) -> int | None:
        """The first offset in ``[offset, offset + size)`` the image does not hold, or None."""
        ...


class ImagePartition:
    """A VirtualPartition plus :class:`StoredMap`, from the image's block map.

    Delegates reads unchanged; ``first_unstored`` asks the image's
    ``extents`` (a bitmap lookup, no I/O).
    """

    def __init__(self, vp: VirtualPartition, reads: Partition | None = None) -> None:
        self._vp = vp
        self.size: int = vp.size
        source = reads or vp
        self.read = source.read
        self.read_into = source.read_into
        self._image = vp.image
        self._bs: int = self._image.block_size
        self._mapped_end: int = self._image.total_blocks * self._bs

    def first_unstored(self, offset: int, size: int) -> int | None:
        end = offset + size
        if size <= 0:
            return None
        first = min(end, self._mapped_end)
        if offset < first:
            b0 = offset // self._bs
            b1 = -(-first // self._bs)
            for start, _count, stored in self._image.extents(b0, b1 - b0):
                if not stored:
                    return max(offset, start * self._bs)
        return None if end <= self._mapped_end else max(offset, self._mapped_end)

    def close(self) -> None:
        self._vp.close()


def image_partition(vp: VirtualPartition, reads: Partition | None = None) -> ImagePartition:
    """Wrap a :class:`~imagefs.blockio.VirtualPartition` so trees can check extents.

    ``reads``: where its bytes are read instead (the catalog's entry, which
    records a failure as reads of ``VNAME`` do); the block map stays ``vp``'s.
    """
    return ImagePartition(vp, reads)


class PartitionFile(io.RawIOBase):
    """A read-only file object over a partition, one cursor per thread.

    Reads past the end are short (EOF), as a file's are; the parsers
    rely on that.
    """

    def __init__(self, partition: Partition, name: str = "partition") -> None:
        super().__init__()
        self.partition = partition
        self.size = partition.size
        self.name = name
        self._local = threading.local()

    def _pos(self) -> int:
        return getattr(self._local, "pos", 0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos()
        elif whence == io.SEEK_END:
            pos += self.size
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._local.pos = pos
        return pos

    def tell(self) -> int:
        return self._pos()

    def read(self, size: int | None = -1) -> bytes:
        pos = self._pos()
        if size is None or size < 0:
            size = max(0, self.size - pos)
        data = self.partition.read(pos, size) if pos < self.size else b""
        self._local.pos = pos + len(data)
        return data

    def readinto(self, b: WriteableBuffer) -> int:
        pos = self._pos()
        view = memoryview(b).cast("B")
        n = self.partition.read_into(pos, view) if pos < self.size else 0
        self._local.pos = pos + n
        return n

    def close(self) -> None:
        """Does not close the partition: its owner does."""
        super().close()


def check_range(
    partition: Partition, offset: int, size: int, what: str | Callable[[], str]
) -> None:
    """Raise if ``[offset, offset + size)`` is past the partition's end or not held.

    ``what`` names the file for the message (``NAME:/path``, or a function
    giving it: worked out only for the error).
    """
    from imagefs.files.errors import FilesError

    def name() -> str:
        return what if isinstance(what, str) else what()

    if offset < 0 or offset + size > partition.size:
        raise FilesError(
            name(),
            f"its data lies past the end of the partition (byte {offset + size:,} "
            f"of {partition.size:,})",
        )
    if isinstance(partition, StoredMap):
        bad = partition.first_unstored(offset, size)
        if bad is not None:
            raise TruncatedError(
                name(),
                f"its data at partition byte {bad:,} is not in the backup",
                "the backup does not hold these blocks (incomplete or inconsistent "
                "image); copy it again from its origin",
            )
