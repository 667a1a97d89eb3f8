"""``Catalog``: the whole mounted tree plus the resources its images share.

The catalog knows nothing about FUSE.  It answers ``lookup(path)`` with a
node (:mod:`~imagefs.catalog.nodes`) and owns what every image of the mount
shares: the descriptor pool, the block cache, the index store and the
attribute policy.  Everything is lazy so that a tree of thousands of images
mounts at once (:mod:`~imagefs.catalog.scan`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Protocol

from imagefs import codecs
from imagefs.blockio.opener import OpenContext
from imagefs.catalog.attrs import AttrPolicy
from imagefs.catalog.entry import ImageEntry
from imagefs.catalog.filesnodes import FilesRootNode
from imagefs.catalog.nodes import AccessKey, DirectoryNode, Node, NotADirectory
from imagefs.catalog.scan import DirNode
from imagefs.catalog.scope import Scope
from imagefs.config.settings import Settings, SourceSpec
from imagefs.errors import SourceError
from imagefs.io.fdpool import FdPool, default_fd_pool
from imagefs.services.cache import BlockCache
from imagefs.services.indexstore import IndexStore
from imagefs.services.lru import LRU

#: Paths whose resolution is remembered (a node and a few keys each: a few MB).
PATH_CACHE = 32768


class Closable(Protocol):
    """What the catalog closes on unmount (image and disk entries)."""

    def close(self) -> None: ...


class Catalog:
    """The whole mounted tree plus the resources its images share.

    Threading: nodes build their own state under their own locks; the
    catalog's ``_entries_lock`` guards only the list of registered images.
    """

    def __init__(self, settings: Settings, source: str | None = None,
                 mountpoint: str | None = None, pool: FdPool | None = None) -> None:
        self.settings = settings
        self.mountpoint = os.path.abspath(mountpoint) if mountpoint else None
        if pool is None:
            pool = FdPool(settings.max_open_files) if settings.max_open_files else default_fd_pool()
        self.pool = pool
        self.cache = BlockCache(settings.cache_size)
        self.ctx = OpenContext(pool=pool, index_store=IndexStore(settings.index_dir,
                                                           settings.index_max),
                               cache=self.cache, progress=False)
        self.attrs = AttrPolicy(settings.uid, settings.gid, settings.umask)
        #: Whether root can read this mount: FUSE lets no other user in, root
        #: included, unless allow_other (the .info commands depend on it).
        self.root_can_read = bool(settings.allow_other) or os.geteuid() == 0
        if settings.codec_threads:
            codecs.configure(threads=settings.codec_threads)   # process-wide
        self._entries: list[Closable] = []
        self._entries_lock = threading.Lock()
        self._paths: LRU[str, tuple[Node, tuple[AccessKey, ...]]] = LRU(PATH_CACHE)
        specs = [SourceSpec(path=source)] if source is not None else list(settings.sources)
        if not specs:
            raise SourceError("(no source)", "nothing to mount",
                              "give a SOURCE directory or list sources in the configuration")
        self.roots = [os.path.realpath(s.path) for s in specs]
        only = specs[0]
        only_real = self.roots[0]
        if len(specs) == 1 and only.name is None and os.path.isdir(only_real):
            st = os.stat(only_real)
            self.root = DirNode(self, "/", only_real, st,
                                Scope(only_real, tuple(only.include), tuple(only.exclude)))
        else:
            st = os.stat(os.path.dirname(only_real) if os.path.exists(only_real) else "/")
            self.root = DirNode(self, "/", None, st, None, specs=specs)

    # ------------------------------------------------------------ lookup
    def lookup(self, path: str) -> Node:
        """The node at ``path`` ("/a/b"); raises NotFound or NotADirectory."""
        return self.resolve(path)[0]

    def resolve(self, path: str) -> tuple[Node, tuple[AccessKey, ...]]:
        """The node at ``path`` and the access keys of the directories it passes.

        The FUSE adapter checks search permission against those keys
        (repeats removed).  Results are remembered (bounded LRU): the tree
        never changes while mounted, and a FUSE request names a full path,
        which would otherwise be walked component by component every time.
        """
        hit = self._paths.get(path)
        if hit is not None:
            return hit
        parent_path, _, name = path.rstrip("/").rpartition("/")
        if not name or name == ".":
            found: tuple[Node, tuple[AccessKey, ...]] = (self.root, ())
        else:
            # A new path is usually a new name in a directory resolved just
            # before (a listing being stat'ed): one step from the parent.
            parent, chain = self.resolve(parent_path) if parent_path else (self.root, ())
            if not isinstance(parent, DirectoryNode):
                raise NotADirectory(path)
            key = parent.access_key()
            if key not in chain:
                chain = (*chain, key)
            found = (parent.child(name), chain)
        self._paths.put(path, found)
        return found

    def walk(self, node: DirectoryNode | None = None) -> Iterator[Node]:
        """Every node below ``node`` (default: the root), depth first.

        Files views are yielded but not entered: their content is the
        backups' file systems, not the catalog's tree.
        """
        stack: list[Node] = [node or self.root]
        while stack:
            current = stack.pop()
            yield current
            if isinstance(current, DirectoryNode) and not isinstance(current, FilesRootNode):
                stack.extend(reversed(list(current.children().values())))

    def inside_sources(self, real: str) -> bool:
        """Whether the real path ``real`` lies inside one of the source roots."""
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in self.roots)

    def register(self, entry: Closable) -> None:
        """Remember an image or disk shown in the tree (to close it on unmount)."""
        with self._entries_lock:
            self._entries.append(entry)

    def entries(self) -> list[ImageEntry]:
        """Every image listed so far."""
        with self._entries_lock:
            return [e for e in self._entries if isinstance(e, ImageEntry)]

    def close(self) -> None:
        """Release every open image, disk and descriptor (decoders must close before exit)."""
        with self._entries_lock:
            entries = list(self._entries)
        for entry in entries:
            entry.close()
        self.pool.close_all()
