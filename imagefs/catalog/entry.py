"""One image of the tree: its probed header, lazily opened block map, error state.

Lifecycle: a directory listing creates the entry and :meth:`ImageEntry.probe`
reads the header (cheap: enough for ``ls -l`` and ``.info``); the first
open of the virtual partition builds the block map (bitmap, run list, codec
index) once (:meth:`ImageEntry.partition`); a failure marks the entry
broken (fatal) or damaged (a read failed; the rest may still be readable)
and is logged once.

Threading: ``_lock`` guards ``_partition``, ``error`` and ``read_error``.
``_open_lock`` only serialises the builders of the block map, so one image's
first open makes later readers of the same image wait while every other
image stays readable; it is never held while ``_lock`` is wanted by a
reader.  ``_partition`` is read without the lock on the hot path: it is
published once (a reference assignment) and only ever cleared by
``close``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from imagefs.blockio.opener import OpenedStream, StreamInfo, open_pieces
from imagefs.blockio.partition import VirtualPartition
from imagefs.errors import ChecksumError, ImageError, SourceChangedError, SourceError
from imagefs.formats.base import ImageHeader
from imagefs.io.source import ByteSource

if TYPE_CHECKING:
    from imagefs.catalog.attrs import Attr
    from imagefs.catalog.filesnodes import FilesView
    from imagefs.catalog.tree import Catalog

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class ImageEntry:
    """One image: probed header, lazily opened block map, error state."""

    def __init__(self, catalog: Catalog, vpath: str, pieces: list[str], kind: str,
                 st: os.stat_result, missing: SourceError | None = None) -> None:
        self.catalog = catalog
        self.vpath = vpath              # path of the virtual partition in the mount
        self.pieces = pieces
        self.kind = kind
        self.st = st                    # stat of the first piece (times, owner, mode)
        self.header: ImageHeader | None = None
        self.stream: ByteSource | None = None
        #: partimage volume sets: each volume's own (decompressed) stream.
        self.volumes: list[ByteSource] | None = None
        self.stream_info: StreamInfo = StreamInfo(pieces=list(pieces), piece_kind=kind)
        self.error: str | None = None          # broken: the one-line reason
        self.read_error: str | None = None     # a read failed (rest may still be readable)
        #: A piece of the set is missing: once the set proves to be an image,
        #: it is shown broken with this error (imagefs.io.pieces' one rule).
        self.missing = missing
        #: The files view (VNAME.files), when the listing gave the image one.
        self.files: FilesView | None = None
        self._partition: VirtualPartition | None = None
        self._lock = threading.Lock()
        self._open_lock = threading.Lock()

    # -------------------------------------------------------------- probing
    def probe(self) -> None:
        """Read the header; raises NotAnImageError for files that are no image."""
        opened: OpenedStream = open_pieces(self.pieces, self.kind, self.catalog.ctx)
        self.stream, self.stream_info = opened.stream, opened.info
        self.volumes = list(opened.volumes) if opened.volumes is not None else None
        self.header = opened.probe()
        if self.missing is not None:
            self.fail(self.missing)
        for note in self.stream_info.notes:      # e.g. a piece of the wrong size
            log.warning("%s: %s", self.pieces[0], note)

    def fail(self, exc: BaseException, *, fatal: bool = True, logged: bool = False) -> None:
        """Remember a problem; it is logged once, here, not on every read.

        ``logged``: the layer that raised it has logged it already (a bad
        checksum group is logged by its checker, once per group).
        """
        text = exc.problem if isinstance(exc, ImageError) else str(exc)
        if isinstance(exc, SourceError) and exc.path != self.pieces[0]:
            text = f"{exc.path}: {text}"         # name the piece concerned
        if isinstance(exc, ImageError) and exc.hint:
            text += f"; {exc.hint}"
        with self._lock:
            if fatal:
                first = self.error is None
                self.error = text
            else:
                first = self.read_error is None
                self.read_error = text
        if first and not logged:
            log.error("%s: %s", self.pieces[0], text)

    # -------------------------------------------------------------- reading
    @property
    def opened(self) -> bool:
        return self._partition is not None

    def partition(self) -> VirtualPartition:
        """The virtual partition, opening the block map on first use.

        Raises ImageError when the image is (or turns out to be) broken.
        """
        part = self._partition
        if part is not None and self.error is None:
            return part
        with self._open_lock:
            with self._lock:
                part = self._partition
                error = self.error
            if part is not None and error is None:
                return part
            if error is not None or self.header is None:
                raise SourceError(self.pieces[0], error or "image is not readable")
            header = self.header
            try:
                image = header.open(self.catalog.ctx.index_store)
                image.set_verify(self.catalog.settings.verify)
                part = VirtualPartition(image, self.catalog.cache)
            except ImageError as exc:
                self.fail(exc)
                raise
            except (OSError, ValueError, MemoryError) as exc:
                failure = SourceError(self.pieces[0], f"cannot open the image: {exc}")
                self.fail(failure)
                raise failure from None
            with self._lock:
                self._partition = part
            log.info("%s: opened (%s)", self.vpath, header.format_name)
            return part

    def reader(self) -> EntryReader:
        """The virtual partition's bytes read through this entry (raises ImageError if broken)."""
        return EntryReader(self)

    def read(self, offset: int, size: int) -> bytes:
        """Bytes of the virtual partition (the first failure is logged once)."""
        return self._reading(lambda part: part.read(offset, size))

    def read_into(self, offset: int, dest: memoryview) -> int:
        """Fill ``dest`` from ``offset`` of the virtual partition (the FUSE reply path)."""
        return self._reading(lambda part: part.read_into(offset, dest))

    def _reading(self, read: Callable[[VirtualPartition], _T]) -> _T:
        """Run a read; its first ImageError marks the image damaged (logged once)."""
        try:
            return read(self.partition())
        except SourceChangedError as exc:
            # The backup changed under the mount: nothing more is read from it.
            if self.error is None:
                self.fail(exc)
            raise
        except ImageError as exc:
            if self.error is None:
                self.fail(exc, fatal=False, logged=isinstance(exc, ChecksumError) and exc.logged)
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

    def image_attr(self) -> Attr:
        """The attributes ``VNAME`` shows (they decide who may read the files view too)."""
        return self.catalog.attrs.mirror(self.st, size=self.size,
                                         blocks=-(-self.stored_bytes() // 512))

    def index_state(self) -> str | None:
        """The codec index line for ``.info`` (None for uncompressed images).

        A partimage volume set is one stream per volume, each with its own
        index: the line sums them up.
        """
        if self.volumes is not None:
            states = [_state_of(v) for v in self.volumes]
            known = [s for s in states if s is not None]
            if not known:
                return None
            if len(known) == 1:
                return known[0]
            built = sum("not built" not in s for s in known)
            return (f"{built} of {len(known)} volumes indexed; volume 1: {known[0]}")
        return _state_of(self.stream)

    def info_text(self) -> bytes:
        """The ``.info`` file's content, as of now."""
        mnt = self.catalog.mountpoint
        vpath = os.path.join(mnt, self.vpath.lstrip("/")) if mnt else self.vpath
        part = self._partition
        if part is not None:
            try:
                part.image.check_length()   # free once a compressed stream is indexed
            except ImageError as exc:
                self.fail(exc, fatal=False)
        from imagefs.catalog.filesnodes import FILES_SUFFIX  # filesnodes imports this module
        from imagefs.catalog.infotext import render_info  # (with shlex) only when .info is read
        files = self.files
        files_view = (vpath + FILES_SUFFIX if files is not None and files.unavailable is None
                      else None)
        text = render_info(self.header if not self.error else None, self.stream_info,
                           image=part.image if part is not None else None,
                           error=self.error, virtual_path=vpath,
                           index_state=self.index_state(),
                           root_can_read=self.catalog.root_can_read,
                           files_view=files_view,
                           extra=self.files.describe() if self.files is not None else ())
        if self.read_error and not self.error:
            text += f"{'read error:':<28}{self.read_error}\n"
        return text.encode("utf-8", "surrogateescape")

    def close(self) -> None:
        """Release the image's decoders and descriptors (it reopens on the next read)."""
        with self._lock:
            part, self._partition = self._partition, None
        try:
            if self.files is not None:
                self.files.close()
            if part is not None:
                part.close()
            elif self.stream is not None:
                self.stream.close()
        except Exception:
            log.debug("closing %s failed", self.vpath, exc_info=True)


def _state_of(stream: ByteSource | None) -> str | None:
    """A stream's codec index line, None for uncompressed ones."""
    fn = getattr(stream, "index_state", None)
    if fn is None:
        return None
    try:
        state: str = fn()
        return state
    except Exception as exc:  # noqa: BLE001 - only a description; never fail .info
        return f"unknown ({exc})"


class EntryReader:
    """An entry's virtual partition, read through the entry as ``VNAME`` is.

    For the views built on it (DISK.img, VNAME.files): the entry's reads log
    their first failure and mark the image (a backup changed since mounted
    shows so in its ``.info``), which reading the virtual partition directly
    did not.  The size is the partition's when opened: an entry that failed
    later answers its error, never zeros.
    """

    def __init__(self, entry: ImageEntry) -> None:
        self._entry = entry
        self.size = entry.partition().size

    def read(self, offset: int, size: int) -> bytes:
        return self._entry.read(offset, size)

    def read_into(self, offset: int, dest: memoryview) -> int:
        return self._entry.read_into(offset, dest)
