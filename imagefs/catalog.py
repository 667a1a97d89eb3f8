"""The tree a mount shows: directories mirrored, images as VNAME + VNAME.info.

The catalog knows nothing about FUSE.  It answers ``lookup(path)`` with a
node and lets each node describe itself (:class:`Attr`), list its children
or be read.  Everything is lazy so that a tree of thousands of images mounts
at once:

* a directory is listed (``scandir`` + a header probe of each file in it) the
  first time someone looks inside it, once, under the directory's lock;
* probing reads only the first bytes of a file (its header): enough to tell
  an image from any other file and to know the virtual partition's size;
* an image's block map (bitmap, record index, codec index) is read on the
  first read of its virtual partition, once, under the image's lock.

Images are recognised by content, never by name alone; the name only
decides the display name (see :func:`virtual_name`) and which files form a
split set.  Symlinks are followed only when their target stays inside a
source root; a directory link back to one of its own ancestors is dropped,
so ``ls -R`` and ``find`` terminate.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import os
import stat
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from imagefs.blockio import VirtualPartition
from imagefs.cache import BlockCache
from imagefs.config import Settings, SourceSpec
from imagefs.errors import ImageError, NotAnImageError, SourceError
from imagefs.formats import probe
from imagefs.formats.base import ImageHeader
from imagefs.indexdir import IndexStore
from imagefs.info import render_info
from imagefs.io.pieces import VOLUMES, collect_piece_set, is_first_piece, split_stem
from imagefs.io.source import ByteSource, FdPool, FileSource, default_fd_pool
from imagefs.opener import OpenContext, StreamInfo, open_stream

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Clonezilla's compressor suffixes (formats.md 5.3) plus the common ``.lz``.
COMPRESSION_SUFFIXES = (".gz", ".zst", ".lz4", ".bz2", ".xz", ".lzo", ".lzip", ".lz",
                        ".lzma", ".lrz", ".uncomp")
INFO_SUFFIX = ".info"


class NotFound(Exception):
    """No node at this path (the FUSE adapter turns it into ENOENT)."""


class NotADirectory(Exception):
    """A path component is a file (ENOTDIR at the FUSE boundary)."""


def virtual_name(name: str, stem: str | None = None) -> str:
    """The display name of an image stored as ``name``.

    ``stem`` is ``name`` without its split suffix when the image is a piece
    set.  A trailing compression suffix is removed afterwards:
    ``sda1.ext4-ptcl-img.gz.aa`` -> ``sda1.ext4-ptcl-img``.
    """
    base = stem if stem is not None else name
    lower = base.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix) and len(base) > len(suffix):
            return base[:-len(suffix)]
    return base


@dataclass(frozen=True)
class Attr:
    """What ``stat`` says about a node (independent of FUSE's structures)."""

    is_dir: bool
    perm: int                 # permission bits
    size: int
    blocks: int               # 512-byte units actually held
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    uid: int
    gid: int
    nlink: int = 1


@dataclass(frozen=True)
class Scope:
    """Where a subtree comes from: its source root and the globs that filter it."""

    root: str                             # real path of the source root
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def _matches(self, rel: str, patterns: tuple[str, ...]) -> bool:
        base = os.path.basename(rel)
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(base, p) for p in patterns)

    def shows_file(self, rel: str) -> bool:
        if self.exclude and self._matches(rel, self.exclude):
            return False
        return not self.include or self._matches(rel, self.include)

    def shows_dir(self, rel: str) -> bool:
        return not (self.exclude and self._matches(rel, self.exclude))


class Node:
    """A node of the mounted tree."""

    def __init__(self, catalog: "Catalog", vpath: str) -> None:
        self.catalog = catalog
        self.vpath = vpath              # path inside the mount, "/" for the root

    def attr(self) -> Attr:
        raise NotImplementedError


