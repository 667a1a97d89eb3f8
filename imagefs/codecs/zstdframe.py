"""zstd frame structure: frame headers, block headers, resume-point helpers.

Shared by the index pass (:mod:`~imagefs.codecs.zstdindex`) and the span
decoder (:mod:`~imagefs.codecs.zstd`); docs/formats.md 6.4.
"""

from __future__ import annotations

import struct

from imagefs.codecs.problems import corrupt
from imagefs.io.source import ByteSource

#: Frames written with --long=31 need a 2 GiB window; libzstd refuses more
#: than 128 MiB unless told.  Memory follows the frame's real window.
MAX_WINDOW = 1 << 31
#: The largest output of one block (the format's Block_Maximum_Size): a
#: bound on what a block not yet decoded can add.
BLOCK_MAX = 128 << 10

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC = 0x184D2A50


class FrameHeader:
    """A parsed zstd frame header (``size`` bytes long)."""

    __slots__ = ("size", "window", "window_byte", "single_segment", "checksum",
                 "content_size", "dict_id")

    def __init__(self, head: bytes, where: str, source: ByteSource) -> None:
        fhd = head[4]
        if fhd & 0x08:
            raise corrupt(source, f"zstd frame at {where} has the reserved header bit set")
        fcs_flag = fhd >> 6
        self.single_segment = bool(fhd & 0x20)
        self.checksum = bool(fhd & 0x04)
        did_size = (0, 1, 2, 4)[fhd & 3]
        fcs_size = (1 if self.single_segment else 0, 2, 4, 8)[fcs_flag]
        pos = 5
        self.window_byte: int | None = None
        if not self.single_segment:
            self.window_byte = head[pos]
            self.window = window_of(head[pos])
            pos += 1
        self.dict_id = int.from_bytes(head[pos:pos + did_size], "little")
        pos += did_size
        self.content_size: int | None = None
        if fcs_size:
            value = int.from_bytes(head[pos:pos + fcs_size], "little")
            self.content_size = value + 256 if fcs_size == 2 else value
        pos += fcs_size
        if self.single_segment:
            self.window = self.content_size or 0
        self.size = pos


def window_of(window_byte: int) -> int:
    """The window size a frame header's window descriptor stands for."""
    base = 1 << (10 + (window_byte >> 3))
    return base + (base >> 3) * (window_byte & 7)


def header_length(fhd: int) -> int:
    single = bool(fhd & 0x20)
    return 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + \
        (1 if single else 0, 2, 4, 8)[fhd >> 6]


def self_contained(body: bytes | memoryview) -> bool:
    """Whether a compressed block (type 2) uses no entropy table of an earlier block.

    It qualifies when its literals are not "treeless" and no sequence table
    is in repeat mode.  Such a boundary is a good resume candidate (repeat
    offsets may still differ: the verification decides).  Raw and RLE
    blocks are never offered: they keep the earlier repeat offsets, and a
    point there diverged later on the bench image.
    """
    if len(body) < 3:
        return False
    b0 = body[0]
    lit_type, size_format = b0 & 3, (b0 >> 2) & 3
    if lit_type == 3:                      # treeless: reuses the last Huffman tree
        return False
    if lit_type in (0, 1):
        if size_format in (0, 2):
            head, size = 1, b0 >> 3
        elif size_format == 1:
            head, size = 2, (b0 >> 4) | (body[1] << 4)
        else:
            head, size = 3, (b0 >> 4) | (body[1] << 4) | (body[2] << 12)
        pos = head + (size if lit_type == 0 else 1)
    else:
        head = (3, 3, 4, 5)[size_format]
        bits = (10, 10, 14, 18)[size_format]
        value = int.from_bytes(body[:head], "little") >> 4
        pos = head + ((value >> bits) & ((1 << bits) - 1))
    if pos >= len(body):
        return False
    n0 = body[pos]
    if n0 == 0:
        return True                        # no sequences
    pos += 1 if n0 < 128 else (2 if n0 < 255 else 3)
    if pos >= len(body):
        return False
    modes = body[pos]
    return all((modes >> shift) & 3 != 3 for shift in (6, 4, 2))


def synth_header(window_byte: int) -> bytes:
    """A frame header to decode blocks from a resume point with the original window."""
    # Descriptor 0: no content size, not single segment, no checksum, no
    # dictionary ID; then the original window descriptor.
    return struct.pack("<IBB", ZSTD_MAGIC, 0, window_byte)
