"""The ``DISK.img.info`` text: the layout table, identity, notes, commands."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagefs.disks.layout import Slot

if TYPE_CHECKING:
    from imagefs.disks.plan import DiskPlan
    from imagefs.errors import ImageError

_lock = threading.Lock()


@dataclass
class SlotState:
    """What happened when a partition was first read (set once, under its lock)."""

    opened: bool = False
    reader: Any = None
    error: ImageError | None = None
    why: str | None = None


def human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def render(plan: DiskPlan, file_name: str, states: Mapping[str, SlotState]) -> str:
    """The info text of ``plan`` shown as ``file_name``; ``states`` of opened partitions."""
    where = f" of the Clonezilla image {plan.image_name}" if plan.image_name else ""
    lines = [f"{file_name}: the whole disk {plan.name}{where}, as a restore would write it", ""]
    if plan.problem:
        lines += [f"Problem: {plan.problem}.",
                  f"{file_name} is not shown: the disk's metadata is damaged or inconsistent;",
                  "the partition images in this directory can still be used one by one.", ""]
        return "\n".join(lines)
    ss = plan.sector_size
    lines.append(f"Disk:            {human(plan.size)} ({plan.size} bytes), "
                 f"{plan.size // ss} sectors of {ss} bytes")
    table = "GPT" if plan.table == "gpt" else "MBR (dos)"
    ident = f", disk {'GUID' if plan.table == 'gpt' else 'identifier'} {plan.label_id}" \
        if plan.label_id else ""
    lines.append(f"Partition table: {table}{ident}")
    idn = plan.identity
    who = [x for x in (f"model {idn.model}" if idn.model else "",
                       f"serial {idn.serial}" if idn.serial else "",
                       f"machine {idn.machine}" if idn.machine else "") if x]
    lines.append("Identity:        " + ("; ".join(who) + f" (from {', '.join(idn.sources)})"
                                      if who else "not recorded in the save"))
    lines += ["", f"Layout (sectors of {ss} bytes, end inclusive):",
              f"{'start':>12} {'end':>12} {'size':>10}  {'partition, type':<28} "
              f"{'name':<10} what fills it"]
    for start, end, kind, name, fills in _rows(plan, states):
        last = -(-end // ss) - 1
        lines.append(f"{start // ss:>12} {last:>12} {human(end - start):>10}  "
                     f"{kind[:28]:<28} {name[:10]:<10} {fills}")
    if plan.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in plan.notes]
    lines += ["", "Use it:",
              f"  losetup -r -P --show -f {file_name}     "
              "# read-only loop device, partitions as /dev/loopNpM",
              f"  fdisk -l {file_name}",
              f"  qemu-system-x86_64 -snapshot -m 2G -drive file={file_name},format=raw",
              f"  qemu-system-x86_64 -snapshot -m 2G -bios /usr/share/ovmf/OVMF.fd "
              f"-drive file={file_name},format=raw     # UEFI (Debian package ovmf)",
              "  (-snapshot keeps the virtual machine's writes in a temporary file; "
              "this disk is read-only)",
              "  losetup needs root, and root can read a user's own FUSE mount only when it "
              "was made with -o allow_other;",
              f"  an ordinary user can use fdisk, qemu, or: udisksctl loop-setup -r -f {file_name}",
              ""]
    return "\n".join(lines)


def _rows(plan: DiskPlan, states: Mapping[str, SlotState]) -> list[tuple[int, int, str, str, str]]:
    rows: list[tuple[int, int, str, str, str]] = []
    covered: list[tuple[int, int]] = []
    for p in plan.partitions:
        fills = p.fills
        st = states.get(p.device)
        if st is not None and st.opened:
            if st.error is not None:
                fills = f"BROKEN, reads fail: {st.error.problem} ({p.image})"
            elif st.reader is None:
                fills = f"zeros: {p.image or p.device} could not be opened as an image"
            elif st.reader.size < p.size:
                fills += f"; zeros after its {st.reader.size} bytes"
        label = f"{p.device} {p.type_name}" + (" *" if p.bootable else "")
        rows.append((p.start, p.end, label, p.name or (p.fs or ""), fills))
        if p.role != "extended":
            covered.append((p.start, p.end))
    for e in plan.extents:
        if isinstance(e.piece, Slot):
            continue
        covered.append((e.start, e.end))
        if any(p.start <= e.start and e.end <= p.end and p.role == "swap" for p in plan.partitions):
            continue
        rows.append((e.start, e.end, "metadata", "", e.label))
    pos = 0
    for start, end in sorted(covered):
        if start > pos:
            rows.append((pos, start, "gap", "", "zeros: outside every partition (not saved)"))
        pos = max(pos, end)
    if pos < plan.size:
        rows.append((pos, plan.size, "gap", "", "zeros: outside every partition (not saved)"))
    rows.sort(key=lambda r: (r[0], -r[1]))
    return rows
