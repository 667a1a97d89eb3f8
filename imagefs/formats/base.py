"""What every image format provides to the layers above.

Opening an image happens in two steps so that a mount of thousands of images
stays lazy:

1. ``probe`` (see :mod:`imagefs.formats`) reads only the header and returns
   an :class:`ImageHeader`: enough for the file size in ``ls -l`` and for the
   ``.info`` text.
2. :meth:`ImageHeader.open` reads the bitmap or walks the record stream and
   returns a :class:`BlockImage`, the block map the virtual partition reads
   through.  This is the expensive step; the catalog does it on first read.

A block image maps block numbers ``0 .. total_blocks-1`` to stored data or to
holes.  Bytes from ``total_blocks * block_size`` to ``device_size`` are
zeros (partclone drops partial tails; see docs/formats.md 2.3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from imagefs.formats.groupcheck import GroupChecker
from imagefs.formats.groupsums import GroupSum
from imagefs.io.source import ByteSource
from imagefs.records import field, record
from imagefs.services.indexstore import IndexStore

if TYPE_CHECKING:  # only for annotations: keeps base free of import cycles
    from imagefs.formats.bitmap import RankedBitmap
    from imagefs.formats.layout import GroupedLayout

#: Progress callback: called with the number of bytes just processed.
Progress = Callable[[int], None]


@record(eq=False)
class ImageHeader(ABC):
    """The parsed header of an image, cheap to obtain.

    Compared by identity (``eq=False`` here and in every subclass): a header is
    the live record of one opened source, notes and damage included.  A
    :func:`~imagefs.records.record`, not a dataclass: every mount defines it
    (see :mod:`imagefs.records` for the cost).
    """

    source: ByteSource
    format_name: str          # "partclone", "ntfsclone", "partimage"
    format_version: str       # "2", "1", "10.1", "0.6.1"
    fs_type: str              # as the image names it ("EXTFS", "NTFS", "ext3fs")
    device_size: int          # bytes of the virtual partition
    block_size: int
    total_blocks: int
    used_blocks: int | None   # as stated by the header (None if it has none)
    checksum: str = "none"    # human-readable checksum mode
    notes: list[str] = field(default_factory=list)   # oddities worth reporting
    #: Set when the image is readable only in part (e.g. truncated): the
    #: readable part is served, reads of the rest fail; .info says so.
    damage: str | None = None

    @property
    def path(self) -> str:
        return self.source.name

    def add_note(self, text: str) -> None:
        """Record an oddity once (a header may be opened more than once)."""
        if text not in self.notes:
            self.notes.append(text)

    def mark_damaged(self, text: str) -> None:
        """Record that only part of the image is readable, and why."""
        self.damage = text
        self.add_note(text)

    def fields(self) -> list[tuple[str, str]]:
        """Format-specific header lines for the ``.info`` dump (label, value)."""
        return []

    @abstractmethod
    def open(self, index_store: IndexStore | None = None,
             progress: Progress | None = None) -> BlockImage:
        """Read the block map (bitmap or record index) and return the image."""


class BlockImage(ABC):
    """An opened image: which blocks are stored and how to read them.

    Implementations are thread-safe: all state is built in ``__init__`` and
    only read afterwards; reads go through ``read_at`` of the source.
    """

    header: ImageHeader

    @property
    def block_size(self) -> int:
        return self.header.block_size

    @property
    def total_blocks(self) -> int:
        return self.header.total_blocks

    @property
    def device_size(self) -> int:
        return self.header.device_size

    @property
    @abstractmethod
    def stored_blocks(self) -> int:
        """Number of blocks the image stores (bitmap popcount)."""

    @abstractmethod
    def extents(self, first: int, count: int) -> list[tuple[int, int, bool]]:
        """Split ``[first, first + count)`` into runs ``(start, length, stored)``.

        Runs are consecutive and alternate between stored and not stored;
        ``first + count <= total_blocks``.
        """

    @abstractmethod
    def read_stored(self, first: int, count: int) -> bytes:
        """The data of ``count`` consecutive *stored* blocks from ``first``.

        Returns exactly ``count * block_size`` bytes (a partial final block is
        padded with zeros).  Raises TruncatedError if the source ends early.
        """

    def read_stored_into(self, first: int, skip: int, dest: memoryview) -> None:
        """Fill ``dest`` with stored data starting ``skip`` bytes into block ``first``.

        Every block the range touches is stored (one run of ``extents``).
        This default reads with :meth:`read_stored` and copies; formats with
        a grouped layout scatter straight into ``dest``.
        """
        bs = self.block_size
        count = -(-(skip + len(dest)) // bs)
        data = self.read_stored(first, count)
        dest[:] = memoryview(data)[skip:skip + len(dest)]

    def check_length(self) -> None:  # noqa: B027 - an optional hook, no-op by default
        """Note a truncated or overlong source when its length is free to know.

        The catalog calls it again before showing ``.info``: a compressed
        stream learns its length only once indexed.  Formats without a
        length check keep this no-op.
        """

    @abstractmethod
    def verify(self, progress: Progress | None = None) -> None:
        """Check every checksum; raise ChecksumError naming the first bad place."""

    def set_verify(self, enabled: bool) -> None:  # noqa: B027 - optional, no-op by default
        """Turn verify on read on or off (formats without checksums ignore it)."""

    def stats(self) -> dict[str, object]:
        """Numbers for ``.info`` once the map is built (may be empty)."""
        return {}

    def close(self) -> None:
        self.header.source.close()


class BitmapImage(BlockImage):
    """A block image whose map is a bitmap and whose data a grouped layout.

    Subclasses set ``self.bitmap`` (a RankedBitmap) and ``self.layout`` (a
    GroupedLayout addressed in stored blocks) in ``__init__``.
    """

    bitmap: RankedBitmap
    layout: GroupedLayout

    @property
    def stored_blocks(self) -> int:
        return self.bitmap.count

    # -- verify on read (imagefs.formats.groupcheck) ---------------------------
    def attach_checker(self, algo: GroupSum, label: str = "block group",
                       last_has_record: bool = True) -> None:
        """Check the layout's groups with ``algo`` on their first read (on by default)."""
        layout = self.layout
        data_bytes = self.bitmap.count * self.block_size
        if not layout.group or not data_bytes:
            return
        layout.checker = GroupChecker(layout, data_bytes, algo,
                                      lambda g: self.describe_group(g, label),
                                      self._on_damage, last_has_record)

    def set_verify(self, enabled: bool) -> None:
        if self.layout.checker is not None:
            self.layout.checker.enabled = enabled

    def describe_group(self, group: int, label: str) -> str:
        """A checksum group for messages: its partition byte range and image offset."""
        layout = self.layout
        checker = layout.checker
        assert checker is not None
        bs = self.block_size
        first = group * checker.group_bytes
        last = min(first + checker.group_bytes, checker.data_bytes) - 1
        a = self.bitmap.select(first // bs) * bs + first % bs
        b = self.bitmap.select(last // bs) * bs + last % bs
        return (f"{label} {group} (partition bytes {a}-{b}, "
                f"{self.image_place(layout.data_start + group * layout.stride)})")

    def image_place(self, offset: int) -> str:
        """Name an offset of the image stream in messages."""
        return f"image byte {offset}"

    def _on_damage(self, summary: str, note: str) -> None:
        """A checksum group turned out bad: the image is readable only in part."""
        self.header.damage = summary
        if note:
            self.header.add_note(note)

    def extents(self, first: int, count: int) -> list[tuple[int, int, bool]]:
        return self.bitmap.extents(first, count)

    def read_stored(self, first: int, count: int) -> bytes:
        return self.layout.read_ranks(self.bitmap.rank(first), count)

    def read_stored_into(self, first: int, skip: int, dest: memoryview) -> None:
        # The layout counts data bytes, so this holds for layouts addressed
        # in blocks (partclone) and in bytes (partimage) alike.
        self.layout.read_into(self.bitmap.rank(first) * self.block_size + skip, dest)
