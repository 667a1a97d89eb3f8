"""The checksum functions image formats use (docs/formats.md section 1).

partclone's CRC-32 differs from the standard one only in having no final
XOR, which is an XOR with 0xFFFFFFFF on either side of a standard CRC.

The table work is zlib-ng's (:mod:`imagefs.services.fastzlib`): 40+ GiB/s,
which is what lets the mount check every checksum group on its first read
and still stream at disk speed.
"""

from __future__ import annotations

from types import ModuleType

from imagefs.services.fastzlib import crc32

_M = 0xFFFFFFFF


def pc_crc32(data: bytes | memoryview, state: int = _M) -> int:
    """partclone's CRC-32: reflected 0xEDB88320, start 0xFFFFFFFF, no final XOR.

    ``state`` continues a running register (the previous return value).
    """
    return crc32(data, state ^ _M) ^ _M


#: One repeated-byte block per (byte, length): partclone 0.2.x feeds the
#: block's first byte ``length`` times.  At most 256 entries per block size.
_REPEATED: dict[tuple[int, int], bytes] = {}


def pc_crc32_v1_block(state: int, first_byte: int, length: int) -> int:
    """partclone 0.2.x's per-block register: the first byte fed ``length`` times.

    It detects almost nothing (only the first byte of each block and the
    stored register itself); the verify verb and the mount check it anyway.
    """
    key = (first_byte, length)
    data = _REPEATED.get(key)
    if data is None:
        data = bytes((first_byte,)) * length
        if len(_REPEATED) < 1024:       # a few block sizes x 256 byte values
            _REPEATED[key] = data
    return pc_crc32(data, state)


def sum32_signed(data: bytes) -> int:
    """partimage's header "CRC": sum of bytes as signed char, mod 2**32."""
    total = sum(data) - 256 * sum(1 for b in data if b >= 0x80)
    return total & _M


def sum64_unsigned(data: bytes, state: int = 0) -> int:
    """partimage's tail qwCRC: running sum of unsigned bytes mod 2**64."""
    return (state + sum(data)) & 0xFFFFFFFFFFFFFFFF


def xxhash_module() -> ModuleType:
    """The xxhash module, imported lazily (only XXH partclone images need it)."""
    import xxhash
    return xxhash
