"""partclone images, format 2 (partclone >= 0.3); format 1 (0.2.x) is in partclone_v1.

Layouts are in docs/formats.md section 2.  Format 2:
``[header 110][bitmap ceil(total/8)][bitmap crc 4][blocks with a checksum
after every bpc blocks, and after a final partial group]``.
Format 1: ``[header 4160][1 byte per block][BiTmAgIc][block + 4-byte crc]*``.
"""

from __future__ import annotations

import struct
from array import array
from typing import TYPE_CHECKING

from imagefs.errors import (
    CORRUPT_HINT,
    TRUNCATED_HINT,
    ChecksumError,
    FormatError,
    TruncatedError,
    UnsupportedError,
)
from imagefs.formats.base import BitmapImage, ImageHeader, Progress
from imagefs.formats.bitmap import RankedBitmap
from imagefs.formats.checksums import pc_crc32
from imagefs.formats.groupsums import GroupSum, PartcloneCrc, PartcloneXxh
from imagefs.formats.layout import GroupedLayout
from imagefs.formats.magics import PARTCLONE_MAGIC
from imagefs.io.source import ByteSource
from imagefs.records import record
from imagefs.services.indexstore import IndexStore

if TYPE_CHECKING:
    from imagefs.formats.partclone_v1 import PartcloneV1Header

MAGIC = PARTCLONE_MAGIC
V2_HEADER_SIZE = 110

CHECKSUM_NONE, CHECKSUM_CRC32, CHECKSUM_XXH64, CHECKSUM_XXH128 = 0x00, 0x20, 0x30, 0x31
CHECKSUM_NAMES = {CHECKSUM_NONE: "none", CHECKSUM_CRC32: "CRC32",
                  CHECKSUM_XXH64: "XXH64", CHECKSUM_XXH128: "XXH3-128"}
CHECKSUM_SIZES = {CHECKSUM_NONE: 0, CHECKSUM_CRC32: 4, CHECKSUM_XXH64: 8, CHECKSUM_XXH128: 16}

MAX_BLOCK_SIZE = 64 << 20       # partclone's own limit
#: Refuse bitmaps that would not fit a sane amount of memory (2**40 blocks =
#: 128 GiB of bitmap: no real file system comes near; a corrupt count does).
MAX_TOTAL_BLOCKS = 1 << 40
#: 1 EiB: no partition comes near; a size of 2**63 or more cannot even be a
#: file size (st_size is signed), so a header claiming it is damaged.
MAX_DEVICE = 1 << 60

_SCAN = 4 << 20                  # verify reads in chunks of about this size


def cstr(raw: bytes) -> str:
    """A NUL-terminated ASCII header field as text (undecodable bytes replaced)."""
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")



def probe(source: ByteSource, volumes: object = None) -> ImageHeader:
    """Parse a partclone header (format 2 or 1); ``volumes`` is unused."""
    head = source.read_at(0, V2_HEADER_SIZE)
    if len(head) < 34:
        raise TruncatedError(source.name, "partclone header is truncated", TRUNCATED_HINT)
    version = head[30:34]
    if head[15] == 0 and version == b"0002":
        return PartcloneV2Header.parse(source, head)
    if version == b"0001":
        # Format 1 (partclone 0.2.x, before 2011) is rare: its module loads only here.
        from imagefs.formats.partclone_v1 import PartcloneV1Header
        return PartcloneV1Header.parse(source)
    raise UnsupportedError(source.name, f"partclone image version {version!r} is not known",
                           "only image formats 1 and 2 exist; the file may be damaged")


def check_data_length(header: PartcloneV2Header | PartcloneV1Header) -> None:
    """Note a short or overlong data area, when the source's length is free to know.

    Called when the image is opened and again before ``.info`` is shown (a
    compressed stream learns its length only once indexed).  A truncated
    image stays readable up to where it ends; reads past that fail.
    """
    size = header.source.cheap_size()
    expected = header.expected_size
    if size is None or not expected:
        return
    if size < expected:
        header.mark_damaged(f"the image is truncated: {size} of {expected} bytes; "
                            "reads past the end fail")
    elif size > expected:
        header.add_note(f"{size - expected} unexpected bytes follow the data area (ignored)")


