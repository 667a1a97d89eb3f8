"""partclone images, format 1 (partclone 0.2.x).

``[header 4160][1 byte per block][BiTmAgIc][block + 4-byte crc]*`` (docs/formats.md
section 2).  Kept apart from format 2 (:mod:`imagefs.formats.partclone`, which
probes both) because it is rare: a mount imports it only when it meets one.
"""

from __future__ import annotations

import struct

from imagefs.errors import CORRUPT_HINT, TRUNCATED_HINT, ChecksumError, FormatError, TruncatedError
from imagefs.formats.base import BitmapImage, ImageHeader, Progress
from imagefs.formats.bitmap import RankedBitmap
from imagefs.formats.checksums import pc_crc32_v1_block
from imagefs.formats.groupsums import PartcloneV1Crc
from imagefs.formats.layout import GroupedLayout
from imagefs.formats.partclone import (
    MAX_BLOCK_SIZE,
    MAX_DEVICE,
    MAX_TOTAL_BLOCKS,
    check_data_length,
    check_length,
    cstr,
)
from imagefs.io.source import ByteSource
from imagefs.records import record
from imagefs.services.indexstore import IndexStore

V1_HEADER_SIZE = 4160
V1_BITMAP_MAGIC = b"BiTmAgIc"


@record(eq=False)
class PartcloneV1Header(ImageHeader):
    crc_size: int = 4
    data_start: int = 0
    expected_size: int = 0

    @classmethod
    def parse(cls, source: ByteSource) -> PartcloneV1Header:
        name = source.name
        head = source.read_at(0, 64)
        if len(head) < 64:
            raise TruncatedError(name, "partclone v1 header is truncated", TRUNCATED_HINT)
        block_size, device_size, total, used = struct.unpack_from("<IQQQ", head, 36)
        if not 0 < block_size <= MAX_BLOCK_SIZE:
            raise FormatError(name, f"partclone block size {block_size} is out of range",
                              CORRUPT_HINT)
        if total > MAX_TOTAL_BLOCKS // 8:
            raise FormatError(name, f"partclone block count {total} is absurd", CORRUPT_HINT)
        if device_size > MAX_DEVICE:
            raise FormatError(name, f"partclone device size {device_size} is absurd",
                              CORRUPT_HINT)
        if total * block_size > device_size:
            raise FormatError(name, f"{total} blocks of {block_size} bytes exceed the "
                              f"device size {device_size}", CORRUPT_HINT)
        data_start = V1_HEADER_SIZE + total + len(V1_BITMAP_MAGIC)
        header = cls(source=source, format_name="partclone", format_version="1",
                   fs_type=cstr(head[15:30]), device_size=device_size,
                   block_size=block_size, total_blocks=total, used_blocks=used,
                   checksum="CRC32 (format 1, every block)", data_start=data_start,
                   expected_size=0)   # known only once the bitmap is counted
        check_length(header, data_start)
        return header

    def fields(self) -> list[tuple[str, str]]:
        return [("written by", "partclone 0.2.x (image format 1)"),
                ("checksum size", f"{self.crc_size} bytes after every block"),
                ("data area", f"from byte {self.data_start}")]

    def open(self, index_store: IndexStore | None = None,
             progress: Progress | None = None) -> PartcloneV1Image:
        return PartcloneV1Image(self)


class PartcloneV1Image(BitmapImage):
    """A partclone format 1 image (one bitmap byte per block)."""

    header: PartcloneV1Header

    def __init__(self, header: PartcloneV1Header) -> None:
        self.header = header
        src = header.source
        name = src.name
        total = header.total_blocks
        size = src.cheap_size()
        if size is not None and size < V1_HEADER_SIZE + total + len(V1_BITMAP_MAGIC):
            raise TruncatedError(name, "partclone v1 bitmap is truncated", TRUNCATED_HINT)
        raw = src.read_at(V1_HEADER_SIZE, total + len(V1_BITMAP_MAGIC))
        if len(raw) < total + len(V1_BITMAP_MAGIC):
            raise TruncatedError(name, "partclone v1 bitmap is truncated", TRUNCATED_HINT)
        if raw[total:] != V1_BITMAP_MAGIC:
            raise FormatError(name, "partclone v1 bitmap is not followed by BiTmAgIc",
                              CORRUPT_HINT)
        self.bitmap = RankedBitmap.from_byte_flags(raw[:total], total)
        del raw
        used = self.bitmap.count
        bs = header.block_size
        header.crc_size = _v1_crc_size(src, header.data_start, used, bs, size)
        header.expected_size = header.data_start + used * (bs + header.crc_size)
        if header.used_blocks != used:
            header.add_note(f"the header says {header.used_blocks} used blocks; the "
                            f"bitmap holds {used}")
        self.layout = GroupedLayout(src, header.data_start, bs, 1, header.crc_size)
        self.attach_checker(PartcloneV1Crc(bs), label="stored block")
        self.check_length()

    def check_length(self) -> None:
        check_data_length(self.header)

    def verify(self, progress: Progress | None = None) -> None:
        """Check the running v1 register block by block.

        The v1 CRC only sees each block's first byte (docs/formats.md section
        1), so this mostly checks the stream's structure and length.
        """
        h = self.header
        src = h.source
        bs, cs = h.block_size, h.crc_size
        used = self.bitmap.count
        stride = bs + cs
        per_read = max(1, (4 << 20) // stride)
        state = 0xFFFFFFFF
        rank = 0
        pos = h.data_start
        while rank < used:
            n = min(per_read, used - rank)
            raw = src.read_at(pos, n * stride)
            if len(raw) < n * stride:
                raise TruncatedError(src.name, f"data area ends at byte {pos + len(raw)} "
                                     f"(expected {h.expected_size})", TRUNCATED_HINT)
            for i in range(n):
                off = i * stride
                state = pc_crc32_v1_block(state, raw[off], bs)
                stored = int.from_bytes(raw[off + bs:off + bs + 4], "little")
                if stored != state:
                    raise ChecksumError(src.name, f"checksum after data block #{rank + i} "
                                        f"does not match; block starts at image byte "
                                        f"{pos + off}", CORRUPT_HINT, image_offset=pos + off)
            rank += n
            pos += n * stride
            if progress:
                progress(n * stride)


def _v1_crc_size(src: ByteSource, data_start: int, used: int, bs: int,
                 size: int | None) -> int:
    """4, or 8 for the "64-bit bug" variant (docs/formats.md 2.4).

    Told by the stream length when that is free to know, else by which
    stride makes the second block's CRC register match (the first block's
    matches with both strides).
    """
    if size is not None:
        return 8 if size == data_start + used * (bs + 8) != data_start + used * (bs + 4) else 4
    if used < 2:
        return 4
    head = src.read_at(data_start, 2 * bs + 16)
    if len(head) < 2 * bs + 12:
        return 4
    state = pc_crc32_v1_block(0xFFFFFFFF, head[0], bs)
    for stride in (4, 8):
        second = bs + stride
        if len(head) < second + bs + 4:
            continue
        want = pc_crc32_v1_block(state, head[second], bs)
        if int.from_bytes(head[second + bs:second + bs + 4], "little") == want:
            return stride
    return 4
