"""The checksum functions image formats use (docs/formats.md section 1).

``zlib.crc32`` does the table work in C; partclone's variant differs only in
having no final XOR, which is an XOR with 0xFFFFFFFF on either side.
"""

from __future__ import annotations

import zlib
from types import ModuleType

_M = 0xFFFFFFFF


def pc_crc32(data: bytes | memoryview, state: int = _M) -> int:
    """partclone's CRC-32: reflected 0xEDB88320, start 0xFFFFFFFF, no final XOR.

    ``state`` continues a running register (the previous return value).
    """
    return zlib.crc32(data, state ^ _M) ^ _M


def pc_crc32_v1_block(state: int, first_byte: int, length: int) -> int:
    """partclone 0.2.x's per-block register: the first byte fed ``length`` times.

    Cheap to compute with zlib on a repeated byte string; it detects almost
    nothing and is only used to tell the 4- and 8-byte CRC variants apart.
    """
    return pc_crc32(bytes((first_byte,)) * length, state)


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
