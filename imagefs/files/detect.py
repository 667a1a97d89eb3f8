"""Which file system a partition holds, from its bytes.

One table, plain data: on-disk signatures to a family (the header's word
is :mod:`imagefs.files.families`).  A header naming a family imagefs reads
is confirmed by the signature (a zeroed superblock must not be parsed as
garbage); a raw image (``raw``, ``dd``, none) is identified by its
signature alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imagefs.files.partition import Partition


@dataclass(frozen=True)
class Signature:
    family: str
    offset: int
    magic: bytes
    extra: Callable[[bytes], bool] | None = None  # a further test on the probe bytes


def _fat_ok(head: bytes) -> bool:
    """A FAT boot sector: jump, sane BPB, and a FAT type string or 0x55AA."""
    if len(head) < 512 or not (head[0] == 0xEB and head[2] == 0x90 or head[0] == 0xE9):
        return False
    bps = int.from_bytes(head[11:13], "little")
    spc = head[13]
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1):
        return False
    return (
        head[54:59] == b"FAT12"
        or head[54:59] == b"FAT16"
        or head[54:61] == b"FAT    "
        or head[82:87] == b"FAT32"
        or head[510:512] == b"\x55\xaa"
        and head[21] in (0xF0, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF)
    )


SIGNATURES: tuple[Signature, ...] = (
    Signature("luks", 0, b"LUKS\xba\xbe"),
    Signature("bitlocker", 3, b"-FVE-FS-"),
    Signature("ntfs", 3, b"NTFS    "),
    Signature("exfat", 3, b"EXFAT   "),
    # mke2fs zaps sectors 0-1 but mkfs.vfat leaves byte 1080 alone: boot
    # sectors first, then superblocks further in; btrfs before ext because
    # its first 64 KiB may still hold an older file system's superblock.
    Signature("fat", 0, b"", _fat_ok),
    Signature("btrfs", 65536 + 64, b"_BHRfS_M"),
    Signature("xfs", 0, b"XFSB"),
    Signature("apfs", 32, b"NXSB"),
    Signature("squashfs", 0, b"hsqs"),
    Signature("lvm", 536, b"LVM2 001"),
    Signature("ext", 1080, b"\x53\xef"),
    Signature("hfsplus", 1024, b"H+"),
    Signature("hfsplus", 1024, b"HX"),
    Signature("f2fs", 1024, b"\x10\x20\xf5\xf2"),
    Signature("nilfs2", 1030, b"\x34\x34"),
    Signature("minix", 1040, b"\x7f\x13"),
    Signature("minix", 1040, b"\x8f\x13"),
    Signature("minix", 1040, b"\x68\x24"),
    Signature("minix", 1040, b"\x78\x24"),
    Signature("minix", 1048, b"\x5a\x4d"),
    Signature("swap", 4086, b"SWAPSPACE2"),
    Signature("swap", 4086, b"SWAP-SPACE"),
    Signature("jfs", 32768, b"JFS1"),
    Signature("reiserfs", 65536 + 52, b"ReIsEr"),
    Signature("ufs", 65536 + 1372, b"\x19\x01\x54\x19"),
    Signature("ufs", 8192 + 1372, b"\x54\x19\x01\x00"),
    Signature("ufs", 8192 + 1372, b"\x19\x01\x54\x19"),
)

#: Bytes read from the start for the signatures (the highest offset + 16).
PROBE_SIZE = 65536 + 1400


def sniff(partition: Partition) -> str | None:
    """The family whose signature the partition's first bytes carry, or None."""
    head = partition.read(0, min(PROBE_SIZE, partition.size))
    for sig in SIGNATURES:
        if sig.magic and head[sig.offset : sig.offset + len(sig.magic)] != sig.magic:
            continue
        if sig.extra is not None and not sig.extra(head):
            continue
        if sig.family == "minix" and head[1080:1082] == b"\x53\xef":
            continue  # an ext superblock's s_state can look like a minix magic
        return sig.family
    return None
