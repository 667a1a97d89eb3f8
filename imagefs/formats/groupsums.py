"""How each format's checksum group is checked (the algorithms behind verify on read).

A *group* is the data between two checksum records of a grouped layout
(:mod:`~imagefs.formats.layout`): ``bpc`` blocks in partclone 2, one block
in partclone 1, 64 KiB of data in partimage.  Each algorithm answers
``check(group, pieces, record, previous_record)``: whether the data
(``pieces``, in order; together exactly the group's data) matches the
record stored after it.

Three kinds of state exist (docs/formats.md sections 1, 2.2, 2.4, 4.4):

* *fresh per group* (partclone reseed, partimage ``CHK``): the group alone
  decides;
* *running register that is stored* (partclone 2 CRC32 without reseed,
  partclone 1's per-block register): the state before a group is the
  record stored after the previous group, so any group can be checked on
  its own from that record (``needs_prev``).  A damaged record then fails
  two groups: its own and the next; both answer EIO, which is the safe
  side;
* *running digest* (partclone 2 XXH64 / XXH3-128 without reseed): a stored
  digest does not give back the hash state, so groups can only be checked
  in order from the first one (``sequential``); see
  :class:`~imagefs.formats.groupcheck.GroupChecker`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Literal

from imagefs.formats.checksums import crc32, pc_crc32, pc_crc32_v1_block, xxhash_module

_M = 0xFFFFFFFF


class GroupSum:
    """The checksum of one layout's groups."""

    #: The state before group g > 0 is the record stored after group g - 1.
    needs_prev = False
    #: A running digest: groups can only be checked in order from group 0.
    sequential = False
    #: Human-readable name for messages.
    name = "checksum"

    def check(self, group: int, pieces: Sequence[memoryview], record: memoryview,
              prev: memoryview | None) -> bool:
        """True if ``pieces`` (the group's data) match ``record``.

        ``prev`` is the previous group's record for ``needs_prev`` sums
        (None for group 0, whose state is the initial one).
        """
        raise NotImplementedError

    # Only for ``sequential`` sums: a hash state carried from group to group.
    def fresh(self) -> Any:
        raise NotImplementedError

    def digest(self, state: Any) -> bytes:
        raise NotImplementedError


class PartcloneCrc(GroupSum):
    """partclone 2, mode 0x20: pc-crc32, fresh per group or one running register."""

    name = "CRC32"

    def __init__(self, endian: str, reseed: bool) -> None:
        self._fmt = struct.Struct(endian + "I")
        self.needs_prev = not reseed

    def check(self, group: int, pieces: Sequence[memoryview], record: memoryview,
              prev: memoryview | None) -> bool:
        state = _M if prev is None else self._fmt.unpack(prev)[0]
        for piece in pieces:
            state = pc_crc32(piece, state)
        return bool(state == self._fmt.unpack(record)[0])


class PartcloneXxh(GroupSum):
    """partclone 2, modes 0x30 (XXH64) and 0x31 (XXH3-128), digests stored as integers."""

    def __init__(self, mode_bits: int, endian: str, reseed: bool) -> None:
        xx = xxhash_module()
        if mode_bits == 64:
            self._algo: Callable[[], Any] = xx.xxh64
            self._size = 8
            self.name = "XXH64"
        else:
            self._algo = xx.xxh3_128
            self._size = 16
            self.name = "XXH3-128"
        # XXH3-128's struct {low64, high64} is written raw: a little-endian
        # u128 on a little-endian writer (docs/formats.md section 1).
        self._order: Literal["little", "big"] = "little" if endian == "<" else "big"
        self.sequential = not reseed

    def check(self, group: int, pieces: Sequence[memoryview], record: memoryview,
              prev: memoryview | None) -> bool:
        state = self._algo()
        for piece in pieces:
            state.update(piece)
        return self.digest(state) == bytes(record)

    def fresh(self) -> Any:
        return self._algo()

    def digest(self, state: Any) -> bytes:
        value: int = state.intdigest()
        return value.to_bytes(self._size, self._order)


class PartcloneV1Crc(GroupSum):
    """partclone 1: the never-reset register of each block's first byte (one block a group)."""

    needs_prev = True
    name = "format-1 CRC"

    def __init__(self, block_size: int) -> None:
        self._bs = block_size

    def check(self, group: int, pieces: Sequence[memoryview], record: memoryview,
              prev: memoryview | None) -> bool:
        state = _M if prev is None else int.from_bytes(prev[:4], "little")
        first = next(piece[0] for piece in pieces if len(piece))
        return pc_crc32_v1_block(state, first, self._bs) == int.from_bytes(record[:4], "little")


class PartimageChk(GroupSum):
    """partimage: a ``CHK`` record (magic + zlib CRC-32) after every 64 KiB of data."""

    name = "CHK CRC-32"

    def __init__(self, magic: bytes) -> None:
        self._magic = magic

    def check(self, group: int, pieces: Sequence[memoryview], record: memoryview,
              prev: memoryview | None) -> bool:
        if bytes(record[:len(self._magic)]) != self._magic:
            return False
        crc = 0
        for piece in pieces:
            crc = crc32(piece, crc)
        return crc == int.from_bytes(record[4:8], "little")
