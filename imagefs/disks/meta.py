"""Reading a Clonezilla directory's small metadata files.

:class:`MetaReader` is the only thing in the disks layer that opens files
while a plan is made; it refuses anything larger than a metadata file can
be, so a stray huge file cannot make listing a directory slow.  The
helpers below turn the informational files (``swappt-*.info``, the LVM
lists, ``blkdev.list``, ``blkdev.json``, ``Info-dmi.txt``) into facts.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imagefs.disks.tables import PartedDisk

#: Text dumps are a few KiB; 1 MiB leaves room for disks with many partitions.
TEXT_LIMIT = 1 << 20


class MetaError(ValueError):
    """A metadata file is missing, unreadable or absurd; one sentence."""


class MetaReader:
    """Reads metadata files of one directory whose names the caller listed."""

    def __init__(self, directory: str, names: Iterable[str]) -> None:
        self.directory = directory
        self.names = frozenset(names)

    def has(self, name: str) -> bool:
        return name in self.names

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def size(self, name: str) -> int:
        try:
            return os.stat(self.path(name)).st_size
        except OSError as exc:
            raise MetaError(f"{name} cannot be read: {exc.strerror}") from None

    def blob(self, name: str, limit: int) -> bytes:
        """The whole file, which must not exceed ``limit`` bytes."""
        try:
            with open(self.path(name), "rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise MetaError(f"{name} cannot be read: {exc.strerror}") from None
        if len(data) > limit:
            raise MetaError(f"{name} is larger than {limit} bytes, too large for what "
                            f"Clonezilla writes there")
        return data

    def text(self, name: str) -> str:
        return self.blob(name, TEXT_LIMIT).decode("utf-8", errors="replace")

    def dev_fs(self) -> dict[str, str]:
        """Partition -> file system from ``dev-fs.list`` (``/dev/sda1 ext4 512M``)."""
        out: dict[str, str] = {}
        if not self.has("dev-fs.list"):
            return out
        for line in self.text("dev-fs.list").splitlines():
            words = line.split()
            if len(words) >= 2 and words[0].startswith("/dev/"):
                out[words[0][5:].replace("/", "-")] = words[1]
        return out


_KV = re.compile(r'^\s*(UUID|LABEL)="((?:[^"\\]|\\.)*)"')


def swap_info(meta: MetaReader, name: str) -> tuple[str | None, str | None]:
    """(UUID, LABEL) from ``swappt-PART.info``; absent ones are None."""
    values: dict[str, str] = {}
    for line in meta.text(name).splitlines():
        m = _KV.match(line)
        if m:
            values[m.group(1)] = m.group(2)
    return values.get("UUID") or None, values.get("LABEL") or None


@dataclass(frozen=True)
class LvmFacts:
    """What the save recorded about LVM: PV -> VG, and the LVs of each VG."""

    pv_of: dict[str, str] = field(default_factory=dict)          # "sda3" -> "vg0"
    lvs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # vg -> [(lv, text)]

    def describe_pv(self, vg: str, names: Iterable[str]) -> str:
        """What fills a PV's slot (zeros) and where its LVs went, for .info."""
        from imagefs.disks.names import image_for
        names = list(names)
        parts = []
        for lv, text in self.lvs.get(vg, []):
            image = image_for(f"{vg}-{lv}", names)
            if image:
                parts.append(f"{vg}/{lv} is its own image {image}")
            else:
                parts.append(f"{vg}/{lv} was not saved ({text or 'no image'})")
        lvs = "; ".join(parts) if parts else "no logical volume of it is listed"
        return (f"zeros: LVM physical volume of VG {vg}; Clonezilla saves logical volumes, "
                f"not the PV: {lvs}")


def lvm_facts(meta: MetaReader) -> LvmFacts:
    facts = LvmFacts()
    if meta.has("lvm_vg_dev.list"):
        for line in meta.text("lvm_vg_dev.list").splitlines():
            words = line.split()
            if len(words) >= 2 and words[1].startswith("/dev/"):
                facts.pv_of[words[1][5:].replace("/", "-")] = words[0]
    if meta.has("lvm_logv.list"):
        for line in meta.text("lvm_logv.list").splitlines():
            words = line.split(None, 1)
            m = re.match(r"^/dev/([^/]+)/([^/]+)$", words[0]) if words else None
            if m:
                text = words[1].strip() if len(words) > 1 else ""
                facts.lvs.setdefault(m.group(1), []).append((m.group(2), text[:120]))
    return facts


@dataclass(frozen=True)
class DiskIdentity:
    """Who the disk and machine were, as far as the save recorded it."""

    model: str | None = None
    serial: str | None = None
    machine: str | None = None       # "Manufacturer Product (serial S)" from Info-dmi.txt
    sources: tuple[str, ...] = ()    # the files these came from


def identity_of(meta: MetaReader, disk: str, parted: PartedDisk | None) -> DiskIdentity:
    model = serial = machine = None
    sources = []
    try:
        if meta.has("blkdev.json"):
            data = json.loads(meta.text("blkdev.json"))
            for dev in _walk(data.get("blockdevices", [])):
                if dev.get("name") == disk or dev.get("kname") == disk:
                    model = (dev.get("model") or "").strip() or None
                    serial = (dev.get("serial") or "").strip() or None
                    sources.append("blkdev.json")
                    break
    except (ValueError, AttributeError, MetaError):
        pass
    if model is None and meta.has("blkdev.list"):
        model = _lsblk_model(meta.text("blkdev.list"), disk)
        if model:
            sources.append("blkdev.list")
    if model is None and parted is not None and parted.model:
        model = parted.model
        sources.append(f"{disk}-pt.parted")
    if meta.has("Info-dmi.txt"):
        machine = _dmi_machine(meta.text("Info-dmi.txt"))
        if machine:
            sources.append("Info-dmi.txt")
    return DiskIdentity(model, serial, machine, tuple(sources))


def _walk(devs: list) -> Iterable[dict]:
    for d in devs:
        if isinstance(d, dict):
            yield d
            yield from _walk(d.get("children") or [])


def _lsblk_model(text: str, disk: str) -> str | None:
    lines = text.splitlines()
    if not lines or "MODEL" not in lines[0]:
        return None
    col = lines[0].index("MODEL")
    for line in lines[1:]:
        if line.split()[:1] == [disk]:
            return line[col:].strip() or None
    return None


def _dmi_machine(text: str) -> str | None:
    section = None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = line.strip()
            continue
        if section == "System Information" and ":" in line:
            key, _, value = line.strip().partition(":")
            fields[key] = value.strip()
    if not fields:
        return None
    text = " ".join(v for v in (fields.get("Manufacturer"), fields.get("Product Name")) if v)
    if fields.get("Serial Number"):
        text += f" (serial {fields['Serial Number']})"
    return text or None
