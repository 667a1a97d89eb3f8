"""Helpers for the files-view tests: walk a FileTree and a mounted directory
into the same comparable form, and open images the way the catalog will.
"""

from __future__ import annotations

import hashlib
import os
import stat as st
from pathlib import Path
from typing import Iterable

from imagefs.files import FileTree

#: Entries every kernel mount shows that are the file system's own, not the user's.
HIDDEN = {b"lost+found"}


def _xattrs_of(path: str) -> dict[bytes, bytes]:
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    for n in names:
        try:
            out[os.fsencode(n)] = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            continue
    return out


def walk_mount(root: Path, fields: Iterable[str], skip: set[bytes] = HIDDEN) -> dict[bytes, dict]:
    """Relative path (bytes) -> the chosen fields of every entry under a mounted ``root``."""
    fields = tuple(fields)
    out: dict[bytes, dict] = {}
    broot = os.fsencode(root)

    def visit(d: bytes, rel: bytes) -> None:
        for name in sorted(os.listdir(d)):
            if not rel and name in skip:
                continue
            p = os.path.join(d, name)
            r = rel + b"/" + name if rel else name
            s = os.lstat(p)
            e = _fields(s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns, s.st_nlink, s.st_rdev,
                        fields)
            if "content" in fields:
                if st.S_ISLNK(s.st_mode):
                    e["content"] = b"link:" + os.readlink(p)
                elif st.S_ISREG(s.st_mode):
                    with open(p, "rb") as f:
                        e["content"] = hashlib.sha256(f.read()).hexdigest()
            if "xattrs" in fields:
                e["xattrs"] = _xattrs_of(p)
            if "ino" in fields:
                e["ino"] = s.st_ino
                e["dev"] = s.st_dev       # btrfs: each subvolume is its own st_dev
            out[r] = e
            if st.S_ISDIR(s.st_mode):
                visit(p, r)

    visit(broot, b"")
    return out


def walk_tree(tree: FileTree, fields: Iterable[str], skip: set[bytes] = HIDDEN) -> dict[bytes, dict]:
    """The same as :func:`walk_mount`, through a FileTree."""
    fields = tuple(fields)
    out: dict[bytes, dict] = {}

    def visit(ino: int, rel: bytes) -> None:
        for name, child in sorted(tree.listdir(ino)):
            if not rel and name in skip:
                continue
            r = rel + b"/" + name if rel else name
            s = tree.stat(child)
            e = _fields(s.mode, s.uid, s.gid, s.size, s.mtime_ns, s.nlink, s.rdev, fields)
            if "content" in fields:
                if st.S_ISLNK(s.mode):
                    e["content"] = b"link:" + tree.readlink(child)
                elif st.S_ISREG(s.mode):
                    h = hashlib.sha256()
                    pos = 0
                    while pos < s.size:
                        chunk = tree.read(child, pos, 1 << 20)
                        assert chunk, f"short read of {r!r} at {pos}"
                        h.update(chunk)
                        pos += len(chunk)
                    e["content"] = h.hexdigest()
            if "xattrs" in fields:
                e["xattrs"] = {n: tree.getxattr(child, n) for n in tree.listxattr(child)}
            if "ino" in fields:
                e["ino"] = s.ino
            out[r] = e
            if st.S_ISDIR(s.mode):
                visit(child, r)

    visit(tree.root, b"")
    return out


def _fields(mode: int, uid: int, gid: int, size: int, mtime_ns: int, nlink: int, rdev: int,
            fields: tuple[str, ...]) -> dict:
    e: dict = {"type": st.S_IFMT(mode)}
    if "mode" in fields:
        e["mode"] = st.S_IMODE(mode)
    if "owner" in fields:
        e["owner"] = (uid, gid)
    if "size" in fields and not st.S_ISDIR(mode):
        e["size"] = size
    if "mtime" in fields:
        e["mtime"] = mtime_ns
    if "nlink" in fields:
        e["nlink"] = nlink
    if "rdev" in fields and (st.S_ISCHR(mode) or st.S_ISBLK(mode)):
        e["rdev"] = rdev
    return e


def diff(expected: dict[bytes, dict], got: dict[bytes, dict], limit: int = 20) -> str:
    """A readable summary of the differences (empty when equal)."""
    lines = []
    for k in sorted(set(expected) | set(got)):
        a, b = expected.get(k), got.get(k)
        if a != b:
            lines.append(f"{k!r}: mount={a} tree={b}")
            if len(lines) >= limit:
                lines.append("...")
                break
    return "\n".join(lines)


def same_inode_groups(entries: dict[bytes, dict]) -> set[frozenset[bytes]]:
    """Sets of paths that share an inode (hard links), for comparing link structure."""
    groups: dict[tuple[int, int], set[bytes]] = {}
    for path, e in entries.items():
        if e["type"] != st.S_IFDIR:
            groups.setdefault((e.get("dev", 0), e["ino"]), set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


class FilePartition:
    """A partition read straight from a raw file (what the kernel mounts), for reference runs."""

    def __init__(self, path: str | Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        return os.pread(self._fd, size, offset) if size else b""

    def read_into(self, offset: int, dest: memoryview) -> int:
        n = max(0, min(len(dest), self.size - offset))
        if n == 0:
            return 0
        return os.preadv(self._fd, [dest[:n]], offset)

    def close(self) -> None:
        os.close(self._fd)
