"""Names of common partition types, for the ``.info`` table only."""

from __future__ import annotations

#: MBR ids of extended partitions (DOS, Windows LBA, Linux).
EXTENDED_TYPES = frozenset({"5", "05", "F", "0F", "85"})
LVM_TYPES = frozenset({"8E", "E6D6D379-F507-44C2-A23C-238F2A3DF928"})
SWAP_TYPES = frozenset({"82", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"})

_NAMES = {
    "1": "FAT12", "4": "FAT16 <32M", "5": "Extended", "6": "FAT16", "7": "HPFS/NTFS/exFAT",
    "B": "W95 FAT32", "C": "W95 FAT32 (LBA)", "E": "W95 FAT16 (LBA)", "F": "W95 Ext'd (LBA)",
    "27": "Hidden NTFS WinRE", "82": "Linux swap", "83": "Linux", "85": "Linux extended",
    "8E": "Linux LVM", "A5": "FreeBSD", "A8": "Darwin UFS", "AF": "HFS / HFS+",
    "EE": "GPT protective", "EF": "EFI (FAT-12/16/32)", "FD": "Linux raid autodetect",
    "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
    "21686148-6449-6E6F-744E-656564454649": "BIOS boot",
    "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
    "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
    "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "Linux swap",
    "E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
    "A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
    "BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
    "933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
    "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
    "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
    "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC": "Windows recovery",
    "48465300-0000-11AA-AA11-00306543ECAC": "Apple HFS+",
    "7C3457EF-0000-11AA-AA11-00306543ECAC": "Apple APFS",
}


def type_name(ptype: str) -> str:
    """A readable name for an MBR id (``83``) or GPT GUID; the code itself if unknown."""
    key = ptype.upper().lstrip("0") or "0" if len(ptype) <= 2 else ptype.upper()
    return _NAMES.get(key, f"type {ptype}")
