"""From a Clonezilla savedisk directory's metadata to a disk plan.

:func:`find_disks` reads only the small metadata files (``disk``,
``DISK-pt.sf``, ``DISK-pt.parted``, the MBR/GPT sector dumps, ``PART-ebr``,
``swappt-PART.info``, the LVM lists) and never an image; the hidden sectors
after the MBR, which can be large, are only stat'ed and read on demand.
The result says where every byte of the disk comes from (formats.md 5.5);
:func:`imagefs.disks.image.assemble` turns it into a readable disk.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from imagefs.disks import gpt, mbr
from imagefs.disks.layout import Extent, FileSlice, Painter, Slot
from imagefs.disks.meta import (
    DiskIdentity,
    LvmFacts,
    MetaError,
    MetaReader,
    identity_of,
    lvm_facts,
    swap_info,
)
from imagefs.disks.names import device_name, image_for, image_kind, partition_number
from imagefs.disks.tables import (
    PartedDisk,
    SfEntry,
    TableError,
    parse_chs,
    parse_parted,
    parse_sfdisk,
)
from imagefs.disks.types import EXTENDED_TYPES, LVM_TYPES, SWAP_TYPES, type_name

log = logging.getLogger(__name__)

#: The primary GPT: header, entries, and the file they were read from.
_Primary = tuple[gpt.GptHeader, bytes, str]

#: Roles of a partition: what fills its slot.
IMAGE, SWAP, EXTENDED, LVM_PV, SKIPPED, MISSING = (
    "image", "swap", "extended", "lvm-pv", "skipped", "missing")


@dataclass(frozen=True)
class Partition:
    """One partition of the disk, positions in bytes."""

    number: int
    device: str                 # "sda1", "nvme0n1p2", "loop0p3"
    start: int
    size: int
    type: str                   # MBR id ("83") or GPT type GUID
    type_name: str              # "Linux", "EFI System", ...
    name: str | None = None     # GPT partition name
    uuid: str | None = None     # GPT partition GUID
    bootable: bool = False
    role: str = IMAGE           # IMAGE, SWAP, EXTENDED, LVM_PV, SKIPPED, MISSING
    image: str | None = None    # file name of its image (first piece) when role is IMAGE
    fills: str = ""             # what fills it, one phrase for .info
    fs: str | None = None       # file system from dev-fs.list

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class DiskPlan:
    """Where every byte of one saved disk comes from (no image data read).

    ``problem`` is one sentence when the metadata is damaged or
    inconsistent; then the disk is not assembled and only its info exists.
    """

    name: str                   # "sda"
    directory: str
    size: int = 0               # bytes
    sector_size: int = 512
    table: str = ""             # "gpt" or "dos"
    problem: str | None = None
    partitions: tuple[Partition, ...] = ()
    extents: tuple[Extent, ...] = ()
    label_id: str | None = None
    notes: tuple[str, ...] = ()
    identity: DiskIdentity = field(default_factory=DiskIdentity)
    lvm: LvmFacts = field(default_factory=LvmFacts)
    image_name: str = ""        # the Clonezilla image (directory) name

    @property
    def file_name(self) -> str:
        """The virtual file's name: ``sda.img``."""
        return f"{self.name}.img"

    def partition_devices(self) -> list[str]:
        """The partitions whose images are needed (role IMAGE)."""
        return [p.device for p in self.partitions if p.role == IMAGE]

    def partition(self, device: str) -> Partition | None:
        for p in self.partitions:
            if p.device == device:
                return p
        return None

    def check_sizes(self, sizes: Mapping[str, int]) -> DiskPlan:
        """This plan, with a problem when an image is larger than its slot.

        ``sizes`` maps a partition device to its virtual partition's size,
        as the catalog learns it from the image header (cheap).
        """
        if self.problem:
            return self
        for p in self.partitions:
            size = sizes.get(p.device)
            if p.role == IMAGE and size is not None and size > p.size:
                return replace(self, problem=(
                    f"the image {p.image} holds {size} bytes, more than the {p.size} bytes "
                    f"of partition {p.device} in {self.name}-pt.sf"))
        return self

    def info_text(self, file_name: str | None = None) -> str:
        """The ``.info`` text of this plan (no partition opened)."""
        from imagefs.disks.info import render
        return render(self, file_name or self.file_name, {})