class FileNode(Node):
    """A file that is not an image, shown unchanged and read-only."""

    def __init__(self, catalog: "Catalog", vpath: str, real: str, st: os.stat_result) -> None:
        super().__init__(catalog, vpath)
        self.real = real
        self._st = st
        self._source: FileSource | None = None
        self._lock = threading.Lock()

    def attr(self) -> Attr:
        return self.catalog.make_attr(self._st, size=self._st.st_size,
                                      blocks=self._st.st_blocks, plain=True)

    def source(self) -> ByteSource:
        with self._lock:
            if self._source is None:
                self._source = FileSource(self.real, self.catalog.pool, self._st.st_size)
            return self._source


class ImageEntry:
    """One image: probed header, lazily opened block map, error state."""

    def __init__(self, catalog: "Catalog", vpath: str, pieces: list[str], kind: str,
                 st: os.stat_result) -> None:
        self.catalog = catalog
        self.vpath = vpath              # path of the virtual partition in the mount
        self.pieces = pieces
        self.kind = kind
        self.st = st                    # stat of the first piece (times, owner, mode)
        self.header: ImageHeader | None = None
        self.stream: ByteSource | None = None
        self.stream_info: StreamInfo | None = StreamInfo(pieces=list(pieces), piece_kind=kind)
        self.error: str | None = None          # broken: the one-line reason
        self.read_error: str | None = None     # a read failed (rest may still be readable)
        self._partition: VirtualPartition | None = None
        self._lock = threading.Lock()          # error fields
        self._open_lock = threading.Lock()     # held while the block map is built

    # -------------------------------------------------------------- probing
    def probe(self) -> None:
        """Read the header; raises NotAnImageError for files that are no image."""
        stream, info = open_stream(self.pieces, self.kind, self.catalog.ctx)
        self.stream, self.stream_info = stream, info
        self.header = probe(stream)

    def fail(self, exc: BaseException, *, fatal: bool = True) -> None:
        """Remember a problem; it is logged once, here, not on every read."""
        text = exc.problem if isinstance(exc, ImageError) else str(exc)
        if isinstance(exc, ImageError) and exc.hint:
            text += f"; {exc.hint}"
        with self._lock:
            if fatal:
                first = self.error is None
                self.error = text
            else:
                first = self.read_error is None
                self.read_error = text
        if first:
            log.error("%s: %s", self.pieces[0], text)

    # -------------------------------------------------------------- reading
    @property
    def opened(self) -> bool:
        return self._partition is not None

    def partition(self) -> VirtualPartition:
        """The virtual partition, opening the block map on first use.

        The block map (bitmap, run list, codec index) is built once: the
        first reader builds it under the image's open lock while later
        readers of the same image wait; other images are not held up.
        Raises ImageError when the image is (or turns out to be) broken.
        """
        part = self._partition
        if part is not None:
            return part
        with self._open_lock:
            if self._partition is not None:
                return self._partition
            if self.error is not None or self.header is None:
                raise SourceError(self.pieces[0], self.error or "image is not readable")
            header = self.header
            try:
                image = header.open(self.catalog.ctx.index_store)
                part = VirtualPartition(image, self.catalog.cache)
            except ImageError as exc:
                self.fail(exc)
                raise
            except (OSError, ValueError, MemoryError) as exc:
                error = SourceError(self.pieces[0], f"cannot open the image: {exc}")
                self.fail(error)
                raise error from None
            self._partition = part
            log.info("%s: opened (%s)", self.vpath, header.format_name)
            return part

    def read(self, offset: int, size: int) -> bytes:
        return self._reading(lambda part: part.read(offset, size))

    def read_into(self, offset: int, dest: memoryview) -> int:
        """Fill ``dest`` from ``offset`` of the virtual partition (the FUSE reply path)."""
        return self._reading(lambda part: part.read_into(offset, dest))

    def _reading(self, read: Callable[[VirtualPartition], _T]) -> _T:
        """Run a read; its first ImageError marks the image damaged (logged once)."""
        try:
            return read(self.partition())
        except ImageError as exc:
            if self.error is None:
                self.fail(exc, fatal=False)
            raise

    # ----------------------------------------------------------- describing
    @property
    def size(self) -> int:
        return self.header.device_size if self.header is not None and not self.error else 0

    def stored_bytes(self) -> int:
        """Bytes of partition data the backup holds (for ``st_blocks``/du)."""
        header = self.header
        if header is None:
            return 0
        part = self._partition
        if part is not None:
            blocks = part.image.stored_blocks
        else:
            blocks = header.used_blocks if header.used_blocks is not None else header.total_blocks
        return min(blocks * header.block_size, header.device_size)

    def index_state(self) -> str | None:
        fn = getattr(self.stream, "index_state", None)
        if fn is None:
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - only a description; never fail .info
            return f"unknown ({exc})"

    def info_text(self) -> bytes:
        mnt = self.catalog.mountpoint
        vpath = os.path.join(mnt, self.vpath.lstrip("/")) if mnt else self.vpath
        part = self._partition
        text = render_info(self.header if not self.error else None, self.stream_info,
                           image=part.image if part is not None else None,
                           error=self.error, virtual_path=vpath,
                           index_state=self.index_state())
        if self.read_error and not self.error:
            text += f"{'read error:':<28}{self.read_error}\n"
        return text.encode("utf-8", "surrogateescape")

    def close(self) -> None:
        with self._lock:
            part, self._partition = self._partition, None
        try:
            if part is not None:
                part.close()
            elif self.stream is not None:
                self.stream.close()
        except Exception:  # noqa: BLE001 - closing must not stop the unmount
            log.debug("closing %s failed", self.vpath, exc_info=True)


