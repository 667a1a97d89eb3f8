"""Raw partition data: Clonezilla's ``DEV.dd-ptcl-img*`` and ``DEV.dd-img*`` (partclone.dd, dd).

For file systems partclone cannot handle (BitLocker, unknown types)
Clonezilla saves the partition's bytes with ``partclone.dd`` (since 2013
without a header) or, before 2018, ``dd``: the decompressed stream *is* the
partition (docs/formats.md 5.1).  Having no magic, such an image is
recognised by its Clonezilla name alone, and only after the magic probes
of the real formats found nothing (an old partclone.dd wrote a partclone
header: that is served as partclone).

The size is the partition's: from the partition table Clonezilla saved
beside the image (``DISK-pt.sf``) when the opener finds it, else the
stream's own length.  partclone.dd may leave out a partial last sector:
up to :data:`SHORT_TAIL_OK` missing bytes read as zeros, a stream shorter
than that is truncated (reads past its end fail), one longer is noted.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from imagefs.errors import TRUNCATED_HINT, TruncatedError
from imagefs.formats.base import BlockImage, ImageHeader, Progress
from imagefs.io.scatter import read_into
from imagefs.io.source import ByteSource
from imagefs.records import record
from imagefs.services.indexstore import IndexStore

#: Clonezilla's names of raw images: DEV.dd-ptcl-img[.COMP][.aa] and the
#: legacy DEV.dd-img[.aa] (compression suffixes of docs/formats.md 5.1).
_NAME = re.compile(r"^(?P<dev>.+)\.dd-(?P<ptcl>ptcl-)?img"
                   r"(?:\.(?:gz|bz2|lzo|lzma|xz|lzip|lz|lrz|lz4|zst|uncomp))?"
                   r"(?:\.(?:[a-z]{2,}|\d{3}))?$")

#: Addressing unit (the sector): a partition is whole sectors.
SECTOR = 512
#: Bytes a stream may fall short of the partition and still be whole:
#: partclone.dd drops a partial last 512-byte sector (docs/formats.md 5.6).
SHORT_TAIL_OK = SECTOR - 1

#: A few file systems' magics, to name what the raw bytes hold (.info
#: then gives the fitting fsck command): (offset, magic, name as partclone
#: names it).
_FS_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (3, b"-FVE-FS-", "BitLocker"),
    (3, b"NTFS    ", "NTFS"),
    (3, b"EXFAT   ", "EXFAT"),
    (0x52, b"FAT32   ", "FAT32"),
    (0x36, b"FAT16   ", "FAT16"),
    (0x36, b"FAT12   ", "FAT12"),
    (0, b"XFSB", "XFS"),
    (0x10040, b"_BHRfS_M", "BTRFS"),
    (0, b"LUKS\xba\xbe", "LUKS"),
    (0x438, b"\x53\xef", "EXTFS"),
    (4086, b"SWAPSPACE2", "swap"),
)
#: Bytes read to recognise the content (btrfs's superblock is at 64 KiB).
SNIFF_BYTES = 0x10040 + 8


class RawName(NamedTuple):
    """What a Clonezilla raw image's file name says."""

    device: str          # "sda6", "cciss-c0d0p1"
    tool: str            # "partclone.dd" or "dd"


def raw_name(file_name: str) -> RawName | None:
    """The device and tool of a Clonezilla raw image name, or None if it is none."""
    m = _NAME.match(file_name)
    if m is None:
        return None
    return RawName(m.group("dev"), "partclone.dd" if m.group("ptcl") else "dd")


def content_type(head: bytes) -> str:
    """The file system the first bytes show (partclone's names), or "unknown"."""
    for offset, magic, name in _FS_MAGICS:
        if head[offset:offset + len(magic)] == magic:
            return name
    return "unknown"


@record(eq=False)
class RawHeader(ImageHeader):
    """A raw partition: the stream is the partition's bytes."""

    tool: str = "partclone.dd"
    size_from: str = "the stream's length"
    #: The length of the stream when known at probe time (else learned later).
    stream_size: int | None = None

    def fields(self) -> list[tuple[str, str]]:
        return [("size from", self.size_from)]

    def open(self, index_store: IndexStore | None = None,
             progress: Progress | None = None) -> RawImage:
        return RawImage(self)