def find_disks(directory: str, names: Iterable[str]) -> list[DiskPlan]:
    """One plan per disk named in the directory's ``disk`` file; [] if there is none.

    ``names`` are the directory's file names (the caller has listed it).
    Reads only metadata files.  A damaged disk gets a plan whose
    ``problem`` says why; a saveparts (``parts`` only) or non-Clonezilla
    directory gives [].
    """
    names = set(names)
    if "disk" not in names:
        return []
    meta = MetaReader(directory, names)
    try:
        disks = meta.text("disk").split()
    except MetaError as exc:
        log.warning("%s", exc)
        return [DiskPlan(name="disk", directory=directory, problem=str(exc))]
    plans = []
    for disk in dict.fromkeys(disks):          # keep order, drop repeats
        if "/" in disk or disk in (".", ".."):
            continue
        try:
            plans.append(_Builder(meta, disk).build())
        except (MetaError, TableError, gpt.GptError, mbr.ChainError) as exc:
            plans.append(DiskPlan(name=disk, directory=directory, problem=str(exc),
                                  image_name=os.path.basename(directory.rstrip("/"))))
    return plans


class _Builder:
    """Builds the plan of one disk; raises a *Error with one sentence on bad metadata."""

    def __init__(self, meta: MetaReader, disk: str) -> None:
        self.meta = meta
        self.disk = disk
        self.notes: list[str] = []
        self.paint = Painter()

    def build(self) -> DiskPlan:
        meta, disk = self.meta, self.disk
        sf_name = f"{disk}-pt.sf"
        if not meta.has(sf_name):
            raise MetaError(f"{sf_name} is missing, so the layout of disk {disk} is unknown")
        sf = parse_sfdisk(meta.text(sf_name), sf_name)
        parted_name = f"{disk}-pt.parted"
        parted = parse_parted(meta.text(parted_name)) if meta.has(parted_name) else None
        ss = sf.sector_size or (parted.logical_sector if parted else None) or 512
        if parted and parted.logical_sector and parted.logical_sector != ss:
            raise TableError(f"{sf_name} says sector size {ss} but {disk}-pt.parted says "
                             f"{parted.logical_sector}")
        self.ss = ss
        self.sf = sf
        geometry = parse_chs(meta.text(f"{disk}-chs.sf")) if meta.has(f"{disk}-chs.sf") else None
        self.geometry = geometry or mbr.DEFAULT_GEOMETRY
        primary = self._gpt_primary() if sf.label == "gpt" else None
        sectors = self._disk_sectors(parted, primary)
        self.sectors = sectors
        lvm = lvm_facts(meta)
        parts = self._partitions(lvm)
        self._check_geometry(parts, primary)
        if sf.label == "gpt":
            assert primary is not None
            self._paint_gpt(*primary)
        else:
            self._paint_mbr(parts)
        slots = []
        for p in parts:
            if p.role == SWAP:
                self._paint_swap(p)
            elif p.role == IMAGE:
                clash = self.paint.overlapping(p.start, p.end)
                if clash is not None:
                    raise TableError(f"{clash.label} overlaps partition {p.device}")
                slots.append(Extent(p.start, Slot(p.device, p.size), p.device))
        extents = self.paint.layout(slots)
        for e in extents:
            if e.end > sectors * ss:
                raise TableError(f"{e.label} ends past the disk's end ({sectors} sectors)")
        return DiskPlan(
            name=disk, directory=meta.directory, size=sectors * ss, sector_size=ss,
            table=sf.label, partitions=tuple(parts), extents=tuple(extents),
            label_id=sf.label_id, notes=tuple(self.notes), identity=identity_of(meta, disk, parted),
            lvm=lvm, image_name=os.path.basename(meta.directory.rstrip("/")))

    # ------------------------------------------------------------ geometry
    def _disk_sectors(self, parted: PartedDisk | None, primary: _Primary | None) -> int:
        if parted and parted.sectors:
            return int(parted.sectors)
        if primary is not None:
            self.notes.append(f"{self.disk}-pt.parted is missing: the disk size comes from "
                              f"the GPT header's backup location")
            return int(primary[0].alternate_lba) + 1
        end = max((e.start + e.size for e in self.sf.entries), default=1)
        self.notes.append(f"{self.disk}-pt.parted is missing: the disk is taken to end with "
                          f"its last partition")
        return end

    def _partitions(self, lvm: LvmFacts) -> list[Partition]:
        meta, ss = self.meta, self.ss
        saved = set(meta.text("parts").split()) if meta.has("parts") else None
        fs_of = meta.dev_fs()
        out = []
        for e in self.sf.entries:
            if e.size == 0:
                continue
            dev = device_name(e.device)
            number = partition_number(self.disk, dev)
            if number is None:
                raise TableError(f"{self.disk}-pt.sf lists {e.device}, which is not a "
                                 f"partition of {self.disk}")
            role, image, fills = self._role(e, dev, saved, lvm)
            out.append(Partition(
                number=number, device=dev, start=e.start * ss, size=e.size * ss, type=e.type,
                type_name=type_name(e.type), name=e.name, uuid=e.uuid, bootable=e.bootable,
                role=role, image=image, fills=fills, fs=fs_of.get(dev)))
        return out

    def _role(self, e: SfEntry, dev: str, saved: set[str] | None,
              lvm: LvmFacts) -> tuple[str, str | None, str]:
        t = e.type.upper()
        if self.sf.label == "dos" and t in EXTENDED_TYPES:
            return EXTENDED, None, "extended partition: its EBRs, the logical partitions"
        image = image_for(dev, self.meta.names)
        if image is not None:
            return IMAGE, image, f"{image} ({image_kind(image, dev)})"
        info = f"swappt-{dev}.info"
        if self.meta.has(info):
            uuid, label = swap_info(self.meta, info)
            return SWAP, None, (f"swap header from {info} (UUID {uuid}, LABEL "
                                f"{label or '(none)'}), then zeros: swap contents are never saved")
        if t in SWAP_TYPES and saved is not None and dev not in saved:
            return SWAP, None, "zeros: swap space (not saved, and no swappt-*.info: run mkswap)"
        if dev in lvm.pv_of:
            vg = lvm.pv_of[dev]
            return LVM_PV, None, lvm.describe_pv(vg, self.meta.names)
        if t in LVM_TYPES:
            return LVM_PV, None, ("zeros: an LVM physical volume; Clonezilla saves logical "
                                  "volumes, not the PV, and lists none for it")
        if saved is not None and dev not in saved:
            return SKIPPED, None, "zeros: the save skipped this partition (it is not in 'parts')"
        return MISSING, None, ("zeros: no image of it is in the directory (its save may have "
                               "failed; see clonezilla-img)")

    def _check_geometry(self, parts: list[Partition], primary: _Primary | None) -> None:
        disk_end = self.sectors * self.ss
        ss = self.ss
        for p in parts:
            if p.start < ss:
                raise TableError(f"partition {p.device} starts at sector {p.start // ss}, on "
                                 f"top of the partition table")
            if p.end > disk_end:
                raise TableError(f"partition {p.device} (sectors {p.start // ss}-"
                                 f"{p.end // ss - 1}) goes past the disk's end at sector "
                                 f"{self.sectors}")
        data = sorted((p for p in parts if p.role != EXTENDED), key=lambda p: p.start)
        for a, b in itertools.pairwise(data):
            if b.start < a.end:
                raise TableError(f"partitions {a.device} and {b.device} overlap (sectors "
                                 f"{b.start // ss}-{min(a.end, b.end) // ss - 1})")
        for ext in (p for p in parts if p.role == EXTENDED):
            for p in parts:
                inside = ext.start < p.start and p.end <= ext.end
                if p is ext:
                    continue
                if p.number >= 5 and not inside:
                    raise TableError(f"logical partition {p.device} is not inside the extended "
                                     f"partition {ext.device}")
                if p.number < 5 and p.start < ext.end and ext.start < p.end:
                    raise TableError(f"partitions {ext.device} and {p.device} overlap")
        if primary is not None:
            header = primary[0]
            for p in parts:
                if p.start // ss < header.first_usable or (p.end - 1) // ss > header.last_usable:
                    raise TableError(f"partition {p.device} lies outside the GPT's usable sectors "
                                     f"{header.first_usable}-{header.last_usable}")
            want = sorted((p.start // ss, p.size // ss) for p in parts)
            have = sorted((e.first_lba, e.last_lba - e.first_lba + 1)
                          for e in gpt.entries_of(header, primary[1]))
            if want != have:
                raise TableError(f"{self.disk}-pt.sf and the saved GPT list different partitions")

    # ----------------------------------------------------------------- GPT
    def _gpt_primary(self) -> _Primary:
        """(header, entries, which file) of the primary GPT, from the dumps."""
        meta, disk, ss = self.meta, self.disk, self.ss
        first = f"{disk}-gpt-1st"
        backup = f"{disk}-gpt.gdisk"
        errors = []
        if meta.has(first):
            data = meta.blob(first, 1 << 20)
            try:
                header = gpt.parse_header(data[ss:], first)
                lo = header.entries_lba * ss
                entries = data[lo:lo + header.entries_bytes]
                if len(entries) == header.entries_bytes:
                    gpt.check_entries(header, entries, first)
                    return header, entries, first
                self.notes.append(f"{first} is too short for the GPT entries of "
                                  f"{ss}-byte sectors; they come from {backup}")
            except gpt.GptError as exc:
                errors.append(str(exc))
        if meta.has(backup):
            data = meta.blob(backup, 1 << 22)
            # sgdisk -b: MBR, primary header, backup header (512 bytes each), entries.
            header = gpt.parse_header(data[512:1024], backup)
            entries = data[1536:1536 + header.entries_bytes]
            gpt.check_entries(header, entries, backup)
            return header, entries, backup
        if errors:
            raise gpt.GptError(errors[0])
        raise MetaError(f"the GPT of disk {disk} was not saved ({first} and {backup} are missing)")

    def _paint_gpt(self, header: gpt.GptHeader, entries: bytes, origin: str) -> None:
        meta, disk, ss, n = self.meta, self.disk, self.ss, self.sectors
        if header.my_lba != 1 or header.alternate_lba >= n:
            raise TableError(f"the GPT header in {origin} puts its copies at sectors "
                             f"{header.my_lba} and {header.alternate_lba}, not on a disk of "
                             f"{n} sectors")
        if meta.has(f"{disk}-mbr"):
            self.paint.paint(0, meta.blob(f"{disk}-mbr", 512)[:512], "protective MBR")
        elif origin.endswith(".gdisk"):
            self.paint.paint(0, meta.blob(origin, 1 << 22)[:512], "protective MBR")
        padded = entries.ljust(header.entry_sectors(ss) * ss, b"\0")
        self.paint.paint(ss, header.raw.ljust(ss, b"\0"), "primary GPT header")
        self.paint.paint(header.entries_lba * ss, padded, "primary GPT entries")
        first = f"{disk}-gpt-1st"
        if meta.has(first):
            # Real disk bytes (dd bs=512 count=34 from sector 0): they win.
            size = meta.size(first)
            self.paint.paint(0, meta.blob(first, 1 << 20)[:size], first)
        b_lba, b_header = gpt.backup_header(header, ss)
        self.paint.paint(b_lba * ss, padded, "backup GPT entries")
        self.paint.paint(header.alternate_lba * ss, b_header, "backup GPT header")
        second = f"{disk}-gpt-2nd"
        used = self._gpt_second(second, header) if meta.has(second) else False
        if not used:
            why = (f"{second} is missing" if not meta.has(second) else
                   f"{second} holds {meta.size(second) // 512} of the 33 sectors")
            self.notes.append(f"backup GPT rebuilt from the primary one with fresh CRCs ({why})")

    def _gpt_second(self, name: str, primary: gpt.GptHeader) -> bool:
        """Lay the saved backup-GPT sectors at the disk's end if they are that.

        Only with 512-byte sectors (Clonezilla's dd uses bs=512 with a
        sector count from parted, which is wrong for other sizes) and only
        when its last sector is the valid backup header of this table.
        """
        meta, ss = self.meta, self.ss
        size = meta.size(name)
        if ss != 512 or size % 512 or not 512 <= size <= 33 * 512:
            self.notes.append(f"{name} ({size} bytes) does not fit {ss}-byte sectors: not used")
            return False
        data = meta.blob(name, 33 * 512)
        try:
            h = gpt.parse_header(data[-512:], name)
        except gpt.GptError:
            self.notes.append(f"{name} does not end with a valid backup GPT header: not used")
            return False
        if h.my_lba != self.sectors - 1 or h.entries_crc != primary.entries_crc:
            self.notes.append(f"{name} is not the backup of this GPT: not used")
            return False
        self.paint.paint(self.sectors * 512 - size, data, name)
        return size == 33 * 512

    # ----------------------------------------------------------------- MBR
    def _paint_mbr(self, parts: list[Partition]) -> None:
        meta, disk, ss = self.meta, self.disk, self.ss
        name = f"{disk}-mbr"
        if meta.has(name):
            self.paint.paint(0, meta.blob(name, 512)[:512].ljust(ss, b"\0")[:512], name)
        else:
            self.notes.append(f"{name} is missing: the MBR is rebuilt from {disk}-pt.sf "
                              f"without boot code")
            self.paint.paint(0, self._mbr_from_sf(parts), "MBR (rebuilt)")
        hidden = f"{disk}-hidden-data-after-mbr"
        if meta.has(hidden):
            size = meta.size(hidden)
            first = min((p.start for p in parts), default=self.sectors * ss)
            if ss + size > first:
                raise TableError(f"{hidden} ({size} bytes) runs into the first partition")
            self.paint.paint(ss, FileSlice(meta.path(hidden), 0, size), hidden)
        for ext in (p for p in parts if p.role == EXTENDED):
            self._paint_ebrs(ext, [p for p in parts if ext.start < p.start < ext.end])

    def _mbr_from_sf(self, parts: list[Partition]) -> bytes:
        ss = self.ss
        entries = [mbr.entry(int(p.type, 16), p.start // ss, p.size // ss, p.start // ss,
                             self.geometry, p.bootable)
                   for p in sorted(parts, key=lambda p: p.number) if p.number <= 4]
        sector = bytearray(mbr.sector(entries, 512))
        if self.sf.label_id and self.sf.label_id.lower().startswith("0x"):
            sector[440:444] = int(self.sf.label_id, 16).to_bytes(4, "little")
        return bytes(sector)

    def _paint_ebrs(self, ext: Partition, logicals: list[Partition]) -> None:
        meta, ss = self.meta, self.ss
        saved_name = f"{ext.device}-ebr"
        saved = meta.blob(saved_name, 512)[:512] if meta.has(saved_name) else None
        first_gap = max((1 << 20) // ss, 1)       # libfdisk's 1 MiB grain
        if logicals:
            first_gap = min(p.start for p in logicals) // ss - ext.start // ss
        if saved is not None and len(saved) == 512 and saved[510:512] == mbr.BOOT_SIGNATURE:
            rel = int.from_bytes(saved[446 + 8:446 + 12], "little")
            if rel:
                first_gap = rel
        chain = mbr.ebr_chain(ext.start // ss, ext.size // ss,
                              [mbr.Logical(p.start // ss, p.size // ss, int(p.type, 16), p.bootable)
                               for p in logicals], first_gap, self.geometry, ss)
        for lba, data in chain:
            self.paint.paint(lba * ss, data, f"EBR of {ext.device} (synthesised)")
        if saved is not None:
            self.paint.paint(ext.start, saved, saved_name)
        elif logicals:
            self.notes.append(f"{saved_name} is missing: the first EBR is synthesised too")
        if len(chain) > 1:
            self.notes.append(f"the EBRs of {', '.join(p.device for p in logicals[1:])} were not "
                              f"saved by Clonezilla; they are synthesised from {self.disk}-pt.sf")

    # ---------------------------------------------------------------- swap
    def _paint_swap(self, p: Partition) -> None:
        info = f"swappt-{p.device}.info"
        if not self.meta.has(info):
            return
        uuid, label = swap_info(self.meta, info)
        try:
            head = mbr.swap_header(p.size, uuid, label)
        except ValueError:
            raise MetaError(f"{info} holds no valid UUID ({uuid!r})") from None
        self.paint.paint(p.start, head, f"swap header of {p.device}")
