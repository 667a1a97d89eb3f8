"""The whole-disk view of a Clonezilla savedisk directory (``DISK.img``).

This layer sits between blockio and the catalog: it imports only
:mod:`imagefs.errors` and its own modules, and takes the partitions as any
object with the :class:`PartitionReader` shape (``size``, ``read``,
``read_into``, thread-safe) -- :class:`imagefs.blockio.VirtualPartition` is
one.  Nothing below it imports it.

Two steps, both lazy::

    plans = find_disks(directory, os.listdir(directory))   # metadata only
    for plan in plans:
        plan.file_name            # "sda.img"
        plan.problem              # None, or one sentence: no DISK.img then
        plan.partition_devices()  # ["sda1", "sda2", ...]: images needed
        plan.partition("sda1").image   # "sda1.ext4-ptcl-img.zst" (first piece)
        plan = plan.check_sizes({"sda1": header.device_size, ...})
        disk = assemble(plan, open_partition)   # open_partition(dev) -> reader | None
        disk.read_into(offset, memoryview)      # one call across partitions
        disk.info_text()                        # the DISK.img.info text

``open_partition(device)`` is called on the first read touching that
partition, once; None means "no image: zeros"; an ImageError makes reads of
that partition's range raise it (EIO at the FUSE boundary) while the rest
of the disk reads.

Modules: ``plan`` (find_disks, DiskPlan, Partition), ``image`` (assemble,
DiskImage), ``tables`` (sfdisk/parted text), ``gpt``, ``mbr`` (EBR chain,
CHS, swap header), ``names`` (Clonezilla file names), ``meta`` (metadata
files, LVM and identity facts), ``layout`` (the painted byte layout),
``info`` (the .info text), ``types`` (partition type names).
"""

from __future__ import annotations

from imagefs.disks.image import DiskImage, OpenPartition, PartitionReader, assemble
from imagefs.disks.names import image_for
from imagefs.disks.plan import (
                                EXTENDED,
                                IMAGE,
                                LVM_PV,
                                MISSING,
                                SKIPPED,
                                SWAP,
                                DiskPlan,
                                Partition,
                                find_disks,
)

__all__ = ["DiskImage", "DiskPlan", "OpenPartition", "Partition", "PartitionReader",
           "assemble", "find_disks", "image_for",
           "IMAGE", "SWAP", "EXTENDED", "LVM_PV", "SKIPPED", "MISSING"]
