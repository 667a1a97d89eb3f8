"""The size of a raw (dd) partition image from the Clonezilla metadata beside it.

A raw stream has no header, so its partition's size comes from the
partition table Clonezilla saved in the same directory (``DISK-pt.sf``,
sfdisk's dump: ``/dev/sda6 : start= 2048, size= 409600, ...`` in sectors
of ``sector-size``), the exact size of the slot the bytes came from.  The
legacy ``DEV-size`` sidecar holds lsblk's rounded text (``"64M"``) and is
only reported, never trusted for the size.
"""

from __future__ import annotations

import os
import re

#: sfdisk dumps are a few KiB; more is not a partition table.
MAX_TABLE = 1 << 20
_LINE = re.compile(r"^\s*/dev/(?P<dev>\S+)\s*:\s*(?P<rest>.*)$")
_SIZE = re.compile(r"\bsize\s*=\s*(\d+)")
_SECTOR = re.compile(r"^\s*sector-size\s*:\s*(\d+)", re.MULTILINE)


def _filename(device: str) -> str:
    """Clonezilla's file name of a device path (``cciss/c0d0p1`` -> ``cciss-c0d0p1``)."""
    if device.startswith("mapper/"):
        device = device[len("mapper/"):]
    return device.replace("/", "-")


def table_size(directory: str, device: str) -> tuple[int, str] | None:
    """(bytes, which file said so) for ``device`` from a ``*-pt.sf`` in ``directory``."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith("-pt.sf"))
    except OSError:
        return None
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                text = f.read(MAX_TABLE)
        except OSError:
            continue
        m = _SECTOR.search(text)
        sector = int(m.group(1)) if m else 512
        for line in text.splitlines():
            lm = _LINE.match(line)
            if lm is None or _filename(lm.group("dev")) != device:
                continue
            sm = _SIZE.search(lm.group("rest"))
            if sm:
                return int(sm.group(1)) * sector, f"the partition table {name}"
    return None


def sidecar_text(directory: str, device: str) -> str | None:
    """The text of Clonezilla's ``DEV-size`` sidecar (legacy dd images), if any."""
    try:
        with open(os.path.join(directory, f"{device}-size"), encoding="utf-8",
                  errors="replace") as f:
            return f.read(64).strip() or None
    except OSError:
        return None
