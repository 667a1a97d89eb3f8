"""``VNAME.files/``: the files inside an image, as nodes of the mounted tree.

An image whose header names a file system the files layer can read (or
raw data that may hold one) shows a directory ``VNAME.files`` beside
``VNAME`` and ``VNAME.info``.  Listing the image's directory opens
nothing; the first access of ``VNAME.files`` opens the file system once
(:class:`FilesView`, over the image's virtual partition and the shared
cache), and directories and inodes are then read on demand.  A file system
the parser cannot open makes ``VNAME.files`` disappear (lookups answer
ENOENT) and its reason goes to ``.info``.

Nodes below the root are made on each lookup from the tree's inode
numbers; they are cheap and hold only their inode's stat.  Inode numbers
shown are ``view number << 48 | inode``, unique over the mount and shared
by hard links.  Who may read: the stored owners and modes are shown, but
access is decided by the backup file itself (``access_attr``): who can
read the image can read every byte of it anyway.

Threading: ``FilesView._lock`` guards opening the tree (once) and the set
of inodes whose damage was logged; the tree itself is thread-safe.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from imagefs.catalog.attrs import Attr
from imagefs.catalog.nodes import (
    AccessKey,
    DirectoryNode,
    FileLikeNode,
    LinkNode,
    Node,
    NoSuchAttribute,
    NotFound,
    NotReadable,
    OpenFile,
)
from imagefs.errors import ImageError
from imagefs.files import (
    FileStat,
    FilesUnavailable,
    files_supported,
    open_tree,
    unsupported_reason,
)
from imagefs.files import NoSuchAttribute as FilesNoSuchAttribute

if TYPE_CHECKING:
    from imagefs.catalog.entry import ImageEntry
    from imagefs.files import FileTree

log = logging.getLogger(__name__)

FILES_SUFFIX = ".files"

#: Inode numbers of a view are ``number << INO_SHIFT | inode`` (the files
#: layer keeps inodes below 2**48); catalog nodes use prefix 0.
INO_SHIFT = 48
_view_numbers = itertools.count(1)


def may_have_files(entry: ImageEntry) -> bool:
    """Whether ``entry`` gets a ``VNAME.files`` (cheap: the header only)."""
    header = entry.header
    return (entry.catalog.settings.files and header is not None and entry.error is None
            and files_supported(header.fs_type))


class FilesView:
    """One image's file system, opened on first use."""

    def __init__(self, entry: ImageEntry) -> None:
        self.entry = entry
        self.number = next(_view_numbers)
        self.unavailable: str | None = None     # the reason, once opening failed
        self._tree: FileTree | None = None
        self._lock = threading.Lock()
        self._logged: set[int] = set()
        self._access: AccessKey | None = None
        header = entry.header
        self.unavailable = unsupported_reason(header.fs_type if header else None)

    @property
    def opened(self) -> bool:
        return self._tree is not None

    def tree(self) -> FileTree:
        """The file tree; raises NotFound when the file system cannot be opened."""
        tree = self._tree
        if tree is not None:
            return tree
        with self._lock:
            if self._tree is None:
                if self.unavailable is not None:
                    raise NotFound(FILES_SUFFIX)
                entry = self.entry
                try:
                    # Loaded with the first view opened, not in every mount's start.
                    from imagefs.files import image_partition
                    partition = image_partition(entry.partition(), entry.reader())
                    header = entry.header
                    name = os.path.basename(entry.vpath)
                    self._tree = open_tree(partition, header.fs_type if header else None,
                                           name=name)
                except FilesUnavailable as exc:
                    self.unavailable = exc.reason
                    log.warning("%s: no files view: %s", entry.pieces[0], exc.reason)
                    raise NotFound(FILES_SUFFIX) from None
                except ImageError as exc:
                    self.unavailable = f"the image cannot be read ({exc.problem})"
                    raise NotFound(FILES_SUFFIX) from None
                log.info("%s: file system opened (%s)", entry.vpath, self._tree.fs_name)
            tree = self._tree
        return tree

    def access_key(self) -> AccessKey:
        """Who may read and search the whole view: the image's readers.

        The image's read bits also grant search, so whoever may read the
        image may walk every directory of its file system.
        """
        key = self._access
        if key is None:
            image = self.entry.image_attr()
            readable = image.perm & 0o444
            key = self._access = (readable | readable >> 2, image.uid, image.gid)
        return key

    def ino(self, inode: int) -> int:
        """The mount-wide inode number of ``inode``."""
        return (self.number << INO_SHIFT) | inode

    def damaged(self, inode: int, exc: ImageError) -> None:
        """Log a damaged file or directory once (every read of it answers EIO)."""
        with self._lock:
            first = inode not in self._logged
            self._logged.add(inode)
        if first:
            log.error("%s", exc)

    def describe(self) -> list[tuple[str, str]]:
        """Lines for ``.info``: the state of the view and what the parser reports."""
        vname = os.path.basename(self.entry.vpath)
        if self.unavailable is not None:
            return [("files view", f"none: {self.unavailable}")]
        tree = self._tree
        if tree is None:
            return [("files view", f"{vname}{FILES_SUFFIX}/ (the file system is opened on "
                     "first access)")]
        rows = [("files view", f"{vname}{FILES_SUFFIX}/ ({tree.fs_name})")]
        try:
            rows += [("file system" if label == "file system" else f"file system {label}",
                      value) for label, value in tree.describe()]
        except ImageError as exc:
            rows.append(("file system", f"cannot be described ({exc.problem})"))
        return rows

    def close(self) -> None:
        with self._lock:
            tree, self._tree = self._tree, None
        if tree is not None:
            tree.close()


