"""The nodes of the mounted tree and what the FUSE adapter may ask of them.

Every node answers ``attr()``.  A directory node lists ``children()``; a file
node is ``open()``-ed into an :class:`OpenFile` (read as bytes or into a
caller's buffer); a symlink node answers ``readlink()``; any node may carry
extended attributes.  The FUSE adapter knows only this protocol, so new kinds
of nodes (a file system's files, a whole disk) plug in without touching it.

Errors: lookups raise :class:`NotFound` / :class:`NotADirectory`; opening or
reading a damaged image raises :class:`~imagefs.errors.ImageError` (EIO at
the FUSE boundary).
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from imagefs.catalog.attrs import Attr
from imagefs.io.source import FileSource

if TYPE_CHECKING:
    from imagefs.catalog.entry import ImageEntry
    from imagefs.catalog.tree import Catalog


#: ``(permission bits, uid, gid)``: what decides who may read or search a node.
AccessKey = tuple[int, int, int]

#: Node numbers: below 2**48, where files views start theirs (catalog.filesnodes).
_numbers = itertools.count(1)


class NotFound(Exception):
    """No node at this path (the FUSE adapter turns it into ENOENT)."""


class NotADirectory(Exception):
    """A path component is a file (ENOTDIR at the FUSE boundary)."""


class NoSuchAttribute(Exception):
    """The node has no extended attribute of that name (ENODATA)."""


class NotReadable(Exception):
    """The node exists but holds nothing to read, such as a device node (EACCES)."""


def copying_reader(read: Callable[[int, int], bytes]) -> Callable[[int, memoryview], int]:
    """A ``read_into`` for readers that only return bytes."""
    def read_into(offset: int, dest: memoryview) -> int:
        data = read(offset, len(dest))
        dest[:len(data)] = data
        return len(data)
    return read_into


class OpenFile(NamedTuple):
    """An opened file node: how to read it and how the kernel may cache it."""

    read: Callable[[int, int], bytes]
    read_into: Callable[[int, memoryview], int]
    #: Immutable content: the kernel may keep what it read across opens.
    keep_cache: bool = True
    #: Content that changes between opens (``.info``): bypass the page cache.
    direct_io: bool = False


class Node:
    """A node of the mounted tree."""

    def __init__(self, vpath: str) -> None:
        self.vpath = vpath              # path inside the mount, "/" for the root
        #: The inode number shown when the node's attributes carry none.
        self.number = next(_numbers)
        self._access: AccessKey | None = None

    def attr(self) -> Attr:
        raise NotImplementedError

    def listxattr(self) -> list[str]:
        """Names of the node's extended attributes (none by default)."""
        return []

    def getxattr(self, name: str) -> bytes:
        """The value of one extended attribute."""
        raise NoSuchAttribute(name)

    def access_attr(self) -> Attr:
        """The owner and mode that decide who may read this node (its own, by default)."""
        return self.attr()

    def access_key(self) -> AccessKey:
        """``(permission bits, uid, gid)`` of :meth:`access_attr`, computed once.

        Every node's owner and mode are fixed while mounted (backups are
        immutable), so the permission check costs no attribute work.
        """
        key = self._access
        if key is None:
            a = self.access_attr()
            key = self._access = (a.perm, a.uid, a.gid)
        return key


class DirectoryNode(Node):
    """A directory: its children by name, listed lazily."""

    def children(self) -> Mapping[str, Node]:
        raise NotImplementedError

    def child(self, name: str) -> Node:
        try:
            return self.children()[name]
        except KeyError:
            raise NotFound(name) from None

    def listing(self) -> list[tuple[str, int, int]]:
        """``(name, file type bits, inode number)`` of the children, for readdir.

        Type bits 0 mean "unknown" (tools then stat the entry).  The inode
        number must be the one ``attr()`` reports: getdents skips entries
        numbered 0.
        """
        out = []
        for name, node in self.children().items():
            kind = (stat.S_IFDIR if isinstance(node, DirectoryNode)
                    else stat.S_IFLNK if isinstance(node, LinkNode) else stat.S_IFREG)
            out.append((name, kind, node.number))
        return out


class FileLikeNode(Node):
    """A node that can be opened and read."""

    def open(self) -> OpenFile:
        raise NotImplementedError


class LinkNode(Node):
    """A symbolic link."""

    def readlink(self) -> str:
        raise NotImplementedError


class FileNode(FileLikeNode):
    """A file that is not an image, shown unchanged and read-only."""

    def __init__(self, catalog: Catalog, vpath: str, real: str, st: os.stat_result) -> None:
        super().__init__(vpath)
        self.catalog = catalog
        self.real = real
        self._st = st
        self._source: FileSource | None = None
        self._lock = threading.Lock()   # guards _source

    def attr(self) -> Attr:
        return self.catalog.attrs.mirror(self._st, size=self._st.st_size,
                                         blocks=self._st.st_blocks, plain=True)

    def source(self) -> FileSource:
        with self._lock:
            if self._source is None:
                self._source = FileSource(self.real, self.catalog.pool, self._st.st_size)
            return self._source

    def open(self) -> OpenFile:
        read = self.source().read_at
        return OpenFile(read, copying_reader(read))


class ImageNode(FileLikeNode):
    """The virtual partition of an image."""

    def __init__(self, entry: ImageEntry) -> None:
        super().__init__(entry.vpath)
        self.entry = entry

    def attr(self) -> Attr:
        return self.entry.image_attr()

    def open(self) -> OpenFile:
        entry = self.entry
        entry.partition()                # the first open reads the block map, once
        return OpenFile(entry.read, entry.read_into)


class InfoNode(FileLikeNode):
    """``VNAME.info``: the header dump (or the error) of an image."""

    def __init__(self, entry: ImageEntry, vpath: str) -> None:
        super().__init__(vpath)
        self.entry = entry

    def attr(self) -> Attr:
        size = len(self.entry.info_text())
        return self.entry.catalog.attrs.mirror(self.entry.st, size=size, blocks=-(-size // 512))

    def open(self) -> OpenFile:
        text = self.entry.info_text()    # a snapshot per open: consistent reads

        def read(offset: int, size: int) -> bytes:
            return text[offset:offset + size]
        return OpenFile(read, copying_reader(read), keep_cache=False, direct_io=True)