def probe_raw(source: ByteSource, name: RawName, size: int | None = None,
              size_from: str = "") -> RawHeader:
    """The header of the raw image in ``source``.

    ``size`` is the partition's size when the opener found it (the saved
    partition table); else the stream's length, which for a compressed
    stream costs one decoding pass (the seek index, kept for later reads).
    """
    stream_size = source.cheap_size()
    if size is None:
        size = stream_size if stream_size is not None else source.size
        stream_size = size
        size_from = "the stream's length"
    head = source.read_at(0, SNIFF_BYTES)
    fs = content_type(head)
    header = RawHeader(source=source, format_name="raw", format_version=name.tool,
                       fs_type=fs if fs != "unknown" else "", device_size=size,
                       block_size=SECTOR, total_blocks=-(-size // SECTOR), used_blocks=None,
                       tool=name.tool, size_from=size_from, stream_size=stream_size)
    if fs == "BitLocker":
        header.add_note("the partition is BitLocker-encrypted; unlock the virtual partition "
                        "with dislocker or cryptsetup (bitlk) to read its files")
    _check_size(header, stream_size)
    return header


def _check_size(header: RawHeader, stream_size: int | None) -> None:
    """Note a stream longer or (much) shorter than the partition, once its length is known."""
    if stream_size is None:
        return
    size = header.device_size
    if stream_size > size:
        header.add_note(f"the stream holds {stream_size - size} bytes past the partition's "
                        f"{size}; they are not shown")
    elif stream_size < size - SHORT_TAIL_OK:
        header.mark_damaged(f"the image is truncated: {stream_size} of {size} bytes; "
                            "reads past the end fail")


class RawImage(BlockImage):
    """Every sector stored: reads go straight to the stream."""

    def __init__(self, header: RawHeader) -> None:
        self.header = header
        self.source = header.source

    @property
    def stored_blocks(self) -> int:
        return self.header.total_blocks

    def extents(self, first: int, count: int) -> list[tuple[int, int, bool]]:
        return [(first, count, True)] if count > 0 else []

    def read_stored(self, first: int, count: int) -> bytes:
        buf = bytearray(count * SECTOR)
        self.read_stored_into(first, 0, memoryview(buf))
        return bytes(buf)

    def read_stored_into(self, first: int, skip: int, dest: memoryview) -> None:
        offset = first * SECTOR + skip
        end = offset + len(dest)
        known = self.source.cheap_size()
        have = end if known is None else min(end, known)
        if have > offset:
            try:
                read_into(self.source, offset, [dest[:have - offset]])
            except TruncatedError:
                if known is not None:
                    raise
                # The stream ends inside this read: learn its length (a
                # compressed stream indexes itself), then fill what it has.
                _ = self.source.size
                if self.source.cheap_size() is None:
                    raise
                self.read_stored_into(first, skip, dest)
                return
        if have < end:
            size = self.source.cheap_size()
            if size is not None and size < self.header.device_size - SHORT_TAIL_OK:
                raise TruncatedError(self.source.name, f"the raw stream ends at byte {size}, "
                                     f"before byte {end} of the partition", TRUNCATED_HINT)
            dest[max(have - offset, 0):] = bytes(end - max(have, offset))

    def check_length(self) -> None:
        h = self.header
        if isinstance(h, RawHeader) and h.stream_size is None:
            size = self.source.cheap_size()
            if size is not None:
                h.stream_size = size
                _check_size(h, size)

    def verify(self, progress: Progress | None = None) -> None:
        """Read the whole stream (its codec checks its own checksums) and its length."""
        chunk = 4 << 20
        pos = 0
        size = self.header.device_size
        while pos < size:
            data = self.source.read_at(pos, min(chunk, size - pos))
            if progress is not None:
                progress(len(data))
            if not data:
                break
            pos += len(data)
        self.check_length()
        if pos < size - SHORT_TAIL_OK:
            raise TruncatedError(self.source.name, f"the raw stream ends at byte {pos}, "
                                 f"before the partition's {size} bytes", TRUNCATED_HINT)
