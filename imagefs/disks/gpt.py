"""GUID partition tables: parse a header, rebuild the backup one.

Clonezilla keeps the primary GPT as sector dumps (``DISK-gpt-1st``, the first
34 sectors of 512 bytes) and as ``sgdisk -b`` (``DISK-gpt.gdisk``), but the
backup table only as ``DISK-gpt-2nd``, which misses its first sector
(formats.md 5.4).  The backup table is the primary one mirrored: the same
entries at ``alternate_lba - entry sectors``, a header whose own and
alternate LBAs are swapped and whose CRC is recomputed (UEFI 2.10 5.3.2).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

SIGNATURE = b"EFI PART"
#: The header fields up to and including the entries' CRC (UEFI 2.10 table 5-5).
_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
HEADER_SIZE = _HEADER.size      # 92


class GptError(ValueError):
    """The GPT in the dumps is unusable; ``str()`` is one sentence."""


@dataclass(frozen=True)
class GptHeader:
    revision: int
    header_size: int
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: bytes
    entries_lba: int
    num_entries: int
    entry_size: int
    entries_crc: int
    raw: bytes                  # the header_size bytes as stored

    @property
    def entries_bytes(self) -> int:
        return self.num_entries * self.entry_size

    def entry_sectors(self, sector_size: int) -> int:
        return -(-self.entries_bytes // sector_size)


def parse_header(data: bytes, what: str) -> GptHeader:
    """A GPT header from the start of ``data``; checks signature, size and CRC."""
    if len(data) < HEADER_SIZE or data[:8] != SIGNATURE:
        raise GptError(f"{what} holds no GPT header ('EFI PART' signature missing)")
    (_sig, revision, header_size, crc, _res, my_lba, alt_lba, first, last, guid,
     entries_lba, num, esize, ecrc) = _HEADER.unpack_from(data)
    if not HEADER_SIZE <= header_size <= len(data) or header_size > 4096:
        raise GptError(f"{what}: GPT header size {header_size} is out of range")
    raw = bytes(data[:header_size])
    if zlib.crc32(raw[:16] + b"\0\0\0\0" + raw[20:]) != crc:
        raise GptError(f"{what}: the GPT header's CRC does not match (damaged dump)")
    if esize < 128 or esize % 8 or not 0 < num <= 65536:
        raise GptError(f"{what}: GPT entry size {esize} or count {num} is out of range")
    return GptHeader(revision, header_size, my_lba, alt_lba, first, last, guid,
                     entries_lba, num, esize, ecrc, raw)


def check_entries(header: GptHeader, entries: bytes, what: str) -> None:
    if len(entries) < header.entries_bytes:
        raise GptError(f"{what} holds {len(entries)} bytes of GPT entries, "
                       f"the header promises {header.entries_bytes}")
    if zlib.crc32(entries[:header.entries_bytes]) != header.entries_crc:
        raise GptError(f"{what}: the GPT entries' CRC does not match the header (damaged dump)")


def backup_header(primary: GptHeader, sector_size: int) -> tuple[int, bytes]:
    """(entries LBA, header sector) of the backup table mirroring ``primary``.

    The backup entries end right before the backup header, as every GPT
    writer (sgdisk, sfdisk, parted) places them.
    """
    alt = primary.alternate_lba
    entries_lba = alt - primary.entry_sectors(sector_size)
    raw = bytearray(primary.raw)
    struct.pack_into("<I", raw, 16, 0)
    struct.pack_into("<QQ", raw, 24, alt, primary.my_lba)
    struct.pack_into("<Q", raw, 72, entries_lba)
    struct.pack_into("<I", raw, 16, zlib.crc32(bytes(raw)))
    return entries_lba, bytes(raw).ljust(sector_size, b"\0")


@dataclass(frozen=True)
class GptEntry:
    index: int                  # 0-based slot
    type_guid: str
    unique_guid: str
    first_lba: int
    last_lba: int
    attributes: int
    name: str


def guid_text(b: bytes) -> str:
    """The mixed-endian GUID in ``b`` as text (sfdisk's upper case)."""
    a, b2, c = struct.unpack_from("<IHH", b)
    rest = b[8:16].hex().upper()
    return f"{a:08X}-{b2:04X}-{c:04X}-{rest[:4]}-{rest[4:]}"


def entries_of(header: GptHeader, entries: bytes) -> list[GptEntry]:
    out = []
    for i in range(header.num_entries):
        e = entries[i * header.entry_size:(i + 1) * header.entry_size]
        if e[:16] == bytes(16):
            continue
        first, last, attrs = struct.unpack_from("<QQQ", e, 32)
        name = e[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        out.append(GptEntry(i, guid_text(e[:16]), guid_text(e[16:32]), first, last, attrs, name))
    return out
