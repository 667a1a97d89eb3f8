"""MBR partition entries, the EBR chain of an extended partition, swap headers.

Clonezilla saves only the first EBR of an extended partition (``PART-ebr``);
the later EBRs of the chain sit in the gaps before each further logical
partition and are not saved (formats.md 5.4-5.5).  They are synthesised here
from ``-pt.sf`` the way libfdisk writes them, CHS fields included, so that
the logical partitions parse.  A swap partition is not saved either: its
header is rebuilt from ``swappt-PART.info`` as mkswap writes it.
"""

from __future__ import annotations

import struct
import uuid as uuidlib
from dataclasses import dataclass

BOOT_SIGNATURE = b"\x55\xaa"
_TABLE_AT = 446          # four 16-byte entries, then the signature at 510
#: BIOS geometry when DISK-chs.sf is missing: what libfdisk assumes (255/63).
DEFAULT_GEOMETRY = (255, 63)


def chs(lba: int, geometry: tuple[int, int]) -> bytes:
    """The 3 CHS bytes of ``lba`` as libfdisk's set_hsc writes them.

    Past cylinder 1023 the address is clamped to the last sector of
    cylinder 1023 (1023/254/63 for 255 heads, 63 sectors).
    """
    heads, spt = geometry
    if lba // (heads * spt) > 1023:
        lba = heads * spt * 1024 - 1
    c, rest = divmod(lba, heads * spt)
    h, s = divmod(rest, spt)
    return bytes((h, (s + 1) | ((c >> 2) & 0xC0), c & 0xFF))


def entry(ptype: int, start_abs: int, size: int, rel_start: int,
          geometry: tuple[int, int], bootable: bool = False) -> bytes:
    """One 16-byte MBR/EBR entry: CHS from absolute sectors, LBA field relative."""
    if size == 0:
        return bytes(16)
    return (bytes((0x80 if bootable else 0,)) + chs(start_abs, geometry) + bytes((ptype,))
            + chs(start_abs + size - 1, geometry) + struct.pack("<II", rel_start, size))


def sector(entries: list[bytes], sector_size: int) -> bytes:
    """A boot-record sector with ``entries`` at 446 and 55 AA at 510."""
    buf = bytearray(sector_size)
    for i, e in enumerate(entries):
        buf[_TABLE_AT + 16 * i:_TABLE_AT + 16 * (i + 1)] = e
    buf[510:512] = BOOT_SIGNATURE
    return bytes(buf)


@dataclass(frozen=True)
class Logical:
    """A logical partition: absolute start and size in sectors, MBR type id."""

    start: int
    size: int
    ptype: int
    bootable: bool = False


class ChainError(ValueError):
    """The logical partitions cannot be chained; ``str()`` is one sentence."""


def ebr_positions(ext_start: int, ext_size: int, logicals: list[Logical],
                  first_gap: int) -> list[int]:
    """Where each logical partition's EBR sits (absolute sectors).

    The first is the extended partition's first sector.  libfdisk put each
    later one ``first_gap`` sectors before its partition (the distance of
    the first logical from the extended start: 2048 on the test disks);
    when that falls inside the previous logical partition, the first free
    sector after it is used.
    """
    positions = []
    prev_end = ext_start          # first sector not yet taken
    for i, lg in enumerate(logicals):
        if not (ext_start < lg.start and lg.start + lg.size <= ext_start + ext_size):
            raise ChainError(f"logical partition at sector {lg.start} is not inside the "
                             f"extended partition")
        pos = ext_start if i == 0 else lg.start - first_gap
        if i and pos < prev_end:
            pos = prev_end
        if pos >= lg.start:
            raise ChainError(f"logical partition at sector {lg.start} leaves no sector for its EBR")
        positions.append(pos)
        prev_end = lg.start + lg.size
    return positions


def ebr_chain(ext_start: int, ext_size: int, logicals: list[Logical], first_gap: int,
              geometry: tuple[int, int], sector_size: int) -> list[tuple[int, bytes]]:
    """(absolute sector, EBR bytes) for each logical partition, in chain order.

    Entry 1 points at the logical partition relative to its EBR; entry 2 at
    the next EBR relative to the extended partition's start, with the size
    from that EBR to the end of the next logical partition.
    """
    logicals = sorted(logicals, key=lambda lg: lg.start)
    pos = ebr_positions(ext_start, ext_size, logicals, first_gap)
    out = []
    for i, lg in enumerate(logicals):
        first = entry(lg.ptype, lg.start, lg.size, lg.start - pos[i], geometry, lg.bootable)
        link = bytes(16)
        if i + 1 < len(logicals):
            nxt = logicals[i + 1]
            span = nxt.start + nxt.size - pos[i + 1]
            link = entry(0x05, pos[i + 1], span, pos[i + 1] - ext_start, geometry)
        out.append((pos[i], sector([first, link], sector_size)))
    return out


# --------------------------------------------------------------------- swap

#: mkswap writes its header into the first page; x86-64 pages are 4 KiB.
SWAP_PAGE = 4096
SWAP_MAGIC = b"SWAPSPACE2"


def swap_header(partition_size: int, uuid: str | None, label: str | None,
                page_size: int = SWAP_PAGE) -> bytes:
    """The first page of a swap partition as ``mkswap -U UUID -L LABEL`` writes it.

    util-linux's struct swap_header_v1_2: 1024 boot bytes (zeroed), version
    1, last page, no bad pages, the 16-byte UUID, a 16-byte label, and the
    magic in the page's last 10 bytes.  Raises ValueError for a bad UUID.
    """
    pages = partition_size // page_size
    head = bytearray(page_size)
    uid = uuidlib.UUID(uuid).bytes if uuid else bytes(16)
    name = (label or "").encode()[:16]
    struct.pack_into("<III", head, 1024, 1, max(pages - 1, 0), 0)
    head[1036:1052] = uid
    head[1052:1052 + len(name)] = name
    head[page_size - 10:] = SWAP_MAGIC
    return bytes(head)
