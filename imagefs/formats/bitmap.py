"""A block bitmap with O(1) rank through popcount checkpoints.

Bit ``k`` (LSB first: byte ``k >> 3``, bit ``k & 7``) is 1 when block ``k``
is stored.  ``rank(k)`` = number of stored blocks below ``k`` = the stored
block's position in the data area.  A checkpoint every 4096 blocks (512
bitmap bytes, u64 each = 1/256 of the bitmap) makes rank one table read plus
one C-level popcount of at most 512 bytes; nothing loops per bit in Python.
"""

from __future__ import annotations

from array import array

CHECKPOINT_BLOCKS = 4096
_CHECKPOINT_BYTES = CHECKPOINT_BLOCKS // 8


class RankedBitmap:
    """An immutable LSB-first bitmap of ``total`` blocks with rank queries."""

    __slots__ = ("bits", "total", "count", "_checkpoints")

    def __init__(self, bits: bytes, total: int) -> None:
        nbytes = (total + 7) // 8
        if len(bits) < nbytes:
            raise ValueError("bitmap shorter than total blocks")
        bits = bytes(bits[:nbytes])
        if total & 7:
            # Padding bits past `total` can be 1 (partclone fills words with
            # ones before clearing free blocks); they never count.
            last = bits[-1] & ((1 << (total & 7)) - 1)
            bits = bits[:-1] + bytes((last,))
        self.bits = bits
        self.total = total
        checkpoints = array("Q", [0])
        running = 0
        for start in range(0, nbytes, _CHECKPOINT_BYTES):
            running += int.from_bytes(bits[start:start + _CHECKPOINT_BYTES], "little").bit_count()
            checkpoints.append(running)
        self._checkpoints = checkpoints
        self.count = running

    @classmethod
    def from_byte_flags(cls, flags: bytes, total: int, stored_value: int = 1) -> RankedBitmap:
        """Build from one byte per block (partclone v1), counting only ``stored_value``.

        Done with C-level bytes operations: translate to ASCII '0'/'1',
        reverse, and parse as a base-2 integer.
        """
        table = bytearray(b"0" * 256)
        table[stored_value] = ord("1")
        text = bytes(flags[:total]).translate(bytes(table))[::-1]
        value = int(text, 2) if text else 0
        return cls(value.to_bytes((total + 7) // 8, "little"), total)

    def rank(self, k: int) -> int:
        """Number of set bits below block ``k`` (0 <= k <= total)."""
        idx = k // CHECKPOINT_BLOCKS
        base = self._checkpoints[idx]
        start = idx * _CHECKPOINT_BYTES
        full_end = k >> 3
        if full_end > start:
            base += int.from_bytes(self.bits[start:full_end], "little").bit_count()
        rem = k & 7
        if rem:
            base += (self.bits[full_end] & ((1 << rem) - 1)).bit_count()
        return base

    def select(self, rank: int) -> int:
        """The block number of the stored block with this rank (0-based).

        Binary search over ``rank``; used only to name places in error
        messages, never on the read path.
        """
        lo, hi = 0, self.total
        while lo < hi:                      # smallest k with rank(k + 1) > rank
            mid = (lo + hi) // 2
            if self.rank(mid + 1) > rank:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def is_set(self, k: int) -> bool:
        return bool(self.bits[k >> 3] >> (k & 7) & 1)

    def extents(self, first: int, count: int) -> list[tuple[int, int, bool]]:
        """Runs of equal bits over ``[first, first + count)``."""
        if count <= 0:
            return []
        end = first + count
        x = int.from_bytes(self.bits[first >> 3:(end + 7) >> 3], "little") >> (first & 7)
        full = (1 << count) - 1
        x &= full
        if x == 0:
            return [(first, count, False)]
        if x == full:
            return [(first, count, True)]
        runs: list[tuple[int, int, bool]] = []
        pos = 0
        while pos < count:
            if x & 1:
                n = ((x ^ (x + 1)).bit_length() - 1)       # trailing ones
                stored = True
            elif x:
                n = ((x & -x).bit_length() - 1)            # trailing zeros
                stored = False
            else:
                n = count - pos
                stored = False
            n = min(n, count - pos)
            runs.append((first + pos, n, stored))
            x >>= n
            pos += n
        return runs

    def memory_bytes(self) -> int:
        return len(self.bits) + self._checkpoints.itemsize * len(self._checkpoints)