class ImageNode(Node):
    """The virtual partition of an image."""

    def __init__(self, entry: ImageEntry) -> None:
        super().__init__(entry.catalog, entry.vpath)
        self.entry = entry

    def attr(self) -> Attr:
        e = self.entry
        return self.catalog.make_attr(e.st, size=e.size, blocks=-(-e.stored_bytes() // 512))


class InfoNode(Node):
    """``VNAME.info``: the header dump (or the error) of an image."""

    def __init__(self, entry: ImageEntry, vpath: str) -> None:
        super().__init__(entry.catalog, vpath)
        self.entry = entry

    def attr(self) -> Attr:
        size = len(self.entry.info_text())
        return self.catalog.make_attr(self.entry.st, size=size, blocks=-(-size // 512))


class DirNode(Node):
    """A directory: a mirrored source directory, or the synthetic root of several sources."""

    def __init__(self, catalog: "Catalog", vpath: str, real: str | None, st: os.stat_result,
                 scope: Scope | None, rel: str = "", ancestors: frozenset[str] = frozenset(),
                 specs: list[SourceSpec] | None = None) -> None:
        super().__init__(catalog, vpath)
        self.real = real                 # real directory listed, None for a synthetic root
        self._st = st
        self.scope = scope
        self.rel = rel                   # path relative to the scope's root (for globs)
        self.ancestors = ancestors | ({real} if real else frozenset())
        self._specs = specs              # synthetic root: the configured sources
        self._children: dict[str, Node] | None = None
        self._lock = threading.Lock()

    def attr(self) -> Attr:
        return self.catalog.make_attr(self._st, size=self._st.st_size if self.real else 4096,
                                      blocks=0, is_dir=True)

    def children(self) -> dict[str, Node]:
        kids = self._children
        if kids is None:
            with self._lock:
                if self._children is None:
                    self._children = self._populate()
                kids = self._children
        return kids

    def child(self, name: str) -> Node:
        try:
            return self.children()[name]
        except KeyError:
            raise NotFound(name) from None

    # ---------------------------------------------------------- population
    def _populate(self) -> dict[str, Node]:
        builder = _Listing(self)
        if self._specs is not None:
            builder.add_specs(self._specs)
        else:
            builder.scan()
        return builder.finish()


def _orphans(stem: str, first: str, names: set[str]) -> set[str]:
    """Pieces of the set ``first`` starts that lie past a hole (hidden with the set).

    Only names with the same suffix width (or split's widened ``z..`` form)
    count, so ``NAME.info`` or ``NAME.sha`` next to ``NAME.aa`` stay visible.
    """
    parts = split_stem(first)
    assert parts is not None
    width, kind = len(parts[1]), parts[2]
    out = set()
    for other in names:
        p = split_stem(other)
        if p and p[0] == stem and p[2] == kind and (
                len(p[1]) == width or (len(p[1]) > width and p[1].startswith("z"))):
            out.add(other)
    return out


class _Listing:
    """Builds one directory's children: classify, group pieces, probe, name."""

    def __init__(self, parent: DirNode) -> None:
        self.parent = parent
        self.catalog = parent.catalog
        self.dirs: dict[str, Node] = {}
        self.files: dict[str, Node] = {}                   # plain files by shown name
        self.images: list[tuple[str, str, ImageEntry]] = []  # (vname, source name, entry)

    def _vpath(self, name: str) -> str:
        return os.path.join(self.parent.vpath, name)

    def _rel(self, name: str) -> str:
        return os.path.join(self.parent.rel, name) if self.parent.rel else name

    def _resolve(self, path: str, scope: Scope) -> tuple[str, os.stat_result] | None:
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
            got = self._resolve(os.path.join(parent.real, name), scope)
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

    def _classify_files(self, files: dict[str, tuple[str, os.stat_result]]) -> None:
        """Probe piece sets first (their pieces need no probe of their own), then singles."""
        names = set(files)
        claimed: set[str] = set()
        for name in sorted(names):
            if name in claimed or not is_first_piece(name):
                continue
            pset = collect_piece_set(name, names)
            if pset is None:
                continue
            members = [n for n in pset.names if n in files]
            pieces = [files[n][0] for n in members]
            missing = pset.missing
            kind = VOLUMES if pset.kind == VOLUMES else "split"
            entry = ImageEntry(self.catalog, "", pieces, kind, files[name][1])
            if self._probe(entry, name, virtual_name(name, pset.stem), missing=missing):
                claimed.update(members)
                if missing:
                    claimed.update(_orphans(pset.stem, name, names))
        for name in sorted(names - claimed):
            real, st = files[name]
            entry = ImageEntry(self.catalog, "", [real], "single", st)
            if not self._probe(entry, name, virtual_name(name)):
                self.files[name] = FileNode(self.catalog, self._vpath(name), real, st)

    def _probe(self, entry: ImageEntry, name: str, vname: str, missing: str | None = None) -> bool:
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
        except Exception as exc:  # noqa: BLE001 - a hostile file must not break the listing
            log.debug("probing %s failed", entry.pieces[0], exc_info=True)
            entry.fail(exc)
        if missing is not None and entry.error is None:
            entry.fail(SourceError(os.path.join(os.path.dirname(entry.pieces[0]), missing),
                                   f"piece {missing} of the split set is missing",
                                   "find the missing piece; the set cannot be read without it"))
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
                directory, base = os.path.split(real)
                pieces, kind, stem = [real], "single", None
                if is_first_piece(base):
                    try:
                        pset = collect_piece_set(base, os.listdir(directory))
                    except OSError:
                        pset = None
                    if pset is not None:
                        pieces = [os.path.join(directory, n) for n in pset.names]
                        kind, stem = (VOLUMES if pset.kind == VOLUMES else "split"), pset.stem
                entry = ImageEntry(self.catalog, "", pieces, kind, st)
                vname = spec.name or virtual_name(base, stem)
                if not self._probe(entry, base, vname):
                    self.files[self._unique(spec.name or base)] = FileNode(
                        self.catalog, self._vpath(spec.name or base), real, st)

    def _unique(self, name: str) -> str:
        taken = set(self.dirs) | set(self.files)
        candidate, n = name, 2
        while candidate in taken:
            candidate, n = f"{name}~{n}", n + 1
        return candidate

    def finish(self) -> dict[str, Node]:
        """Name the images (real names win; a clash keeps the full source name)."""
        taken = set(self.dirs) | set(self.files)
        out: dict[str, Node] = {**self.dirs, **self.files}
        # Images whose display name is their own name go first: they cannot be
        # blamed for a clash, so they keep it.
        order = sorted(self.images, key=lambda t: (t[0] != t[1], t[1]))
        for vname, name, entry in order:
            chosen = None
            candidates = itertools.chain((vname, name), (f"{name}~{i}" for i in range(2, 1000)))
            for cand in candidates:
                if cand not in taken and cand + INFO_SUFFIX not in taken:
                    chosen = cand
                    break
            if chosen is None:
                log.error("%s: no free name for this image; not shown", entry.pieces[0])
                continue
            if chosen != vname:
                log.info("%s: %s is taken; shown as %s", entry.pieces[0], vname, chosen)
            taken.update((chosen, chosen + INFO_SUFFIX))
            entry.vpath = self._vpath(chosen)
            if entry.error is None:
                out[chosen] = ImageNode(entry)
            out[chosen + INFO_SUFFIX] = InfoNode(entry, self._vpath(chosen + INFO_SUFFIX))
            self.catalog.register(entry)
        return dict(sorted(out.items()))


class Catalog:
    """The whole mounted tree plus the resources its images share."""

    def __init__(self, settings: Settings, source: str | None = None,
                 mountpoint: str | None = None, pool: FdPool | None = None) -> None:
        self.settings = settings
        self.mountpoint = os.path.abspath(mountpoint) if mountpoint else None
        if pool is None:
            pool = FdPool(settings.max_open_files) if settings.max_open_files else default_fd_pool()
        self.pool = pool
        self.cache = BlockCache(settings.cache_size)
        self.ctx = OpenContext(pool=pool, index_store=IndexStore(settings.index_dir),
                               cache=self.cache, progress=False)
        self._entries: list[ImageEntry] = []
        self._entries_lock = threading.Lock()
        self._uid = os.getuid()
        self._gid = os.getgid()
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
        node: Node = self.root
        for part in path.split("/"):
            if not part or part == ".":
                continue
            if not isinstance(node, DirNode):
                raise NotADirectory(path)
            node = node.child(part)
        return node

    def walk(self, node: DirNode | None = None) -> Iterator[Node]:
        """Every node below ``node`` (default: the root), depth first."""
        stack = [node or self.root]
        while stack:
            current = stack.pop()
            yield current
            if isinstance(current, DirNode):
                stack.extend(reversed(list(current.children().values())))

    def inside_sources(self, real: str) -> bool:
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in self.roots)

    def register(self, entry: ImageEntry) -> None:
        with self._entries_lock:
            self._entries.append(entry)

    def entries(self) -> list[ImageEntry]:
        with self._entries_lock:
            return list(self._entries)

    # ------------------------------------------------------------ attributes
    def make_attr(self, st: os.stat_result, *, size: int, blocks: int, is_dir: bool = False,
                  plain: bool = False) -> Attr:
        """Read-only attributes: the source's owner and read/execute bits, or the overrides."""
        s = self.settings
        # Write bits never: the mount is read-only.  Virtual partitions and
        # .info files get no execute bits; mirrored files and directories keep theirs.
        perm = stat.S_IMODE(st.st_mode) & (0o555 if is_dir or plain else 0o444)
        if s.umask is not None:
            perm = (0o555 if is_dir else 0o444) & ~s.umask
        uid = s.uid if s.uid is not None else st.st_uid
        gid = s.gid if s.gid is not None else st.st_gid
        return Attr(is_dir=is_dir, perm=perm, size=size, blocks=blocks,
                    mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, atime_ns=st.st_atime_ns,
                    uid=uid, gid=gid, nlink=2 if is_dir else 1)

    def close(self) -> None:
        """Release every open image and descriptor (decoders must close before exit)."""
        for entry in self.entries():
            entry.close()
        self.pool.close_all()
