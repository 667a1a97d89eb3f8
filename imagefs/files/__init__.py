"""The files layer: the file tree inside a virtual partition (``VNAME.files/``).

It sits between blockio and the catalog and reads through nothing but a
:class:`~imagefs.files.partition.Partition` (``size``, ``read``,
``read_into``; thread-safe — a VirtualPartition is one; wrap it with
:func:`image_partition` so that file data in blocks the image does not hold
is an error, not zeros).  No lower layer imports this package.

API
---
``files_supported(fs_type) -> bool``
    Cheap, no I/O: can a files view exist for an image whose header names
    this file system?  False only for file systems known to have no backend
    (HFS+, f2fs, JFS, ...).  For raw data (``None``, ``"raw"``, ``"dd"``,
    unknown strings) it returns True, meaning *maybe*: open_tree then looks
    at the bytes and raises FilesUnavailable if they hold nothing readable.
``open_tree(partition, fs_type, *, name) -> FileTree``
    Reads the superblock and the root (nothing else) and returns the tree,
    or raises :class:`FilesUnavailable` whose ``.reason`` is one sentence
    for ``.info``.  ``name`` (the image's VNAME) prefixes messages.
``FileTree`` (:mod:`imagefs.files.tree`), thread-safe:
    ``root``; ``stat(ino) -> FileStat``; ``listdir(ino) -> [(name, ino)]``
    (names are bytes as stored, no "."/".."); ``lookup(ino, name) -> ino |
    None``; ``readlink(ino) -> bytes``; ``read(ino, off, size) -> bytes``
    and ``read_into(ino, off, view) -> int`` (holes are zeros, short only at
    EOF); ``listxattr(ino) -> [bytes]``; ``getxattr(ino, name) -> bytes``
    (:class:`NoSuchAttribute` if absent); ``describe() -> [(label, value)]``;
    ``close()``.  Inode ids are stable, unique in the tree, shared by hard
    links and below 2**48.
``FileStat``: mode (with S_IFMT bits), ino, nlink, uid, gid, size, blocks
    (512-byte units), atime_ns, mtime_ns, ctime_ns, rdev.

Errors while a tree is in use are ImageError subclasses with one-line
messages naming ``NAME:/path``: :class:`FilesError` (damage, a parser
failure, data past the partition's end), or the partition's own
TruncatedError (data in the missing part of a truncated image, or in blocks
the image does not hold).  Never wrong bytes, never zeros for data.

Backends (one module each; see bench/RESULTS-files.md for the measurements
behind the choices): ext2/3/4 (:mod:`.ext`), xfs (:mod:`.xfs`), btrfs
(:mod:`.btrfs`), NTFS (:mod:`.ntfs`) on the dissect parsers; FAT12/16/32
(:mod:`.fat`) and exFAT (:mod:`.exfat`) in small own readers.

What each file system shows where it has no POSIX metadata (NTFS, FAT,
exFAT): owner 0:0, modes as the kernel driver / ntfs-3g show them by
default, times in UTC.  NTFS named data streams are extended attributes
``user.STREAMNAME`` — what ntfs-3g's default ``streams_interface=xattr``
shows, and the documented way to reach them.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from imagefs.files.errors import (
    FilesError,
    FilesUnavailable,
    NoSuchAttribute,
    NotADirectory,
    NotASymlink,
)
from imagefs.files.families import READABLE, TITLES, header_family
from imagefs.files.filestat import FileStat

if TYPE_CHECKING:
    from imagefs.files.partition import (
        ImagePartition,
        Partition,
        PartitionFile,
        StoredMap,
        image_partition,
    )
    from imagefs.files.tree import INO_LIMIT, FileTree

log = logging.getLogger(__name__)


#: Names of this API whose modules load on first use: listing a directory of
#: images needs only files_supported and FileStat, and the rest of the layer
#: (with the signature table of detect) cost ~4 ms of every mount's start
#: (issue 12; partition's Protocol classes alone ~1 ms).
_LAZY = {"FileTree": "tree", "INO_LIMIT": "tree", "ImagePartition": "partition",
         "Partition": "partition", "PartitionFile": "partition", "StoredMap": "partition",
         "image_partition": "partition"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"imagefs.files.{module}"), name)

_LOOP_HINT = "loop-mount the virtual partition instead"


def files_supported(fs_type: str | None) -> bool:
    """Whether a files view may exist for this header fs-type (no I/O; True = maybe, raw data)."""
    return unsupported_reason(fs_type) is None


def _backend(family: str) -> Any:
    # Imported on demand: each backend pulls in its parser library.
    if family == "ext":
        from imagefs.files.ext import ExtTree

        return ExtTree
    if family == "xfs":
        from imagefs.files.xfs import XfsTree

        return XfsTree
    if family == "btrfs":
        from imagefs.files.btrfs import BtrfsTree

        return BtrfsTree
    if family == "ntfs":
        from imagefs.files.ntfs import NtfsTree

        return NtfsTree
    if family == "fat":
        from imagefs.files.fat import FatTree

        return FatTree
    if family == "exfat":
        from imagefs.files.exfat import ExfatTree

        return ExfatTree
    raise KeyError(family)


def unsupported_reason(fs_type: str | None) -> str | None:
    """The sentence for ``.info`` when the header alone rules a files view out (no I/O)."""
    known, family = header_family(fs_type)
    if known and family is not None and family not in READABLE:
        return (f"the file system is {TITLES.get(family, family)}, which imagefs cannot "
                f"read; {_LOOP_HINT}")
    return None


def open_tree(partition: Partition, fs_type: str | None, *, name: str) -> FileTree:
    """Open the file system in ``partition`` (see the module docs); FilesUnavailable if none."""
    from imagefs.files.detect import sniff
    known, family = header_family(fs_type)
    reason = unsupported_reason(fs_type)
    if reason is not None:
        raise FilesUnavailable(reason)
    try:
        found = sniff(partition)
    except Exception as exc:  # noqa: BLE001 - a truncated image may not hold its first 64 KiB
        raise FilesUnavailable(f"the start of the partition cannot be read ({exc})") from None
    if family is None:
        if found is None:
            raise FilesUnavailable(
                "the partition holds no file system imagefs recognises; "
                f"{_LOOP_HINT} if it holds one"
            )
        if found not in READABLE:
            raise FilesUnavailable(
                f"the partition holds {TITLES.get(found, found)}, which imagefs cannot "
                f"read; {_LOOP_HINT}"
            )
        family = found
    elif found != family:
        what = TITLES.get(family, family)
        part = "boot sector" if family in ("ntfs", "fat", "exfat") else "superblock"
        raise FilesUnavailable(
            f"the {what} {part} is missing or damaged (no {what} signature where "
            f"the image header says there is one)"
        )
    try:
        tree = _backend(family)(partition, name)
    except FilesUnavailable:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        log.debug("%s: opening the %s file system failed", name, family, exc_info=True)
        raise FilesUnavailable(
            f"the {TITLES.get(family, family)} file system cannot be opened ({text[:200]})"
        ) from None
    log.debug("%s: opened %s", name, tree.fs_name)
    return tree


__all__ = [
    "FileStat",
    "FileTree",
    "FilesError",
    "FilesUnavailable",
    "ImagePartition",
    "INO_LIMIT",
    "NoSuchAttribute",
    "NotADirectory",
    "NotASymlink",
    "Partition",
    "PartitionFile",
    "StoredMap",
    "unsupported_reason",
    "files_supported",
    "image_partition",
    "open_tree",
]
