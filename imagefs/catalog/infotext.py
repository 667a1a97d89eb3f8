"""The header dump: the text of ``imagefs info`` and of ``VNAME.info`` files.

One function renders it for good and broken images alike, so the command
line and the mount always say the same thing.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

from imagefs.blockio.opener import StreamInfo
from imagefs.formats.base import BlockImage, ImageHeader
from imagefs.services.units import human_size
from imagefs.version import __version__

# Which kernel / fsck command fits a file-system type string from a header.
_FSCK = {
    "EXTFS": "e2fsck -fn", "ext2fs": "e2fsck -fn", "ext3fs": "e2fsck -fn",
    "XFS": "xfs_repair -n -f", "BTRFS": "btrfs check --readonly",
    "NTFS": "ntfsfix -n", "FAT12": "fsck.fat -n", "FAT16": "fsck.fat -n",
    "FAT32": "fsck.fat -n", "fat16": "fsck.fat -n", "fat32": "fsck.fat -n",
    "EXFAT": "fsck.exfat -n",
}
_MOUNT_TYPE = {"NTFS": "ntfs-3g", "FAT12": "vfat", "FAT16": "vfat", "FAT32": "vfat",
               "fat16": "vfat", "fat32": "vfat", "EXFAT": "exfat"}


def _line(label: str, value: object) -> str:
    return f"{label + ':':<28}{value}"


def render_info(header: ImageHeader | None, stream: StreamInfo | None, *,
                image: BlockImage | None = None, error: str | None = None,
                virtual_path: str | None = None, index_state: str | None = None,
                extra: Sequence[tuple[str, str]] = ()) -> str:
    """Human-readable description of one image (``error`` for broken ones)."""
    lines = [f"imagefs {__version__} image information"]
    if stream is not None:
        pieces = stream.pieces
        if len(pieces) == 1:
            lines.append(_line("source", pieces[0]))
        else:
            lines.append(_line("source", f"{len(pieces)} pieces ({stream.piece_kind}), "
                               f"{pieces[0]} .. {os.path.basename(pieces[-1])}"))
        lines.append(_line("compression", stream.codec or "none"))
        if stream.codec:
            lines.append(_line("index", index_state or "not built yet (built on first read)"))
    if error:
        lines.append(_line("status", "BROKEN"))
        lines.append(_line("error", error))
        lines.append("The virtual partition of this image is not readable.")
        return "\n".join(lines) + "\n"
    assert header is not None
    lines += [
        _line("format", f"{header.format_name} (image format {header.format_version})"),
        _line("file system", header.fs_type or "unknown"),
        _line("device size", human_size(header.device_size)),
        _line("block size", f"{header.block_size} bytes"),
        _line("total blocks", header.total_blocks),
        _line("used blocks", header.used_blocks if header.used_blocks is not None else "unknown"),
        _line("checksum", header.checksum),
    ]
    for label, value in header.fields():
        lines.append(_line(label, value))
    if image is not None:
        lines.append(_line("stored blocks (bitmap)", image.stored_blocks))
        lines.append(_line("stored data", human_size(image.stored_blocks * header.block_size)))
    for note in header.notes:
        lines.append(_line("note", note))
    if header.damage:
        lines.append(_line("status", "DAMAGED: " + header.damage))
    else:
        lines.append(_line("status", "ok"))
    if virtual_path:
        q = shlex.quote(virtual_path)
        fsck = _FSCK.get(header.fs_type)
        if fsck:
            lines.append(_line("check it", f"{fsck} {q}"))
        if header.fs_type == "NTFS":
            lines.append(_line("mount it", f"ntfs-3g -o ro {q} /mnt/point"))
        else:
            fstype = _MOUNT_TYPE.get(header.fs_type)
            opt = f" -t {fstype}" if fstype else ""
            lines.append(_line("mount it", f"sudo mount{opt} -o loop,ro {q} /mnt/point"))
    for label, value in extra:
        lines.append(_line(label, value))
    return "\n".join(lines) + "\n"