def _attr(view: FilesView, st: FileStat) -> Attr:
    return Attr(mode=st.mode, size=st.size, blocks=st.blocks, mtime_ns=st.mtime_ns,
                ctime_ns=st.ctime_ns, atime_ns=st.atime_ns, uid=st.uid, gid=st.gid,
                nlink=st.nlink, ino=view.ino(st.ino), rdev=st.rdev)


class _FilesNode(Node):
    """A node of a file tree: its inode and the stat it had when looked up."""

    def __init__(self, view: FilesView, vpath: str, inode: int, st: FileStat) -> None:
        super().__init__(vpath)
        self.view = view
        self.inode = inode
        self._st = st

    def attr(self) -> Attr:
        return _attr(self.view, self._st)

    def access_attr(self) -> Attr:
        """Reading is decided by the backup file (see the module docstring)."""
        image = self.view.entry.image_attr()
        perm, _uid, _gid = self.view.access_key()
        return image._replace(mode=stat.S_IFMT(self._st.mode) | perm)

    def access_key(self) -> AccessKey:
        return self.view.access_key()

    def _guard(self, exc: ImageError) -> ImageError:
        self.view.damaged(self.inode, exc)
        return exc

    def listxattr(self) -> list[str]:
        try:
            names = self.view.tree().listxattr(self.inode)
        except ImageError as exc:
            raise self._guard(exc) from None
        return [os.fsdecode(n) for n in names]

    def getxattr(self, name: str) -> bytes:
        try:
            return self.view.tree().getxattr(self.inode, os.fsencode(name))
        except FilesNoSuchAttribute:
            raise NoSuchAttribute(name) from None
        except ImageError as exc:
            raise self._guard(exc) from None


def _node_for(view: FilesView, vpath: str, inode: int, st: FileStat) -> Node:
    kind = stat.S_IFMT(st.mode)
    if kind == stat.S_IFDIR:
        return FilesDirNode(view, vpath, inode, st)
    if kind == stat.S_IFLNK:
        return FilesLinkNode(view, vpath, inode, st)
    return FilesFileNode(view, vpath, inode, st)


class FilesDirNode(_FilesNode, DirectoryNode):
    """A directory of a file tree (listed on demand, looked up by name)."""

    def children(self) -> Mapping[str, Node]:
        out: dict[str, Node] = {}
        tree = self.view.tree()
        try:
            for name, inode in tree.listdir(self.inode):
                shown = os.fsdecode(name)
                out[shown] = _node_for(self.view, f"{self.vpath}/{shown}", inode,
                                       tree.stat(inode))
        except ImageError as exc:
            raise self._guard(exc) from None
        return out

    def listing(self) -> list[tuple[str, int, int]]:
        # Names and inode numbers only: the type of each entry would cost a
        # stat; tools that care (find, ls -l) stat anyway.
        view = self.view
        try:
            return [(os.fsdecode(name), 0, view.ino(inode))
                    for name, inode in view.tree().listdir(self.inode)]
        except ImageError as exc:
            raise self._guard(exc) from None

    def child(self, name: str) -> Node:
        tree = self.view.tree()
        try:
            inode = tree.lookup(self.inode, os.fsencode(name))
            if inode is None:
                raise NotFound(name)
            return _node_for(self.view, f"{self.vpath}/{name}", inode, tree.stat(inode))
        except ImageError as exc:
            raise self._guard(exc) from None


class FilesRootNode(FilesDirNode):
    """``VNAME.files`` itself: shown without opening the file system.

    Its attributes are those of the image's directory entry (a directory
    the backup's owner can read) until and after the file system opens, so
    ``ls -l`` of a directory of images stays cheap and consistent.
    """

    def __init__(self, view: FilesView, vpath: str) -> None:
        entry = view.entry
        st = entry.st
        placeholder = FileStat(mode=stat.S_IFDIR | 0o555, ino=0, nlink=2, uid=st.st_uid,
                               gid=st.st_gid, size=0, blocks=0, atime_ns=st.st_atime_ns,
                               mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, rdev=0)
        super().__init__(view, vpath, -1, placeholder)

    def attr(self) -> Attr:
        if self.view.unavailable is not None:
            raise NotFound(self.vpath)
        return self.view.entry.catalog.attrs.mirror(self.view.entry.st, size=0, blocks=0,
                                                    is_dir=True)

    def _root(self) -> int:
        tree = self.view.tree()
        self.inode = tree.root
        return self.inode

    def children(self) -> Mapping[str, Node]:
        self._root()
        return super().children()

    def listing(self) -> list[tuple[str, int, int]]:
        self._root()
        return super().listing()

    def child(self, name: str) -> Node:
        self._root()
        return super().child(name)

    def listxattr(self) -> list[str]:
        return []

    def getxattr(self, name: str) -> bytes:
        raise NoSuchAttribute(name)


class FilesLinkNode(_FilesNode, LinkNode):
    """A symbolic link of a file tree (its target as stored)."""

    def readlink(self) -> str:
        try:
            return os.fsdecode(self.view.tree().readlink(self.inode))
        except ImageError as exc:
            raise self._guard(exc) from None


class FilesFileNode(_FilesNode, FileLikeNode):
    """A regular file (or a device node, FIFO or socket, which cannot be read)."""

    def open(self) -> OpenFile:
        if not stat.S_ISREG(self._st.mode):
            raise NotReadable(self.vpath)  # device nodes and FIFOs hold no data here
        tree = self.view.tree()
        inode = self.inode

        def read(offset: int, size: int) -> bytes:
            try:
                return tree.read(inode, offset, size)
            except ImageError as exc:
                raise self._guard(exc) from None

        def read_into(offset: int, dest: memoryview) -> int:
            try:
                return tree.read_into(inode, offset, dest)
            except ImageError as exc:
                raise self._guard(exc) from None

        return OpenFile(read, read_into)