def check_length(header: PartcloneV2Header | PartcloneV1Header, bitmap_end: int) -> None:
    """Cheap length checks at probe time, when the source size is free to know.

    A source too short for its bitmap is unusable (error); one too short
    for its data area is still partly readable (a note; reads past the end
    fail).
    """
    size = header.source.cheap_size()
    if size is None:
        return
    if size < bitmap_end:
        raise TruncatedError(header.source.name, f"bitmap is truncated: the image has {size} "
                             f"bytes, the bitmap ends at byte {bitmap_end}", TRUNCATED_HINT)
    check_data_length(header)


# --------------------------------------------------------------------------- v2

@record(eq=False)
class PartcloneV2Header(ImageHeader):
    partclone_version: str = ""
    endian: str = "<"
    fs_used_blocks: int = 0
    cpu_bits: int = 64
    checksum_mode: int = 0
    checksum_size: int = 0
    blocks_per_checksum: int = 0
    reseed: bool = True
    bitmap_mode: int = 1
    bitmap_bytes: int = 0
    data_start: int = 0
    expected_size: int = 0

    @classmethod
    def parse(cls, source: ByteSource, head: bytes) -> PartcloneV2Header:
        name = source.name
        if len(head) < V2_HEADER_SIZE:
            raise TruncatedError(name, f"partclone header is truncated ({len(head)} of "
                                 f"{V2_HEADER_SIZE} bytes)", TRUNCATED_HINT)
        marker = head[34:36]
        if marker == b"\xde\xc0":
            e = "<"
        elif marker == b"\xc0\xde":
            e = ">"
        else:
            raise FormatError(name, f"partclone header has an unknown endianness marker "
                              f"{marker.hex()}", CORRUPT_HINT)
        stored_crc = struct.unpack_from(e + "I", head, 106)[0]
        if pc_crc32(head[:106]) != stored_crc:
            raise FormatError(name, "partclone header checksum does not match", CORRUPT_HINT)
        (device_size, total, fs_used, used, block_size, _optsize, bin_version, cpu_bits,
         mode, csize, bpc, reseed, bitmap_mode) = struct.unpack_from(e + "QQQQIIHHHHIBB", head, 52)
        if bin_version != 2:
            raise FormatError(name, f"partclone header says image version {bin_version}, "
                              "not 2", CORRUPT_HINT)
        if not 0 < block_size <= MAX_BLOCK_SIZE:
            raise FormatError(name, f"partclone block size {block_size} is out of range",
                              CORRUPT_HINT)
        if total > MAX_TOTAL_BLOCKS:
            raise FormatError(name, f"partclone block count {total} is absurd", CORRUPT_HINT)
        if device_size > MAX_DEVICE:
            raise FormatError(name, f"partclone device size {device_size} is absurd",
                              CORRUPT_HINT)
        if used > total:
            raise FormatError(name, f"partclone header claims {used} used of {total} "
                              "blocks", CORRUPT_HINT)
        if total * block_size > device_size:
            raise FormatError(name, f"{total} blocks of {block_size} bytes exceed the "
                              f"device size {device_size}", CORRUPT_HINT)
        if mode not in CHECKSUM_SIZES:
            raise UnsupportedError(name, f"partclone checksum mode {mode:#x} is unknown",
                                   "a newer partclone may have written it")
        if CHECKSUM_SIZES[mode] != csize:
            raise FormatError(name, f"checksum size {csize} does not match mode "
                              f"{CHECKSUM_NAMES[mode]}", CORRUPT_HINT)
        if mode != CHECKSUM_NONE and bpc == 0:
            raise FormatError(name, "checksums enabled but blocks-per-checksum is 0",
                              CORRUPT_HINT)
        if bitmap_mode not in (0, 1):
            raise UnsupportedError(name, f"partclone bitmap mode {bitmap_mode} is not "
                                   "supported in format 2", CORRUPT_HINT)
        nb = (total + 7) // 8 if bitmap_mode == 1 else 0
        data_start = V2_HEADER_SIZE + (nb + 4 if bitmap_mode == 1 else 0)
        if bitmap_mode == 0:
            used = total
        groups = -(-used // bpc) if (bpc and csize) else 0
        expected = data_start + used * block_size + groups * csize
        header = cls(
            source=source, format_name="partclone", format_version="2",
            fs_type=cstr(head[36:52]), device_size=device_size, block_size=block_size,
            total_blocks=total, used_blocks=used,
            checksum=CHECKSUM_NAMES[mode] + (f", every {bpc} blocks" if csize else ""),
            partclone_version=cstr(head[16:30]), endian=e, fs_used_blocks=fs_used,
            cpu_bits=cpu_bits, checksum_mode=mode, checksum_size=csize,
            blocks_per_checksum=bpc if csize else 0, reseed=bool(reseed),
            bitmap_mode=bitmap_mode, bitmap_bytes=nb, data_start=data_start,
            expected_size=expected)
        check_length(header, data_start - 4 if bitmap_mode == 1 else data_start)
        if fs_used != used:
            header.add_note(f"the file system reported {fs_used} used blocks; the "
                                f"bitmap holds {used} (normal for btrfs and exFAT)")
        return header

    def fields(self) -> list[tuple[str, str]]:
        return [
            ("written by", f"partclone {self.partclone_version}"),
            ("byte order", "little-endian" if self.endian == "<" else "big-endian"),
            ("writer word size", f"{self.cpu_bits} bits"),
            ("used blocks (file system)", str(self.fs_used_blocks)),
            ("checksum mode", CHECKSUM_NAMES[self.checksum_mode]),
            ("checksum size", f"{self.checksum_size} bytes"),
            ("blocks per checksum", str(self.blocks_per_checksum)),
            ("checksum reseed", "yes" if self.reseed else "no"),
            ("bitmap", f"{self.bitmap_bytes} bytes" if self.bitmap_mode else "none"),
            ("data area", f"bytes {self.data_start} to {self.expected_size}"),
        ]

    def open(self, index_store: IndexStore | None = None,
             progress: Progress | None = None) -> PartcloneImage:
        return PartcloneImage(self)


def _to_lsb_first(raw: bytes, word_bytes: int) -> bytes:
    """A big-endian writer's bitmap (native words) in LSB-first byte order."""
    pad = (-len(raw)) % word_bytes
    words = array({4: "I", 8: "Q"}[word_bytes], raw + b"\0" * pad)
    words.byteswap()
    return words.tobytes()[:len(raw)]


class PartcloneImage(BitmapImage):
    """A partclone format 2 image opened for reading."""

    header: PartcloneV2Header

    def __init__(self, header: PartcloneV2Header) -> None:
        self.header = header
        src = header.source
        name = src.name
        total = header.total_blocks
        if header.bitmap_mode == 1:
            nb = header.bitmap_bytes
            # Check the length first when it is free to know: a corrupt block
            # count must not make us allocate a huge bitmap.  (A compressed
            # stream's read is bounded by what the stream holds.)
            size = src.cheap_size()
            if size is not None and size < V2_HEADER_SIZE + nb + 4:
                present = max(size - V2_HEADER_SIZE - 4, 0)
                raise TruncatedError(name, f"bitmap is truncated ({present} of {nb} bytes "
                                     "present)", TRUNCATED_HINT)
            raw = src.read_at(V2_HEADER_SIZE, nb + 4)
            if len(raw) < nb + 4:
                raise TruncatedError(name, f"bitmap is truncated ({max(len(raw) - 4, 0)} of "
                                     f"{nb} bytes)", TRUNCATED_HINT)
            stored_crc = struct.unpack_from(header.endian + "I", raw, nb)[0]
            bits = raw[:nb]
            if pc_crc32(bits) != stored_crc:
                raise FormatError(name, "bitmap checksum does not match", CORRUPT_HINT)
            if header.endian == ">":
                bits = _to_lsb_first(bits, max(header.cpu_bits // 8, 4))
            self.bitmap = RankedBitmap(bits, total)
            del raw, bits
            if self.bitmap.count != header.used_blocks:
                raise FormatError(name, f"bitmap marks {self.bitmap.count} blocks as used but "
                                  f"the header says {header.used_blocks}", CORRUPT_HINT)
        else:
            self.bitmap = RankedBitmap(b"\xff" * ((total + 7) // 8), total)
        self.layout = GroupedLayout(src, header.data_start, header.block_size,
                                    header.blocks_per_checksum, header.checksum_size)
        group_sum = self._group_sum()
        if group_sum is not None:
            self.attach_checker(group_sum)
        self.check_length()

    def check_length(self) -> None:
        check_data_length(self.header)

    def stats(self) -> dict[str, object]:
        return {"index memory": self.bitmap.memory_bytes()}

    def _group_sum(self) -> GroupSum | None:
        """The algorithm of this image's checksum records (None: it has none).

        One object serves verify on read and :meth:`verify`, so the two can
        never disagree on what a record means.
        """
        h = self.header
        if h.checksum_mode == CHECKSUM_CRC32:
            return PartcloneCrc(h.endian, h.reseed)
        if h.checksum_mode in (CHECKSUM_XXH64, CHECKSUM_XXH128):
            return PartcloneXxh(64 if h.checksum_mode == CHECKSUM_XXH64 else 128,
                                h.endian, h.reseed)
        return None

    def verify(self, progress: Progress | None = None) -> None:
        h = self.header
        src = h.source
        name = src.name
        if h.checksum_mode == CHECKSUM_NONE or not h.checksum_size:
            # Nothing to check but the length.
            if src.size < h.expected_size:
                raise TruncatedError(name, f"data area is truncated: {src.size} of "
                                     f"{h.expected_size} bytes", TRUNCATED_HINT)
            if progress:
                progress(h.expected_size)
            return
        algo = self._group_sum()
        assert algo is not None            # a checksum mode with a size has one
        bs, bpc, cs = h.block_size, h.blocks_per_checksum, h.checksum_size
        used = self.bitmap.count
        group_len = bpc * bs + cs
        groups_per_read = max(1, _SCAN // group_len)
        # A running digest (XXH without reseed) is carried across groups;
        # every other sum decides a group from its data and, for a running
        # CRC register, the record before it.
        state = algo.fresh() if algo.sequential else None
        prev: memoryview | None = None
        rank = 0
        pos = h.data_start
        group_no = 0
        while rank < used:
            nblocks = min(used - rank, groups_per_read * bpc)
            ngroups = -(-nblocks // bpc)
            length = nblocks * bs + ngroups * cs
            raw = src.read_at(pos, length)
            if len(raw) < length:
                raise TruncatedError(name, f"data area ends at byte {pos + len(raw)} "
                                     f"(expected {h.expected_size})", TRUNCATED_HINT)
            mv = memoryview(raw)
            off = 0
            for _ in range(ngroups):
                n = min(bpc, used - rank)
                data = mv[off:off + n * bs]
                record = mv[off + n * bs:off + n * bs + cs]
                if state is not None:
                    state.update(data)
                    ok = algo.digest(state) == bytes(record)
                else:
                    ok = algo.check(group_no, [data], record, prev)
                if algo.needs_prev:
                    prev = memoryview(bytes(record))   # raw is replaced by the next read
                if not ok:
                    block = self.bitmap.select(rank)
                    raise ChecksumError(
                        name, f"checksum of block group {group_no} (blocks with data "
                        f"#{rank}..#{rank + n - 1}, first is partition block {block}) does not "
                        f"match; group starts at image byte {pos + off}", CORRUPT_HINT,
                        image_offset=pos + off, block=block)
                off += n * bs + cs
                rank += n
                group_no += 1
            pos += length
            if progress:
                progress(length)
