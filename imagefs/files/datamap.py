"""A file's data as runs over the partition, read without the parser.

The parsers hand out extent lists; reading a file then needs nothing of
the parser: each run is one ``partition.read_into`` straight into the
caller's buffer (the FUSE reply buffer), holes are zero-filled, compressed
runs are decoded by a pure function (thread-safe, outside any lock).  This
is what makes reads of different files proceed in parallel and lets a
100 MB copy run at the partition's speed (bench/RESULTS-files.md).

Every stored run is checked once, when the map is built, against the
partition's end and (if the partition is a StoredMap) against the bytes the
image holds: data the file system says is there is never served as zeros.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from imagefs.errors import TruncatedError
from imagefs.files.errors import FilesError
from imagefs.files.partition import Partition, StoredMap

#: Zeros to copy from when filling holes (a memoryview slice is free).
_ZEROS = memoryview(bytes(1 << 20))


@dataclass(frozen=True)
class Run:
    """``length`` bytes of the file from ``offset``.

    ``where`` is the partition offset of plain data, or None for a hole.
    ``decode`` (compressed data) returns the decoded unit; byte ``skip`` of
    it is the file's byte ``offset``.  ``key`` identifies the unit for the
    decoded-unit cache.
    """

    offset: int
    length: int
    where: int | None = None
    decode: Callable[[], bytes] | None = None
    skip: int = 0
    key: object = None


class DecodedCache:
    """A small byte-bounded LRU of decoded compressed units, shared by a tree."""

    def __init__(self, capacity: int = 4 << 20) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[object, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: object, load: Callable[[], bytes]) -> bytes:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                return data
        data = load()  # outside the lock: decoding runs in parallel
        if len(data) <= self.capacity // 4:
            with self._lock:
                if key not in self._items:
                    self._items[key] = data
                    self._bytes += len(data)
                    while self._bytes > self.capacity:
                        _, old = self._items.popitem(last=False)
                        self._bytes -= len(old)
        return data


class DataMap:
    """The runs of one file, sorted and gap-free from 0 to ``size``."""

    __slots__ = ("size", "runs", "_starts", "_what")

    def __init__(self, size: int, runs: list[Run], what: str | Callable[[], str]) -> None:
        self.size = size
        self._what = what
        self.runs = _normalise(runs, size)
        self._starts = [r.offset for r in self.runs]

    @property
    def what(self) -> str:
        """The file's name for messages (``NAME:/path``), worked out only when needed."""
        return self._what if isinstance(self._what, str) else self._what()

    @what.setter
    def what(self, value: str | Callable[[], str]) -> None:
        self._what = value

    def check(self, partition: Partition) -> None:
        """Raise if a plain run lies past the partition or in bytes the image lacks."""
        first_unstored = partition.first_unstored if isinstance(partition, StoredMap) else None
        for r in self.runs:
            if r.where is None:
                continue
            if r.where < 0 or r.where + r.length > partition.size:
                raise FilesError(
                    self.what,
                    f"its data lies past the end of the partition (byte "
                    f"{r.where + r.length:,} of {partition.size:,})",
                )
            if first_unstored is not None:
                bad = first_unstored(r.where, r.length)
                if bad is not None:
                    raise TruncatedError(
                        self.what,
                        f"its data at partition byte {bad:,} is not in the backup",
                        "the image does not hold these blocks; copy the backup again "
                        "from its origin",
                    )

    def read_into(
        self, partition: Partition, offset: int, dest: memoryview, cache: DecodedCache | None = None
    ) -> int:
        """Fill ``dest`` from file offset ``offset``; short only at EOF."""
        n = min(len(dest), self.size - offset)
        if n <= 0:
            return 0
        pos = offset
        end = offset + n
        i = bisect.bisect_right(self._starts, pos) - 1
        runs = self.runs
        while pos < end:
            r = runs[i]
            take = min(end, r.offset + r.length) - pos
            lo = pos - offset
            into = r.offset
            if r.where is not None:
                got = partition.read_into(r.where + (pos - into), dest[lo : lo + take])
                if got != take:
                    raise FilesError(
                        self.what,
                        "its data ends early: the partition is shorter than the file system says",
                    )
            elif r.decode is not None:
                data = (
                    cache.get(r.key, r.decode)
                    if cache is not None and r.key is not None
                    else r.decode()
                )
                s = r.skip + (pos - into)
                if len(data) < s + take:
                    raise FilesError(
                        self.what,
                        "a compressed extent decodes to fewer bytes than the file system says",
                    )
                dest[lo : lo + take] = memoryview(data)[s : s + take]
            else:
                _zero(dest, lo, lo + take)
            pos += take
            i += 1
        return n

    def read(
        self, partition: Partition, offset: int, size: int, cache: DecodedCache | None = None
    ) -> bytes:
        n = max(0, min(size, self.size - offset))
        buf = bytearray(n)
        if n:
            self.read_into(partition, offset, memoryview(buf), cache)
        return bytes(buf)

    def stored_bytes(self) -> int:
        return sum(r.length for r in self.runs if r.where is not None or r.decode is not None)


def _normalise(runs: list[Run], size: int) -> list[Run]:
    """Sort, clip to ``size``, fill gaps with holes; overlapping runs are damage."""
    out: list[Run] = []
    pos = 0
    for r in sorted((r for r in runs if r.length > 0), key=lambda r: r.offset):
        if r.offset >= size:
            break
        if r.offset < pos:
            raise ValueError(f"overlapping extents at file offset {r.offset}")
        if r.offset > pos:
            out.append(Run(pos, r.offset - pos))
        length = min(r.length, size - r.offset)
        if length != r.length:
            r = Run(r.offset, length, r.where, r.decode, r.skip, r.key)
        out.append(r)
        pos = r.offset + length
    if pos < size:
        out.append(Run(pos, size - pos))
    return out


def _zero(dest: memoryview, lo: int, hi: int) -> None:
    step = len(_ZEROS)
    while lo < hi:
        k = min(step, hi - lo)
        dest[lo : lo + k] = _ZEROS[:k]
        lo += k


def block_runs(
    block_runs: list[tuple[int | None, int]], block_size: int, size: int, base: int = 0
) -> list[Run]:
    """``[(first_block or None, count), ...]`` in file order to byte runs.

    ``base`` is added to every block's byte address (a data area's start).
    """
    out = []
    pos = 0
    for block, count in block_runs:
        length = count * block_size
        if block is not None:
            out.append(Run(pos, length, base + block * block_size))
        pos += length
    return out


__all__ = ["DataMap", "DecodedCache", "Run", "block_runs"]
