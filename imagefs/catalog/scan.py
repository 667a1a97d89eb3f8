"""Mirrored directories: listing a source directory into the mount's nodes.

A directory is listed (``listdir`` + a header probe of each file in it) the
first time someone looks inside it, once, under the directory's lock.
Probing reads only the first bytes of a file: enough to tell an image from
any other file and to know the virtual partition's size.  Images are
recognised by content, never by name alone; the name only decides the
display name (:mod:`~imagefs.catalog.naming`) and which files form a piece
set (:mod:`imagefs.io.pieces`).

Symlinks are followed only when their target stays inside a source root; a
directory link back to one of its own ancestors is dropped, so ``ls -R``
and ``find`` terminate.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from imagefs.catalog.attrs import Attr
from imagefs.catalog.disknodes import DiskEntry, DiskInfoNode, DiskNode, disks_in
from imagefs.catalog.entry import ImageEntry
from imagefs.catalog.filesnodes import FILES_SUFFIX, FilesRootNode, FilesView, may_have_files
from imagefs.catalog.naming import INFO_SUFFIX, Wanted, assign_names, virtual_name
from imagefs.catalog.nodes import DirectoryNode, FileNode, ImageNode, InfoNode, Node
from imagefs.catalog.scope import Scope
from imagefs.config.settings import SourceSpec
from imagefs.errors import ImageError, NotAnImageError, SourceError
from imagefs.io.pieces import SINGLE, PieceSet, missing_piece_error, piece_sets, resolve

if TYPE_CHECKING:
    from imagefs.catalog.tree import Catalog

log = logging.getLogger(__name__)


class DirNode(DirectoryNode):
    """A directory: a mirrored source directory, or the synthetic root of several sources."""

    def __init__(self, catalog: Catalog, vpath: str, real: str | None, st: os.stat_result,
                 scope: Scope | None, rel: str = "", ancestors: frozenset[str] = frozenset(),
                 specs: list[SourceSpec] | None = None) -> None:
        super().__init__(vpath)
        self.catalog = catalog
        self.real = real                 # real directory listed, None for a synthetic root
        self._st = st
        self.scope = scope
        self.rel = rel                   # path relative to the scope's root (for globs)
        self.ancestors = ancestors | ({real} if real else frozenset())
        self._specs = specs              # synthetic root: the configured sources
        self._children: dict[str, Node] | None = None
        self._lock = threading.Lock()    # held while the directory is listed, once

    def attr(self) -> Attr:
        return self.catalog.attrs.mirror(self._st, size=self._st.st_size if self.real else 4096,
                                         blocks=0, is_dir=True)

    def children(self) -> Mapping[str, Node]:
        kids = self._children
        if kids is None:
            with self._lock:
                if self._children is None:
                    listing = _Listing(self)
                    if self._specs is not None:
                        listing.add_specs(self._specs)
                    else:
                        listing.scan()
                    self._children = listing.finish()
                kids = self._children
        return kids


class _Listing:
    """Builds one directory's children: classify, group pieces, probe, name."""

    def __init__(self, parent: DirNode) -> None:
        self.parent = parent
        self.catalog = parent.catalog
        self.dirs: dict[str, Node] = {}
        self.files: dict[str, Node] = {}                   # plain files by shown name
        self.images: list[tuple[str, str, ImageEntry]] = []  # (vname, source name, entry)
        self.disks: list[DiskEntry] = []                   # a savedisk directory's DISK.img

    def _vpath(self, name: str) -> str:
        return os.path.join(self.parent.vpath, name)

    def _rel(self, name: str) -> str:
        return os.path.join(self.parent.rel, name) if self.parent.rel else name

    def _resolve(self, path: str) -> tuple[str, os.stat_result] | None:
        """Real path and stat of ``path``, following a symlink only inside a source."""
        try:
            lst = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISLNK(lst.st_mode):
            return path, lst
        target = os.path.realpath(path)
        if not self.catalog.inside_sources(target):
            log.info("%s: symlink leads outside the source; not shown", path)
            return None
        try:
            return target, os.stat(target)
        except OSError:
            log.info("%s: dangling symlink; not shown", path)
            return None

    def scan(self) -> None:
        """List the parent's real directory."""
        parent = self.parent
        scope = parent.scope
        assert parent.real is not None and scope is not None
        try:
            names = sorted(os.listdir(parent.real))
        except OSError as exc:
            log.error("%s: cannot list: %s", parent.real, exc.strerror)
            return
        resolved: dict[str, tuple[str, os.stat_result]] = {}
        for name in names:
            got = self._resolve(os.path.join(parent.real, name))
            if got is None:
                continue
            real, st = got
            rel = self._rel(name)
            if stat.S_ISDIR(st.st_mode):
                if not scope.shows_dir(rel):
                    continue
                real_dir = os.path.realpath(real)
                if real_dir in parent.ancestors:
                    log.info("%s: symlink loop; not shown", os.path.join(parent.real, name))
                    continue
                self.dirs[name] = DirNode(self.catalog, self._vpath(name), real_dir, st, scope,
                                          rel, parent.ancestors)
            elif stat.S_ISREG(st.st_mode):
                if scope.shows_file(rel):
                    resolved[name] = (real, st)
        self._classify_files(resolved)
        images = {name: entry for _vname, name, entry in self.images}
        self.disks = disks_in(self.catalog, parent.real, resolved, images)

    def _classify_files(self, files: dict[str, tuple[str, os.stat_result]]) -> None:
        """Probe piece sets first (their pieces need no probe of their own), then singles."""
        claimed: set[str] = set()
        for pset in piece_sets(files):
            if pset.names[0] in claimed:
                continue
            entry = self._entry_for_set(pset, files)
            if self._probe(entry, pset.names[0], virtual_name(pset.names[0], pset.stem)):
                claimed.update(pset.members)
        for name in sorted(set(files) - claimed):
            real, st = files[name]
            entry = ImageEntry(self.catalog, "", [real], SINGLE, st)
            if not self._probe(entry, name, virtual_name(name)):
                self.files[name] = FileNode(self.catalog, self._vpath(name), real, st)

    def _entry_for_set(self, pset: PieceSet, files: dict[str, tuple[str, os.stat_result]]
                       ) -> ImageEntry:
        pieces = [files[n][0] for n in pset.names]
        missing = None
        if pset.missing:
            missing = missing_piece_error(os.path.dirname(pieces[0]), pset.missing)
        return ImageEntry(self.catalog, "", pieces, pset.kind, files[pset.names[0]][1],
                          missing=missing)

    def _probe(self, entry: ImageEntry, name: str, vname: str) -> bool:
        """True if ``entry`` is an image (good or broken); False for other files."""
        try:
            entry.probe()
        except NotAnImageError:
            entry.close()          # e.g. a gzip'd log: release its decoder now
            return False
        except SourceError as exc:
            # Unreadable file: nothing tells us it is an image; show it as it is.
            log.info("%s: %s", entry.pieces[0], exc)
            entry.close()
            return False
        except ImageError as exc:
            entry.fail(exc)
        except Exception as exc:
            log.debug("probing %s failed", entry.pieces[0], exc_info=True)
            entry.fail(exc)
        self.images.append((vname, name, entry))
        return True

    def add_specs(self, specs: list[SourceSpec]) -> None:
        """The synthetic root: one entry per configured source."""
        for spec in specs:
            real = os.path.realpath(spec.path)
            try:
                st = os.stat(real)
            except OSError as exc:
                log.error("%s: %s; source not shown", spec.path, exc.strerror)
                continue
            if stat.S_ISDIR(st.st_mode):
                name = self._unique(spec.name or os.path.basename(real.rstrip("/")) or "root")
                scope = Scope(real, tuple(spec.include), tuple(spec.exclude))
                self.dirs[name] = DirNode(self.catalog, self._vpath(name), real, st, scope, "",
                                          self.parent.ancestors)
            elif stat.S_ISREG(st.st_mode):
                base = os.path.basename(real)
                try:
                    pieces = resolve(real)
                except SourceError as exc:
                    log.error("%s", exc)
                    continue
                entry = ImageEntry(self.catalog, "", pieces.paths, pieces.kind, st,
                                   missing=pieces.missing)
                vname = spec.name or virtual_name(base, pieces.stem)
                if not self._probe(entry, base, vname):
                    shown = self._unique(spec.name or base)
                    self.files[shown] = FileNode(self.catalog, self._vpath(shown), real, st)

    def _unique(self, name: str) -> str:
        taken = set(self.dirs) | set(self.files)
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name}~{n}", n + 1
        return candidate

    def finish(self) -> dict[str, Node]:
        """Name the images (real names win; a clash keeps the full source name)."""
        out: dict[str, Node] = {**self.dirs, **self.files}
        with_files = [may_have_files(entry) for _vname, _name, entry in self.images]
        wanted = [Wanted(vname, name, (INFO_SUFFIX, FILES_SUFFIX) if files else (INFO_SUFFIX,))
                  for (vname, name, _entry), files in zip(self.images, with_files, strict=True)]
        names = assign_names(wanted, out)
        for (vname, _name, entry), chosen, files in zip(self.images, names, with_files,
                                                        strict=True):
            if chosen is None:
                log.error("%s: no free name for this image; not shown", entry.pieces[0])
                continue
            if chosen != vname:
                log.info("%s: %s is taken; shown as %s", entry.pieces[0], vname, chosen)
            entry.vpath = self._vpath(chosen)
            if entry.error is None:
                out[chosen] = ImageNode(entry)
            out[chosen + INFO_SUFFIX] = InfoNode(entry, self._vpath(chosen + INFO_SUFFIX))
            if files:
                entry.files = FilesView(entry)
                if entry.files.unavailable is None:
                    out[chosen + FILES_SUFFIX] = FilesRootNode(
                        entry.files, self._vpath(chosen + FILES_SUFFIX))
            self.catalog.register(entry)
        self._name_disks(out)
        return dict(sorted(out.items()))

    def _name_disks(self, out: dict[str, Node]) -> None:
        """``DISK.img`` + ``DISK.img.info`` for each saved disk, after the images."""
        wanted = [Wanted(d.plan.file_name, d.plan.file_name, (INFO_SUFFIX,)) for d in self.disks]
        names = assign_names(wanted, out)
        for disk, chosen in zip(self.disks, names, strict=True):
            if chosen is None:
                log.error("%s: no free name for %s; not shown", self.parent.real,
                          disk.plan.file_name)
                continue
            disk.vpath = self._vpath(chosen)
            if not disk.broken:
                out[chosen] = DiskNode(disk)
            out[chosen + INFO_SUFFIX] = DiskInfoNode(disk, self._vpath(chosen + INFO_SUFFIX))
            self.catalog.register(disk)
