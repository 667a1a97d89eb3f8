"""Clonezilla's names: device names from ``-pt.sf`` lines, image file names.

A partition ``/dev/sda1`` is saved as one of (formats.md 5.1)::

    sda1.ext4-ptcl-img.zst[.aa]   partclone, compression suffix
    sda1.dd-ptcl-img.gz[.aa]      partclone.dd: raw bytes
    sda1.ntfs-img[.aa]            ntfsclone; also the old partclone DEV.FS-img
    sda1.dd-img[.aa]              dd, legacy
    sda1 / sda1.aa                partimage
    sda1.000                      partimage's own volumes

Only the first piece of a set is returned; the opener collects the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Clonezilla's compression suffixes (formats.md 5.1), ``uncomp`` for none.
COMP_SUFFIXES = ("gz", "bz2", "lzo", "lzma", "xz", "lzip", "lz", "lrz", "lz4", "zst", "uncomp")

_COMP = "|".join(COMP_SUFFIXES)
#: DEV.FS-ptcl-img.COMP, DEV.FS-img, DEV.dd-img ... ; then an optional first-piece suffix.
_TAIL = re.compile(r"^\.(?P<fs>[A-Za-z0-9+]+)-(?P<ptcl>ptcl-)?img"
                   rf"(?:\.(?P<comp>{_COMP}))?(?:\.(?P<piece>a{{2,}}))?$")
_PARTIMAGE = re.compile(r"^(?:\.(?P<piece>a{2,}|000))?$")


def device_name(path: str) -> str:
    """The name Clonezilla files a device under: ``/dev/cciss/c0d0p1`` -> ``cciss-c0d0p1``."""
    name = path[5:] if path.startswith("/dev/") else path
    if name.startswith("mapper/"):
        name = name[len("mapper/"):]
    return name.replace("/", "-")


def partition_number(disk: str, dev: str) -> int | None:
    """1 for ``sda1`` of ``sda``, 2 for ``nvme0n1p2`` of ``nvme0n1``; None if unrelated."""
    if not dev.startswith(disk):
        return None
    rest = dev[len(disk):]
    if rest.startswith("p") and disk[-1:].isdigit():
        rest = rest[1:]
    return int(rest) if rest.isdigit() else None


def image_for(dev: str, names: Iterable[str]) -> str | None:
    """Which file in the directory is the image of partition ``dev``.

    ``names`` are the directory's file names.  A partclone/ntfsclone/dd
    name is preferred to a bare partimage one; None if there is none.
    """
    best: tuple[int, str] | None = None
    for name in names:
        if not name.startswith(dev):
            continue
        tail = name[len(dev):]
        m = _TAIL.match(tail)
        rank = None
        if m:
            rank = 0 if m.group("ptcl") else 1
        elif _PARTIMAGE.match(tail):
            rank = 2
        if rank is not None and (best is None or (rank, name) < best):
            best = (rank, name)
    return best[1] if best else None


def image_kind(file_name: str, dev: str) -> str:
    """A short word for what wrote ``file_name``: partclone, ntfsclone, dd, partimage."""
    m = _TAIL.match(file_name[len(dev):])
    if m is None:
        return "partimage"
    fs = m.group("fs")
    if fs == "dd":
        return "partclone.dd" if m.group("ptcl") else "dd"
    if fs == "ntfs" and not m.group("ptcl"):
        return "ntfsclone"
    return f"partclone.{fs}"
