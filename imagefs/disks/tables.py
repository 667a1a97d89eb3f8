"""Parsers for the partition-table text dumps of a Clonezilla disk save.

``DISK-pt.sf`` is ``sfdisk -d`` output and the geometry to use;
``DISK-pt.parted`` (``parted -s DISK unit s print``) gives the disk's size in
sectors and its sector size, which ``sfdisk -d`` does not record;
``DISK-chs.sf`` the BIOS geometry that MBR entries encode their CHS fields
with (formats.md 5.4).  Everything here works on text already read and
raises :class:`TableError` with a sentence naming the line that is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class TableError(ValueError):
    """A dump does not parse; ``str()`` is one sentence for DiskPlan.problem."""


@dataclass(frozen=True)
class SfEntry:
    """One partition line of ``sfdisk -d``; start and size in sectors."""

    device: str            # "/dev/sda1" as written
    start: int
    size: int
    type: str              # "83", "5" (MBR id, hex without 0x) or a GPT type GUID
    bootable: bool = False
    uuid: str | None = None
    name: str | None = None
    attrs: str | None = None


@dataclass
class SfTable:
    """The whole ``sfdisk -d`` dump."""

    label: str                             # "gpt" or "dos"
    label_id: str | None = None
    device: str | None = None
    first_lba: int | None = None
    last_lba: int | None = None
    sector_size: int | None = None
    table_length: int | None = None        # GPT entries (sfdisk >= 2.30 writes it)
    entries: list[SfEntry] = field(default_factory=list)


_HEADER = re.compile(r"^(?P<key>[a-z-]+):\s*(?P<value>.*)$")
_PART = re.compile(r"^(?P<dev>\S+)\s*:\s*(?P<rest>.*)$")
# key=value, the value either "quoted (with \" escapes)" or up to the next comma
_FIELD = re.compile(r'\s*(?P<key>[A-Za-z-]+)'
                    r'(?:\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|[^,]*))?\s*(?:,|$)')


def parse_sfdisk(text: str, filename: str) -> SfTable:
    """Parse an ``sfdisk -d`` dump (util-linux 2.26 and later, and the older ``Id=`` form)."""
    headers: dict[str, str] = {}
    entries: list[SfEntry] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _HEADER.match(line)
        if m and not entries and not line.startswith("/"):
            headers[m.group("key")] = m.group("value").strip()
            continue
        m = _PART.match(line)
        if m is None:
            raise TableError(f"{filename} line {lineno} does not parse: {line[:60]!r}")
        entries.append(_entry(m.group("dev"), m.group("rest"), filename, lineno))
    label = headers.get("label", "dos" if entries else "")
    if label not in ("gpt", "dos"):
        raise TableError(f"{filename} has no partition table label 'gpt' or 'dos'"
                         + (f" (label: {label})" if label else ""))
    if headers.get("unit", "sectors") != "sectors":
        raise TableError(f"{filename} uses unit {headers['unit']!r}, not sectors")
    table = SfTable(label=label, label_id=headers.get("label-id"), device=headers.get("device"))
    for key, attr in (("first-lba", "first_lba"), ("last-lba", "last_lba"),
                      ("sector-size", "sector_size"), ("table-length", "table_length")):
        if key in headers:
            try:
                setattr(table, attr, int(headers[key]))
            except ValueError:
                raise TableError(f"{filename}: {key} is not a number: {headers[key]!r}") from None
    if table.sector_size is not None and table.sector_size not in (512, 1024, 2048, 4096):
        raise TableError(f"{filename}: sector-size {table.sector_size} is not a disk sector size")
    table.entries = entries
    return table


def _entry(dev: str, rest: str, filename: str, lineno: int) -> SfEntry:
    fields: dict[str, str | None] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _FIELD.match(rest, pos)
        if m is None or m.end() == pos:
            raise TableError(f"{filename} line {lineno} does not parse near {rest[pos:pos + 30]!r}")
        value = m.group("value")
        if value is not None:
            value = value.strip()
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
        fields[m.group("key").lower()] = value
        pos = m.end()
    try:
        start = int(fields.get("start") or "")
        size = int(fields.get("size") or "")
    except ValueError:
        raise TableError(f"{filename} line {lineno} ({dev}) has no numeric start= and "
                         "size=") from None
    if start < 0 or size < 0:
        raise TableError(f"{filename} line {lineno} ({dev}) has a negative start or size")
    ptype = fields.get("type") or fields.get("id") or ""
    if ptype.lower().startswith("0x"):
        ptype = ptype[2:]
    ptype = ptype.upper() if len(ptype) > 2 else ptype
    return SfEntry(device=dev, start=start, size=size, type=ptype,
                   bootable="bootable" in fields, uuid=fields.get("uuid"),
                   name=fields.get("name"), attrs=fields.get("attrs"))


@dataclass(frozen=True)
class PartedDisk:
    """What ``parted -s DISK unit s print`` says about the disk."""

    sectors: int | None
    logical_sector: int | None
    physical_sector: int | None
    table: str | None          # "gpt", "msdos", ...
    model: str | None


def parse_parted(text: str) -> PartedDisk:
    """The disk line, sector sizes and table type of a ``parted unit s print``."""
    sectors = logical = physical = None
    table = model = None
    for line in text.splitlines():
        m = re.match(r"^Disk /\S*:\s*(\d+)s\s*$", line.strip())
        if m:
            sectors = int(m.group(1))
        m = re.match(r"^Sector size \(logical/physical\):\s*(\d+)B/(\d+)B", line.strip())
        if m:
            logical, physical = int(m.group(1)), int(m.group(2))
        m = re.match(r"^Partition Table:\s*(\S+)", line.strip())
        if m:
            table = m.group(1)
        m = re.match(r"^Model:\s*(.*)$", line.strip())
        if m:
            model = m.group(1).strip() or None
    return PartedDisk(sectors, logical, physical, table, model)


def parse_chs(text: str) -> tuple[int, int] | None:
    """(heads, sectors per track) from ``DISK-chs.sf``; None if absent or odd."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(cylinders|heads|sectors)\s*=\s*(\d+)", line)
        if m:
            values[m.group(1)] = int(m.group(2))
    heads, sectors = values.get("heads"), values.get("sectors")
    if heads and sectors and 0 < heads <= 255 and 0 < sectors <= 63:
        return heads, sectors
    return None
