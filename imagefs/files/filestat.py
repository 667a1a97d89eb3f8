"""The stat of one inode of a file tree, as every backend reports it.

Its own module so that the catalog can show a ``VNAME.files`` directory
(whose placeholder stat is one of these) without loading the files layer.
"""

from __future__ import annotations

from typing import NamedTuple


class FileStat(NamedTuple):
    """What ``stat`` shows for one inode (times in nanoseconds since the epoch)."""

    mode: int  # type bits (S_IFMT) and permission bits
    ino: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int  # allocated space in 512-byte units
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0  # device number (os.makedev) of device nodes
