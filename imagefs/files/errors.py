"""The files layer's exceptions.

:class:`FilesUnavailable` is not an :class:`~imagefs.errors.ImageError`: it
says that a partition has no files view at all (its ``.reason`` goes into
``.info``), not that a read failed.  Everything that goes wrong while a tree
is in use is a :class:`FilesError` (an ImageError, so the FUSE adapter
answers EIO) or, from the partition underneath, the partition's own
ImageError (TruncatedError and friends) unchanged.
"""

from __future__ import annotations

from imagefs.errors import ImageError

DAMAGED_HINT = ("the file system inside the backup is damaged; loop-mount the virtual partition "
                "and run fsck on a copy")


class FilesUnavailable(Exception):
    """No files view can exist for this partition; ``reason`` is one plain sentence."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class FilesError(ImageError):
    """A file or directory inside a tree cannot be read (damage, parser failure).

    ``path`` is ``NAME:/path/inside/the/tree`` (as far as it is known).
    """

    def __init__(self, path: str, problem: str, hint: str = DAMAGED_HINT) -> None:
        super().__init__(path, problem, hint)


class NoSuchAttribute(KeyError):
    """``getxattr`` of a name the inode does not have (ENODATA at the FUSE boundary)."""


class NotADirectory(FilesError):
    """``listdir``/``lookup`` on an inode that is not a directory (ENOTDIR)."""


class NotASymlink(FilesError):
    """``readlink`` on an inode that is not a symbolic link (EINVAL)."""


class NoSuchInode(FilesError):
    """An inode id this tree never handed out (ENOENT/ESTALE)."""
