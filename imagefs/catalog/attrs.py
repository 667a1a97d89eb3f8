"""What ``stat`` says about a node, independent of FUSE's structures.

Nodes mirroring backup files take the owner, times and read/execute bits
of their source file (never write bits: the mount is read-only), unless the
mount overrides owner and permissions (``uid=``, ``gid=``, ``umask=``).
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple


class Attr(NamedTuple):
    """The attributes of one node (``mode`` includes the file type bits)."""

    mode: int
    size: int
    blocks: int               # 512-byte units actually held
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    uid: int
    gid: int
    nlink: int = 1
    ino: int = 0              # 0: let the FUSE layer number it
    rdev: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def perm(self) -> int:
        return stat.S_IMODE(self.mode)


class AttrPolicy(NamedTuple):
    """The mount's owner and permission overrides (None: keep the source's)."""

    uid: int | None = None
    gid: int | None = None
    umask: int | None = None

    def mirror(self, st: os.stat_result, *, size: int, blocks: int, is_dir: bool = False,
               plain: bool = False) -> Attr:
        """Attributes of a node shown for the source file ``st``.

        Virtual partitions and ``.info`` files get no execute bits; mirrored
        files and directories (``plain``/``is_dir``) keep theirs.
        """
        perm = stat.S_IMODE(st.st_mode) & (0o555 if is_dir or plain else 0o444)
        if self.umask is not None:
            perm = (0o555 if is_dir else 0o444) & ~self.umask
        uid = self.uid if self.uid is not None else st.st_uid
        gid = self.gid if self.gid is not None else st.st_gid
        kind = stat.S_IFDIR if is_dir else stat.S_IFREG
        return Attr(mode=kind | perm, size=size, blocks=blocks, mtime_ns=st.st_mtime_ns,
                    ctime_ns=st.st_ctime_ns, atime_ns=st.st_atime_ns, uid=uid, gid=gid,
                    nlink=2 if is_dir else 1)
