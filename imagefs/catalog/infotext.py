"""The header dump: the text of ``imagefs info`` and of ``VNAME.info`` files.

One function renders it for good and broken images alike, so the command
line and the mount always say the same thing.  The commands it suggests
are the ones that work for the reader: a mount an ordinary user made
without allow_other is unreadable to root, so a loop mount is replaced by
what works without root.
"""

from __future__ import annotations

import os
import shlex
import shutil
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


#: Where tools are looked up for the ordinary user's commands: fsck tools
#: live in /usr/sbin, which is not on an ordinary user's PATH on Debian.
_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_EXT = ("EXTFS", "ext2fs", "ext3fs")
_FAT = ("FAT12", "FAT16", "FAT32", "fat16", "fat32")


def _line(label: str, value: object) -> str:
    return f"{label + ':':<28}{value}"


def _more(value: str) -> str:
    """A continuation line under the previous value."""
    return " " * 28 + value


def _tool(command: str) -> str:
    """``command`` with the full path of its program when that is in an sbin directory."""
    program, _, rest = command.partition(" ")
    found = shutil.which(program, path=_TOOL_PATH)
    if found and "/sbin/" in found:
        program = found
    return f"{program} {rest}".rstrip()


def _commands(header: ImageHeader, virtual_path: str, root_can_read: bool,
              files_view: str | None) -> list[str]:
    """The commands that work on this virtual partition, for whoever reads the .info."""
    q = shlex.quote(virtual_path)
    fs = header.fs_type
    fsck = _FSCK.get(fs)
    lines = []
    if files_view:
        lines.append(_line("its files", f"ls {shlex.quote(files_view.rstrip('/') + '/')}"))
    if root_can_read:
        if fsck:
            lines.append(_line("check it", f"{fsck} {q}"))
        if fs == "NTFS":
            lines.append(_line("mount it", f"sudo ntfs-3g -o ro {q} /mnt/point"))
        elif fs not in ("swap", "LUKS", "BitLocker"):
            fstype = _MOUNT_TYPE.get(fs)
            opt = f" -t {fstype}" if fstype else ""
            lines.append(_line("mount it", f"sudo mount{opt} -o loop,ro {q} /mnt/point"))
        return lines
    # Mounted by an ordinary user without allow_other: the kernel lets no one
    # else in, root included, so a loop mount fails; say what does work.
    if fsck:
        lines.append(_line("check it", _tool(f"{fsck} {q}")))
    if fs in _EXT:
        lines.append(_line("copy files out", "mkdir -p ~/restore && "
                           + _tool(f'debugfs -c -R "rdump / $HOME/restore" {q}')))
    elif fs in _FAT:
        lines.append(_line("copy files out", f"mkdir -p ~/restore && mcopy -s -i {q} ::/ "
                           "~/restore"))
    elif fs == "NTFS":
        lines.append(_line("list its files", f"ntfsls -R {q}"))
        lines.append(_line("copy a file out", f"ntfscat {q} /PATH/IN/NTFS > FILE"))
    if shutil.which("udisksctl"):
        lines.append(_line("loop device", f"udisksctl loop-setup -r -f {q}"))
        lines.append(_more("(then mount /dev/loopN from the file manager, or "
                           "udisksctl mount -b /dev/loopN)"))
    lines.append(_line("mount it", "root cannot read this mount: it was made without "
                       "-o allow_other."))
    lines.append(_more("To loop-mount: unmount (fusermount3 -u MOUNTPOINT), mount again "
                       "with -o allow_other"))
    lines.append(_more("(needs the line user_allow_other in /etc/fuse.conf), then:"))
    if fs == "NTFS":
        lines.append(_more(f"sudo ntfs-3g -o ro {q} /mnt/point"))
    else:
        fstype = _MOUNT_TYPE.get(fs)
        opt = f" -t {fstype}" if fstype else ""
        lines.append(_more(f"sudo mount{opt} -o loop,ro {q} /mnt/point"))
    return lines


def render_info(header: ImageHeader | None, stream: StreamInfo | None, *,
                image: BlockImage | None = None, error: str | None = None,
                virtual_path: str | None = None, index_state: str | None = None,
                root_can_read: bool = True, files_view: str | None = None,
                extra: Sequence[tuple[str, str]] = ()) -> str:
    """Human-readable description of one image (``error`` for broken ones).

    ``root_can_read`` is False for a mount an ordinary user made without
    allow_other: then the commands shown are those that work for that user
    (no loop mount).  ``files_view`` is the path of ``VNAME.files/`` when
    the image has one; ``extra`` are more (label, value) lines (the files
    view's file system facts).
    """
    lines = [f"imagefs {__version__} image information"]
    if stream is not None:
        pieces = stream.pieces
        if len(pieces) == 1:
            lines.append(_line("source", pieces[0]))
        else:
            lines.append(_line("source", f"{len(pieces)} pieces ({stream.piece_kind}), "
                               f"{pieces[0]} .. {os.path.basename(pieces[-1])}"))
        lines.append(_line("compression", stream.codec or "none"))
        for note in stream.notes:
            lines.append(_line("pieces", note))
        if stream.codec:
            lines.append(_line("index", index_state or "not built yet (built on first read)"))
    if error:
        lines.append(_line("status", "BROKEN"))
        lines.append(_line("error", error))
        lines.append("The virtual partition of this image is not readable.")
        return "\n".join(lines) + "\n"
    assert header is not None
    if header.format_name == "raw":
        lines.append(_line("format", f"raw partition data ({header.format_version})"))
        lines.append(_line("content", header.fs_type or "unknown (no file system recognised)"))
    else:
        lines += [
            _line("format", f"{header.format_name} (image format {header.format_version})"),
            _line("file system", header.fs_type or "unknown"),
        ]
    lines += [
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
        lines += _commands(header, virtual_path, root_can_read, files_view)
    for label, value in extra:
        lines.append(_line(label, value))
    return "\n".join(lines) + "\n"
