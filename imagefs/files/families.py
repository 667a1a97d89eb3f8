"""Which file system an image header names, from its fs-type word alone (no I/O).

partclone, ntfsclone and partimage spell file systems differently; this
table maps each spelling to a family, and says which families have a
backend.  It is the cheap half of :mod:`imagefs.files.detect` (which also
checks the bytes): listing a directory of images decides from it whether
each image gets a ``VNAME.files`` without loading the files layer.
"""

from __future__ import annotations

#: Families with a backend.
READABLE = ("ext", "xfs", "btrfs", "ntfs", "fat", "exfat")

#: What a family is called in a sentence.
TITLES = {
    "ext": "ext2/3/4",
    "xfs": "xfs",
    "btrfs": "btrfs",
    "ntfs": "NTFS",
    "fat": "FAT",
    "exfat": "exFAT",
    "hfsplus": "HFS+",
    "hfs": "HFS",
    "apfs": "APFS",
    "f2fs": "f2fs",
    "jfs": "JFS",
    "reiserfs": "ReiserFS",
    "reiser4": "Reiser4",
    "nilfs2": "NILFS2",
    "minix": "Minix",
    "ufs": "UFS",
    "vmfs": "VMFS",
    "swap": "Linux swap",
    "luks": "LUKS (encrypted)",
    "bitlocker": "BitLocker (encrypted)",
    "squashfs": "SquashFS",
    "hpfs": "HPFS",
    "afs": "AFS",
    "lvm": "an LVM physical volume",
}

#: Header fs-type strings, lower-cased, to a family; None means "raw data:
#: look at the bytes".  partclone: EXTFS FAT12/16/32 NTFS XFS BTRFS EXFAT
#: "HFS Plus" ...; ntfsclone: NTFS; partimage: ext2fs ext3fs fat16 fat32 ntfs ...
HEADER_FAMILIES: dict[str, str | None] = {
    "extfs": "ext",
    "ext2": "ext",
    "ext3": "ext",
    "ext4": "ext",
    "ext2fs": "ext",
    "ext3fs": "ext",
    "ext4fs": "ext",
    "xfs": "xfs",
    "btrfs": "btrfs",
    "ntfs": "ntfs",
    "fat": "fat",
    "fat12": "fat",
    "fat16": "fat",
    "fat32": "fat",
    "vfat": "fat",
    "fat16lba": "fat",
    "fat32lba": "fat",
    "exfat": "exfat",
    "hfs plus": "hfsplus",
    "hfsplus": "hfsplus",
    "hfs+": "hfsplus",
    "hfs": "hfs",
    "apfs": "apfs",
    "f2fs": "f2fs",
    "jfs": "jfs",
    "reiserfs": "reiserfs",
    "reiser4": "reiser4",
    "nilfs": "nilfs2",
    "nilfs2": "nilfs2",
    "minix": "minix",
    "ufs": "ufs",
    "vmfs": "vmfs",
    "hpfs": "hpfs",
    "afs": "afs",
    "swap": "swap",
    "raw": None,
    "dd": None,
    "imager": None,
    "": None,
    "unknown": None,
}


def header_family(fs_type: str | None) -> tuple[bool, str | None]:
    """``(known, family)``: known=False for strings this table has never seen."""
    if fs_type is None:
        return True, None
    key = fs_type.strip().lower()
    if key in HEADER_FAMILIES:
        return True, HEADER_FAMILIES[key]
    for prefix, fam in (
        ("reiserfs", "reiserfs"),
        ("fat16", "fat"),
        ("fat32", "fat"),
        ("hfs", "hfsplus"),
    ):
        if key.startswith(prefix):
            return True, fam
    return False, None
