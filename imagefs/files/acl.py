"""POSIX ACLs in the form getxattr(system.posix_acl_*) returns.

Linux hands ACLs to user space in one format (``posix_acl_xattr``: a
version-2 header, then 8-byte entries tag/perm/id, the id 0xFFFFFFFF for
the owner, group, mask and other entries).  ext2/3/4 and xfs store them in
their own formats; these functions convert, so that ``getfacl`` on the
files view prints what it prints on a kernel mount.
"""

from __future__ import annotations

import struct

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"

_XATTR_VERSION = 2
_UNDEFINED_ID = 0xFFFFFFFF
# Tags (linux/posix_acl.h): entries with an id are ACL_USER and ACL_GROUP.
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def _pack(entries: list[tuple[int, int, int]]) -> bytes:
    out = [struct.pack("<I", _XATTR_VERSION)]
    out += [struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in entries]
    return b"".join(out)


def from_ext4(raw: bytes) -> bytes:
    """ext4_acl (version 1; short 4-byte entries for the id-less tags) to posix_acl_xattr."""
    if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != 1:
        raise ValueError("bad ext4 ACL header")
    pos = 4
    entries = []
    while pos < len(raw):
        tag, perm = struct.unpack_from("<HH", raw, pos)
        if tag in (_USER, _GROUP):
            (uid,) = struct.unpack_from("<I", raw, pos + 4)
            pos += 8
        else:
            uid = _UNDEFINED_ID
            pos += 4
        entries.append((tag, perm, uid))
    return _pack(entries)


def from_xfs(raw: bytes) -> bytes:
    """xfs_acl (big-endian count, then 12-byte tag/id/perm entries) to posix_acl_xattr."""
    (count,) = struct.unpack_from(">I", raw)
    if 4 + 12 * count > len(raw):
        raise ValueError("bad xfs ACL length")
    entries = []
    for i in range(count):
        tag, uid, perm = struct.unpack_from(">IIH", raw, 4 + 12 * i)
        entries.append((tag, perm, uid if tag in (_USER, _GROUP) else _UNDEFINED_ID))
    return _pack(entries)
