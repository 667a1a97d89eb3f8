"""Who may do what, checked in the FUSE adapter instead of by the kernel.

A mount with a files view cannot use ``default_permissions``: the kernel
would then enforce the owners and modes stored inside the backups, so the
user who owns a backup could not read a root-owned file of it, and with
``allow_other`` anyone matching a stored uid could read files of backups
they cannot read.  The adapter then checks each request the way the
kernel's generic permission check would, against each node's
``access_attr()``: its own attributes for mirrored files, directories,
virtual partitions and ``.info`` files; the backup file's for everything in
a files view (who can read the image can read every byte of it anyway).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from imagefs.catalog.nodes import AccessKey

#: Access bits as in access(2).
READ, WRITE, EXEC = os.R_OK, os.W_OK, os.X_OK

#: (uid, gid, pid) of the request being served (mfusepy.fuse_get_context).
Context = Callable[[], tuple[int, int, int]]


def supplementary_groups(pid: int) -> frozenset[int]:
    """The caller's supplementary groups, from /proc (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def permits(key: AccessKey, want: int, uid: int, gid: int, pid: int) -> bool:
    """Whether the caller may ``want`` (READ|EXEC bits) a node with ``key``.

    Root may read and search everything (CAP_DAC_OVERRIDE).  Otherwise the
    owner, group or other bits apply, in that order, as the kernel does;
    supplementary groups are read only when they could change the answer.
    """
    if uid == 0:
        return True
    perm, owner, group = key
    if uid == owner:
        bits = perm >> 6
    elif gid == group:
        bits = perm >> 3
    elif ((perm >> 3) & want == want) != (perm & want == want) \
            and group in supplementary_groups(pid):
        bits = perm >> 3                  # a member: the group bits decide, not the other bits
    else:
        bits = perm
    return bits & want == want
