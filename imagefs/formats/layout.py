"""Data areas of stored blocks with a fixed-size record after every group.

partclone v2 puts a checksum after every ``bpc`` blocks, partclone v1 a CRC
after every block, partimage a 16-byte ``CHK`` record after every 64 KiB of
data, and an ntfsclone run is 1 header byte before every cluster (the same
shape shifted by one byte).  All are: the ``r``-th stored block is at

    data_start + r * block_size + (r // group) * trailer

so a run of consecutive stored blocks is one contiguous byte range of the
source, read with one ``read_at`` and then stripped of the trailers, or
scattered with one ``read_into`` whose trailer iovecs land in scratch space.

When the trailers are checksums, a :class:`~imagefs.formats.groupcheck.GroupChecker`
(``checker``) checks each group on its first read (verify on read).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagefs.errors import TRUNCATED_HINT, TruncatedError
from imagefs.io.source import ByteSource, read_into

if TYPE_CHECKING:
    from imagefs.formats.groupcheck import GroupChecker


class GroupedLayout:
    """Maps stored-block ranks to source offsets and reads runs of them."""

    __slots__ = ("source", "data_start", "block_size", "group", "trailer", "_stride",
                 "_scratch", "checker")

    def __init__(self, source: ByteSource, data_start: int, block_size: int,
                 group: int = 0, trailer: int = 0) -> None:
        self.source = source
        self.data_start = data_start
        self.block_size = block_size
        # group 0 or trailer 0: blocks back to back.
        self.group = group if (group > 0 and trailer > 0) else 0
        self.trailer = trailer if self.group else 0
        self._stride = self.group * block_size + self.trailer
        # Where read_into drops the trailers.  Shared by all threads: the
        # bytes written there are never read.
        self._scratch = memoryview(bytearray(self.trailer))
        #: Checks the trailers' checksums on first read (None: no checks).
        self.checker: GroupChecker | None = None

    @property
    def stride(self) -> int:
        """Source bytes of one whole group: its data and its trailer."""
        return self._stride

    def data_offset(self, pos: int) -> int:
        """Source offset of data byte ``pos`` (``rank * block_size + offset in the block``)."""
        if not self.group:
            return self.data_start + pos
        group, within = divmod(pos, self.group * self.block_size)
        return self.data_start + group * self._stride + within

    def offset(self, rank: int) -> int:
        """Source offset of the stored block of rank ``rank``."""
        if self.group:
            return self.data_start + rank * self.block_size + (rank // self.group) * self.trailer
        return self.data_start + rank * self.block_size

    def read_ranks(self, rank: int, count: int) -> bytes:
        """Data of stored blocks ``rank .. rank + count - 1``, trailers removed."""
        bs = self.block_size
        checker = self.checker
        if checker is not None and checker.enabled and not checker.complete and count > 0:
            buf = bytearray(count * bs)
            self.read_into(rank * bs, memoryview(buf))
            return bytes(buf)
        start = self.offset(rank)
        length = self.offset(rank + count - 1) + bs - start
        raw = self.source.read_at(start, length)
        if len(raw) < length:
            raise TruncatedError(self.source.name,
                                 f"data area ends at byte {start + len(raw)}, "
                                 f"before stored block #{rank + len(raw) // max(bs, 1)}",
                                 TRUNCATED_HINT)
        if not self.group:
            return raw
        g = self.group
        first_in_group = g - rank % g          # blocks until the first trailer
        if first_in_group >= count:
            return raw
        mv = memoryview(raw)
        head = first_in_group * bs
        parts = [mv[:head]]
        pos = head + self.trailer
        remaining = count - first_in_group
        stride = self._stride
        while remaining > 0:
            take = min(remaining, g) * bs
            parts.append(mv[pos:pos + take])
            pos += stride
            remaining -= g
        return b"".join(parts)

    def read_into(self, pos: int, dest: memoryview) -> None:
        """Fill ``dest`` with stored data from byte ``pos`` of the stripped data.

        ``pos`` counts data bytes only (``rank * block_size + offset in the
        block``), so any byte range of a run of stored blocks is one scatter
        read: data straight into ``dest``, trailers into scratch space.
        """
        n = len(dest)
        if not self.group:
            read_into(self.source, self.data_start + pos, (dest,))
            return
        checker = self.checker
        if (checker is not None and checker.enabled and not checker.complete and n
                and checker.read_into(pos, dest)):
            return                              # read and checked by the checker
        group_bytes = self.group * self.block_size
        group, within = divmod(pos, group_bytes)
        start = self.data_start + group * self._stride + within
        first = group_bytes - within            # data bytes before the next trailer
        if first >= n:
            read_into(self.source, start, (dest,))
            return
        views = [dest[:first]]
        scratch = self._scratch
        done = first
        while done < n:
            take = min(group_bytes, n - done)
            views.append(scratch)
            views.append(dest[done:done + take])
            done += take
        read_into(self.source, start, views)
