"""``DISK.img`` and ``DISK.img.info``: the whole-disk view inside a savedisk directory.

When a listed directory holds Clonezilla's ``disk`` file, the disks layer
(:mod:`imagefs.disks`) reads the small metadata files into a plan per saved
disk.  Each plan becomes a :class:`DiskEntry` whose partitions are the
directory's own image entries: opened on the first read that touches them,
through the same virtual partitions (and shared cache) as ``VNAME``.  A plan
with a problem shows only its ``.info``, which names the problem.

Threading: ``DiskEntry._lock`` guards the assembled disk, built once on the
first open; partition readers are opened by the disks layer under its own
per-partition locks.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from typing import TYPE_CHECKING

from imagefs.catalog.attrs import Attr
from imagefs.catalog.entry import EntryReader, ImageEntry
from imagefs.catalog.nodes import FileLikeNode, OpenFile, copying_reader
from imagefs.errors import SourceError

if TYPE_CHECKING:
    from imagefs.catalog.tree import Catalog
    from imagefs.disks import DiskImage, DiskPlan

# imagefs.disks is imported where a savedisk directory is met: most trees have
# none, and the layer's import cost a tenth of a mount's start-up (14 ms).

log = logging.getLogger(__name__)

#: Clonezilla's marker of a whole-disk image directory (docs/formats.md 5.4).
DISK_MARKER = "disk"


class DiskEntry:
    """One saved disk of a Clonezilla savedisk directory."""

    def __init__(self, catalog: Catalog, plan: DiskPlan, images: dict[str, ImageEntry],
                 st: os.stat_result) -> None:
        self.catalog = catalog
        self.plan = plan
        self.vpath = ""                 # set when named
        self.images = images            # device name -> the image entry that fills it
        self.st = st                    # stat of the ``disk`` file (owner, times, mode)
        self._disk: DiskImage | None = None
        self._lock = threading.Lock()

    @property
    def broken(self) -> bool:
        return self.plan.problem is not None

    def disk(self) -> DiskImage:
        """The assembled disk (its partitions open on first read)."""
        disk = self._disk
        if disk is None:
            from imagefs.disks import assemble
            with self._lock:
                if self._disk is None:
                    self._disk = assemble(self.plan, self._open_partition)
                disk = self._disk
        return disk

    def _open_partition(self, device: str) -> EntryReader | None:
        entry = self.images.get(device)
        if entry is None:
            return None
        return entry.reader()           # raises ImageError for a broken image

    def stored_bytes(self) -> int:
        """Bytes of data the backups hold for this disk (for ``st_blocks``/du)."""
        return sum(entry.stored_bytes() for entry in self.images.values())

    def info_text(self) -> bytes:
        mnt = self.catalog.mountpoint
        path = os.path.join(mnt, self.vpath.lstrip("/")) if mnt else self.vpath
        disk = self._disk
        text = disk.info_text(path) if disk is not None else self.plan.info_text(path)
        return text.encode("utf-8", "surrogateescape")

    def close(self) -> None:
        with self._lock:
            disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()


class DiskNode(FileLikeNode):
    """``DISK.img``: the disk as a restore would write it, read-only."""

    def __init__(self, entry: DiskEntry) -> None:
        super().__init__(entry.vpath)
        self.entry = entry

    def attr(self) -> Attr:
        e = self.entry
        return e.catalog.attrs.mirror(e.st, size=e.plan.size,
                                      blocks=-(-e.stored_bytes() // 512))

    def open(self) -> OpenFile:
        disk = self.entry.disk()
        return OpenFile(disk.read, disk.read_into)


class DiskInfoNode(FileLikeNode):
    """``DISK.img.info``: the layout, the images that fill it, the commands to use it."""

    def __init__(self, entry: DiskEntry, vpath: str) -> None:
        super().__init__(vpath)
        self.entry = entry

    def attr(self) -> Attr:
        size = len(self.entry.info_text())
        return self.entry.catalog.attrs.mirror(self.entry.st, size=size,
                                               blocks=-(-size // 512))

    def open(self) -> OpenFile:
        text = self.entry.info_text()

        def read(offset: int, size: int) -> bytes:
            return text[offset:offset + size]
        return OpenFile(read, copying_reader(read), keep_cache=False, direct_io=True)


def disks_in(catalog: Catalog, directory: str, files: dict[str, tuple[str, os.stat_result]],
             images: dict[str, ImageEntry]) -> list[DiskEntry]:
    """The disk entries of a listed directory (none unless it has a ``disk`` file).

    ``files`` are the directory's regular files (name -> real path, stat);
    ``images`` the image entries found among them, by source name.  Reads
    only the metadata files.
    """
    marker = files.get(DISK_MARKER)
    if marker is None or not stat.S_ISREG(marker[1].st_mode):
        return []
    from imagefs.disks import find_disks

    try:
        plans = find_disks(directory, list(files))
    except (OSError, SourceError) as exc:
        log.warning("%s: cannot read the disk metadata: %s", directory, exc)
        return []
    out = []
    for plan in plans:
        by_device: dict[str, ImageEntry] = {}
        sizes: dict[str, int] = {}
        for device in plan.partition_devices():
            part = plan.partition(device)
            entry = images.get(part.image) if part is not None and part.image else None
            if entry is None:
                continue
            by_device[device] = entry
            if entry.header is not None and entry.error is None:
                sizes[device] = entry.header.device_size
        plan = plan.check_sizes(sizes)
        out.append(DiskEntry(catalog, plan, by_device, marker[1]))
    return out
