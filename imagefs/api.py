"""The Python API: open a backup image and read its partition's bytes.

::

    import imagefs

    with imagefs.open("sda1.ext4-ptcl-img.zst.aa") as image:
        print(image.info)                    # the text of VNAME.info
        print(image.header.fs_type, image.size)
        image.seek(1024)
        superblock = image.read(1024)        # a file object of the partition
        data = image.pread(1 << 20, 4096)    # positional, no shared cursor

An :class:`Image` is a read-only, seekable binary file object
(:class:`io.RawIOBase`: ``read``, ``readinto``, ``seek``, ``tell``; wrap it
in :class:`io.BufferedReader` or pass it to :func:`shutil.copyfileobj`)
over the *virtual partition*: exactly the bytes of the partition that was
backed up, as the mount shows them.  It is thread-safe: ``pread`` and
``preadinto`` take no lock and any number of threads may call them at
once; ``read``/``readinto`` share the one file position under a lock.

Errors are :class:`imagefs.errors.ImageError` subclasses whose message
names the file, what is wrong and what to do.
"""

from __future__ import annotations

import io
import os
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from imagefs.blockio.opener import OpenContext, StreamInfo, open_path
from imagefs.blockio.partition import VirtualPartition
from imagefs.catalog.infotext import render_info
from imagefs.formats.base import ImageHeader
from imagefs.services.cache import BlockCache
from imagefs.services.indexstore import IndexStore

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: The block cache of an image opened alone: enough for the decoded spans a
#: sequential reader and a few random ones keep (the mount shares 256 MiB).
DEFAULT_CACHE = 64 << 20


class Image(io.RawIOBase):
    """One backup image opened as its virtual partition (see the module doc)."""

    def __init__(self, path: str | os.PathLike[str], *, index_dir: str | None = None,
                 cache_size: int = DEFAULT_CACHE) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self._ctx = OpenContext(index_store=IndexStore(index_dir), cache=BlockCache(cache_size),
                                progress=False)
        opened = open_path(self.path, self._ctx)
        #: How the image is stored: its pieces, piece kind and compression.
        self.stream: StreamInfo = opened.info
        self._stream = opened.stream
        try:
            #: The parsed header: format, file system type, sizes, checksum mode.
            self.header: ImageHeader = opened.probe()
            image = self.header.open(self._ctx.index_store)
        except BaseException:
            self._stream.close()
            raise
        self._partition = VirtualPartition(image, self._ctx.cache)
        self._pos = 0
        self._lock = threading.Lock()

    # ---------------------------------------------------------- description
    @property
    def size(self) -> int:
        """The virtual partition's size in bytes (the original device size)."""
        return self._partition.size

    @property
    def info(self) -> str:
        """The header dump: the same text as the mount's ``VNAME.info``."""
        image = self._partition.image
        image.check_length()
        state = getattr(self._stream, "index_state", None)
        return render_info(self.header, self.stream, image=image,
                           index_state=state() if state is not None else None)

    def verify(self) -> None:
        """Check every checksum; raises ChecksumError naming the first bad place."""
        self._partition.image.verify()

    # ------------------------------------------------------ positional reads
    def pread(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (short only at the end); thread-safe."""
        return self._partition.read(offset, size)

    def preadinto(self, offset: int, buffer: WriteableBuffer) -> int:
        """Fill ``buffer`` from ``offset``; returns the count (short only at the end)."""
        return self._partition.read_into(offset, memoryview(buffer).cast("B"))

    # ------------------------------------------------------- file interface
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read into ``buffer`` from the file position and advance it."""
        self._check_open()
        with self._lock:
            n = self._partition.read_into(self._pos, memoryview(buffer).cast("B"))
            self._pos += n
            return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        with self._lock:
            if whence == io.SEEK_SET:
                pos = offset
            elif whence == io.SEEK_CUR:
                pos = self._pos + offset
            elif whence == io.SEEK_END:
                pos = self.size + offset
            else:
                raise ValueError(f"invalid whence {whence}")
            if pos < 0:
                raise ValueError("negative seek position")
            self._pos = pos
            return pos

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed imagefs.Image")

    def close(self) -> None:
        """Release decoders and descriptors (rapidgzip ones must close before exit)."""
        if not self.closed:
            self._partition.close()
            self._stream.close()
        super().close()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"imagefs.Image({self.path!r}, {self.header.format_name}, "
                f"{self.header.fs_type or 'unknown'}, {self.size} bytes)")


def open(path: str | os.PathLike[str], *, index_dir: str | None = None,
         cache_size: int = DEFAULT_CACHE) -> Image:
    """Open the backup image at ``path`` (a file, or the first piece of a set).

    ``index_dir`` is where seek indexes of compressed images are kept
    (default ``$XDG_CACHE_HOME/imagefs``); ``cache_size`` bounds the bytes
    of decoded data kept in memory.  Raises ImageError subclasses.
    """
    return Image(path, index_dir=index_dir, cache_size=cache_size)


__all__ = ["Image", "open"]
