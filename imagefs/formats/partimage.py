"""partimage 0.6 images, docs/formats.md section 4.

The *logical stream* is volume 0 whole plus every later volume minus its
512-byte volume header (the opener builds it, decompressing each volume on
its own when partimage compressed them, and hands the volumes to
:func:`probe` so that they can be checked and named in messages).  Its
layout:

``[volume header 512][main header 16384 + sum32s][MAGIC-BEGIN-MBRBACKUP +
M x 2048][10 x (MAGIC-BEGIN-EXTnnn + u32 len + len bytes)]
[MAGIC-BEGIN-LOCALHEADER + 16384 + sum32s][MAGIC-BEGIN-BITMAP + bitmap]
[MAGIC-BEGIN-INFO + 16384 + sum32s][MAGIC-BEGIN-DATABLOCKS + data]
[MAGIC-BEGIN-TAIL + tail 16384]``

The data are the used blocks in order with a 16-byte ``CHK`` record (magic,
zlib CRC-32, position) after every 65536 data bytes.  Block *k* of the
partition is at ``k * block_size``; the virtual partition's size is the
partition size from the main header.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

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
from imagefs.formats.checksums import crc32, sum32_signed, sum64_unsigned
from imagefs.formats.groupsums import PartimageChk
from imagefs.formats.layout import GroupedLayout
from imagefs.formats.magics import (
    PARTIMAGE_VOLUME_HEADER,
    PARTIMAGE_VOLUME_MAGIC,
    is_partimage,
)
from imagefs.io.source import ByteSource
from imagefs.records import field, record
from imagefs.services.indexstore import IndexStore

VOLUME_MAGIC = PARTIMAGE_VOLUME_MAGIC
#: Every volume starts with this header; later volumes' headers are not part
#: of the logical stream (the opener cuts them off).
VOLUME_HEADER = PARTIMAGE_VOLUME_HEADER
KNOWN_VERSIONS = ("0.6.1", "0.6.0")    # what partimage itself accepts
HEADER_BLOCK = 16384                   # main header, local header, info block, tail
SUM_SIZE = 4                           # the sum32s word after a header block

MAGIC_MBR = b"MAGIC-BEGIN-MBRBACKUP"
MAGIC_LOCAL = b"MAGIC-BEGIN-LOCALHEADER"
MAGIC_BITMAP = b"MAGIC-BEGIN-BITMAP"
MAGIC_INFO = b"MAGIC-BEGIN-INFO"
MAGIC_DATA = b"MAGIC-BEGIN-DATABLOCKS"
MAGIC_TAIL = b"MAGIC-BEGIN-TAIL"
EXT_RECORDS = 10
EXT_RECORD = 22                        # "MAGIC-BEGIN-EXTnnn" + u32 length

CHK_DATA = 65536                       # data bytes covered by one CHK record
CHK_SIZE = 16
CHK_MAGIC = b"CHK\0"

MAIN_OFFSET = VOLUME_HEADER
MBR_OFFSET = MAIN_OFFSET + HEADER_BLOCK + SUM_SIZE       # 16900

# Limits that only a corrupt header exceeds: they keep a hostile file from
# causing huge allocations or absurd loops.
MAX_PARTITION = 1 << 60
MAX_BLOCK_SIZE = 64 << 20
MAX_BLOCKS = 1 << 32                   # partimage's bitmap code uses 32-bit indices
MAX_MBRS = 256
MAX_MBR_SIZE = 1 << 16
MAX_EXT_LENGTH = 16 << 20

COMPRESSION = {0: "none", 1: "gzip", 2: "bzip2", 3: "lzo"}

#: verify reads this many CHK groups (64 KiB + 16 bytes each) per read: ~4 MiB.
_VERIFY_GROUPS = 64


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")



def probe(source: ByteSource, volumes: Sequence[ByteSource] | None = None) -> PartimageHeader:
    """Parse and check the headers up to the bitmap (cheap); ``open`` reads the bitmap.

    ``volumes``: the volume streams (each whole, header included) when the
    image is a volume set; None for a single stream.
    """
    header = PartimageHeader.parse(source)
    header.volumes = list(volumes) if volumes else []
    return header


def _read_exact(source: ByteSource, offset: int, size: int, what: str) -> bytes:
    data = source.read_at(offset, size)
    if len(data) < size:
        raise TruncatedError(source.name, f"partimage {what} is truncated ({len(data)} of "
                             f"{size} bytes at stream byte {offset})", TRUNCATED_HINT)
    return data


def _expect(source: ByteSource, offset: int, magic: bytes) -> None:
    got = _read_exact(source, offset, len(magic), magic.decode() + " marker")
    if got != magic:
        raise FormatError(source.name, f"expected {magic.decode()} at byte {offset} but found "
                          f"{got[:24]!r}", CORRUPT_HINT)


def _check_sum(source: ByteSource, block: bytes, stored: bytes, what: str, at: int) -> None:
    if sum32_signed(block) != struct.unpack("<I", stored)[0]:
        raise FormatError(source.name, f"partimage {what} checksum does not match (block at "
                          f"byte {at})", CORRUPT_HINT)


@record(eq=False)
class PartimageHeader(ImageHeader):
    image_version: str = ""
    volume_id: int = 0
    description: str = ""
    original_device: str = ""
    image_name: str = ""
    host: str = ""
    system: str = ""
    compression: int = 0
    created: str = ""
    mbr_count: int = 0
    ext_lengths: tuple[int, ...] = ()
    bad_blocks: int = 0
    label: str = ""
    bitmap_offset: int = 0
    bitmap_size: int = 0
    data_start: int = 0
    data_end: int = 0          # where MAGIC-BEGIN-TAIL is expected
    expected_size: int = 0     # end of the tail
    #: The volume streams of a volume set, each whole (empty: one stream).
    volumes: list[ByteSource] = field(default_factory=list)

    @classmethod
    def parse(cls, source: ByteSource) -> PartimageHeader:
        name = source.name
        vol = source.read_at(0, VOLUME_HEADER)
        if len(vol) < VOLUME_HEADER:
            raise TruncatedError(name, f"partimage volume header is truncated ({len(vol)} of "
                                 f"{VOLUME_HEADER} bytes)", TRUNCATED_HINT)
        version = _cstr(vol[32:96])
        if version not in KNOWN_VERSIONS:
            raise UnsupportedError(name, f"partimage image format {version[:20]!r} is unknown",
                                   "only partimage 0.6 images (format 0.6.0/0.6.1) are read")
        vol_no, vol_id = struct.unpack_from("<IQ", vol, 96)
        if vol_no != 0:
            raise FormatError(name, f"this is volume {vol_no} of a partimage set, not the "
                              "first", "open the volume ending in .000")
        main = _read_exact(source, MAIN_OFFSET, HEADER_BLOCK + SUM_SIZE, "main header")
        _check_sum(source, main[:HEADER_BLOCK], main[HEADER_BLOCK:], "main header",
                   MAIN_OFFSET)
        compression, = struct.unpack_from("<I", main, 9540)
        tm = struct.unpack_from("<11I", main, 9548)
        partition_size, = struct.unpack_from("<Q", main, 9592)
        mbr_count, mbr_size = struct.unpack_from("<II", main, 9792)
        if not 0 < partition_size <= MAX_PARTITION:
            raise FormatError(name, f"partimage partition size {partition_size} is absurd",
                              CORRUPT_HINT)
        if mbr_count > MAX_MBRS or (mbr_count and not 0 < mbr_size <= MAX_MBR_SIZE):
            raise FormatError(name, f"partimage header lists {mbr_count} saved MBRs of "
                              f"{mbr_size} bytes, which is absurd", CORRUPT_HINT)
        uname = [_cstr(main[9215 + 65 * i:9280 + 65 * i]) for i in range(5)]

        # Everything after the MBR records is found by walking the markers.
        pos = MBR_OFFSET
        _expect(source, pos, MAGIC_MBR)
        pos += len(MAGIC_MBR) + mbr_count * mbr_size
        ext_lengths = []
        for k in range(EXT_RECORDS):
            rec = _read_exact(source, pos, EXT_RECORD, f"EXT{k:03d} record")
            magic = b"MAGIC-BEGIN-EXT%03d" % k
            if rec[:len(magic)] != magic:
                raise FormatError(name, f"expected {magic.decode()} at byte {pos} but found "
                                  f"{rec[:len(magic)]!r}", CORRUPT_HINT)
            length, = struct.unpack_from("<I", rec, len(magic))
            if length > MAX_EXT_LENGTH:
                raise FormatError(name, f"partimage EXT{k:03d} record claims {length} bytes, "
                                  "which is absurd", CORRUPT_HINT)
            ext_lengths.append(length)
            pos += EXT_RECORD + length
        _expect(source, pos, MAGIC_LOCAL)
        pos += len(MAGIC_LOCAL)
        local = _read_exact(source, pos, HEADER_BLOCK + SUM_SIZE, "local header")
        _check_sum(source, local[:HEADER_BLOCK], local[HEADER_BLOCK:], "local header", pos)
        pos += HEADER_BLOCK + SUM_SIZE
        bs, used, count, bitmap_size, bad = struct.unpack_from("<5Q", local, 0)
        if not 0 < bs <= MAX_BLOCK_SIZE:
            raise FormatError(name, f"partimage block size {bs} is out of range", CORRUPT_HINT)
        if count > MAX_BLOCKS:
            raise FormatError(name, f"partimage block count {count} is absurd", CORRUPT_HINT)
        if used > count:
            raise FormatError(name, f"partimage header claims {used} used of {count} blocks",
                              CORRUPT_HINT)
        if count * bs > partition_size:
            raise FormatError(name, f"{count} blocks of {bs} bytes exceed the partition size "
                              f"{partition_size}", CORRUPT_HINT)
        need = (count + 7) // 8
        if not need <= bitmap_size <= 2 * need + (1 << 20):
            raise FormatError(name, f"partimage bitmap size {bitmap_size} does not fit "
                              f"{count} blocks", CORRUPT_HINT)
        _expect(source, pos, MAGIC_BITMAP)
        bitmap_offset = pos + len(MAGIC_BITMAP)
        data_start = (bitmap_offset + bitmap_size + len(MAGIC_INFO) + HEADER_BLOCK + SUM_SIZE
                      + len(MAGIC_DATA))
        data_len = used * bs
        data_end = data_start + data_len + CHK_SIZE * (data_len // CHK_DATA)
        created = (f"{tm[5] + 1900:04d}-{tm[4] + 1:02d}-{tm[3]:02d} "
                   f"{tm[2]:02d}:{tm[1]:02d}:{tm[0]:02d}") if tm[5] else "unknown"
        header = cls(
            source=source, format_name="partimage", format_version=version,
            fs_type=_cstr(main[0:512]), device_size=partition_size, block_size=bs,
            total_blocks=count, used_blocks=used,
            checksum=f"CRC-32 every {CHK_DATA} data bytes, sum64 of the stream, sum32 of "
                     "each header",
            image_version=version, volume_id=vol_id, description=_cstr(main[512:4608]),
            original_device=_cstr(main[4608:5120]), image_name=_cstr(main[5120:9215]),
            host=_cstr(main[9600:9728]) or uname[1],
            system=" ".join(u for u in (uname[0], uname[2], uname[4]) if u),
            compression=compression, created=created, mbr_count=mbr_count,
            ext_lengths=tuple(ext_lengths), bad_blocks=bad, label=_cstr(local[40:104]),
            bitmap_offset=bitmap_offset, bitmap_size=bitmap_size, data_start=data_start,
            data_end=data_end, expected_size=data_end + len(MAGIC_TAIL) + HEADER_BLOCK)
        if compression not in COMPRESSION:
            header.add_note(f"the main header names an unknown compression {compression}")
        return header

    def fields(self) -> list[tuple[str, str]]:
        fields = [
            ("written by", f"partimage (image format {self.image_version})"),
            ("original device", self.original_device or "unknown"),
            ("saved", f"{self.created} (local time of the saving machine)"),
            ("saved on", f"{self.host} ({self.system})" if self.system else self.host),
            ("image file name", self.image_name),
            ("volume compression", COMPRESSION.get(self.compression, str(self.compression))),
            ("image identifier", f"{self.volume_id:016x}"),
            ("saved MBRs", str(self.mbr_count)),
            ("label", self.label or "(none)"),
            ("bad blocks", str(self.bad_blocks)),
            ("bitmap", f"{self.bitmap_size} bytes at stream byte {self.bitmap_offset}"),
            ("data area", f"stream bytes {self.data_start} to {self.data_end}"),
        ]
        if self.description:
            fields.insert(1, ("description", self.description))
        return fields

    def open(self, index_store: IndexStore | None = None,
             progress: Progress | None = None) -> PartimageImage:
        return PartimageImage(self)


class PartimageImage(BitmapImage):
    """A partimage image: the bitmap with rank checkpoints over the data area."""

    header: PartimageHeader

    def __init__(self, header: PartimageHeader) -> None:
        self.header = header
        src = header.source
        name = src.name
        count = header.total_blocks
        after = len(MAGIC_INFO) + HEADER_BLOCK + SUM_SIZE + len(MAGIC_DATA)
        raw = _read_exact(src, header.bitmap_offset, header.bitmap_size + after, "bitmap")
        self.bitmap = RankedBitmap(raw[:header.bitmap_size], count)
        rest = raw[header.bitmap_size:]
        del raw
        if self.bitmap.count != header.used_blocks:
            raise FormatError(name, f"partimage bitmap marks {self.bitmap.count} blocks as used "
                              f"but the header says {header.used_blocks}", CORRUPT_HINT)
        info_at = header.bitmap_offset + header.bitmap_size
        if not rest.startswith(MAGIC_INFO):
            raise FormatError(name, f"expected MAGIC-BEGIN-INFO at byte {info_at}",
                              CORRUPT_HINT)
        info = rest[len(MAGIC_INFO):len(MAGIC_INFO) + HEADER_BLOCK + SUM_SIZE]
        _check_sum(src, info[:HEADER_BLOCK], info[HEADER_BLOCK:], "info block",
                   info_at + len(MAGIC_INFO))
        if not rest.endswith(MAGIC_DATA):
            raise FormatError(name, f"expected MAGIC-BEGIN-DATABLOCKS at byte "
                              f"{header.data_start - len(MAGIC_DATA)}", CORRUPT_HINT)
        # Byte-granular view of the data area: "block" = one data byte, a
        # 16-byte CHK record after every 65536 of them.  It serves every
        # block size, also those that do not divide 64 KiB.
        self.layout = GroupedLayout(src, header.data_start, 1, CHK_DATA, CHK_SIZE)
        # No CHK record follows a final partial chunk: its data cannot be checked.
        self.attach_checker(PartimageChk(CHK_MAGIC), label="data chunk", last_has_record=False)
        self._check_volumes()
        self._length_checked = False
        #: The stream is shorter than its layout (known once its length is free to know).
        self.truncated = False
        self.check_length()

    def _check_volumes(self) -> None:
        """Later volumes must belong to this image and come in order."""
        h = self.header
        for number, volume in enumerate(h.volumes[1:], start=1):
            vol = volume.read_at(0, VOLUME_HEADER)
            if len(vol) < 108 or not is_partimage(vol):
                raise FormatError(volume.name, "this volume does not start with a partimage "
                                  "volume header", "check that the volumes belong together")
            vol_no, vol_id = struct.unpack_from("<IQ", vol, 96)
            if vol_id != h.volume_id:
                raise FormatError(volume.name, f"this volume belongs to another image "
                                  f"(identifier {vol_id:016x}, expected {h.volume_id:016x})",
                                  "put the volumes of one image together")
            if vol_no != number:
                raise FormatError(volume.name, f"this is volume {vol_no} but stands at "
                                  f"position {number} of the set",
                                  "find the missing or misnamed volume")

    def check_length(self) -> None:
        """Compare the stream's length with the layout, when it is free to know."""
        h = self.header
        src = h.source
        size = src.cheap_size()
        if size is None or self._length_checked:
            return
        self._length_checked = True
        if size < h.expected_size:
            self.truncated = True
            h.mark_damaged(f"the image is truncated: {size} of {h.expected_size} bytes; "
                     "reads past the end fail")
            return
        tail = src.read_at(h.data_end, len(MAGIC_TAIL))
        if tail != MAGIC_TAIL:
            raise FormatError(src.name, f"expected MAGIC-BEGIN-TAIL at byte {h.data_end} after "
                              f"{h.used_blocks} blocks of data", CORRUPT_HINT)
        if size > h.expected_size:
            h.add_note(f"{size - h.expected_size} unexpected bytes follow the tail "
                     "(ignored)")

    def stats(self) -> dict[str, object]:
        return {"index memory": self.bitmap.memory_bytes()}

    def read_stored(self, first: int, count: int) -> bytes:
        bs = self.header.block_size
        try:
            return self.layout.read_ranks(self.bitmap.rank(first) * bs, count * bs)
        except TruncatedError:
            raise self._past_the_end(first, first + count - 1) from None

    def read_stored_into(self, first: int, skip: int, dest: memoryview) -> None:
        try:
            super().read_stored_into(first, skip, dest)
        except TruncatedError:
            last = first + (skip + len(dest) - 1) // self.header.block_size
            raise self._past_the_end(first, last) from None

    def _past_the_end(self, first: int, last: int) -> TruncatedError:
        """The error for partition blocks whose data the (truncated) image lacks."""
        return TruncatedError(self.header.path, f"the data of partition blocks {first} to "
                              f"{last} lie past the end of the image", TRUNCATED_HINT)

    def image_place(self, offset: int) -> str:
        return self.where(offset)

    def _volume_count(self) -> int:
        """How many partimage volumes the stream is made of (1 for a single stream)."""
        return max(1, len(self.header.volumes))

    def where(self, offset: int) -> str:
        """Describe a stream offset: the byte, and its volume file for volume sets.

        Volume 0 holds stream bytes from 0 whole; every later volume adds its
        bytes after its own :data:`VOLUME_HEADER`.
        """
        text = f"stream byte {offset}"
        pos = 0
        for number, volume in enumerate(self.header.volumes):
            skip = VOLUME_HEADER if number else 0
            length = volume.size - skip
            if offset < pos + length:
                return f"{text} (volume {number}, {volume.name}, byte {offset - pos + skip})"
            pos += length
        return text

    def verify(self, progress: Progress | None = None) -> None:
        """Check every CHK CRC-32, the tail's sum64 and the stream structure."""
        h = self.header
        src = h.source
        name = h.path
        qsum = 0
        # Headers and bitmap: covered only by the tail's sum (their own
        # sum32s words were checked on open).
        pos = VOLUME_HEADER
        while pos < h.data_start:
            n = min(4 << 20, h.data_start - pos)
            qsum = sum64_unsigned(_read_exact(src, pos, n, "header area"), qsum)
            pos += n
        if progress:
            progress(h.data_start)
        bs = h.block_size
        data_len = self.bitmap.count * bs          # = the header's used count (checked on open)
        group = CHK_DATA + CHK_SIZE
        done = 0                      # data bytes checked
        chunk_no = 0
        while done < data_len:
            take = min(data_len - done, _VERIFY_GROUPS * CHK_DATA)
            full = take // CHK_DATA   # full chunks, each followed by its CHK record
            length = take + full * CHK_SIZE
            raw = src.read_at(pos, length)
            if len(raw) < length:
                raise TruncatedError(name, f"the data area ends at {self.where(pos + len(raw))}; "
                                     f"it should reach stream byte {h.data_end}", TRUNCATED_HINT)
            mv = memoryview(raw)
            for g in range(full):
                at = g * group
                rec = mv[at + CHK_DATA:at + group]
                if rec[:4] != CHK_MAGIC or crc32(mv[at:at + CHK_DATA]) != \
                        struct.unpack_from("<I", rec, 4)[0]:
                    self._bad_chunk(chunk_no, done, pos + at, rec[:4] != CHK_MAGIC)
                chunk_no += 1
                done += CHK_DATA
            done += take - full * CHK_DATA
            qsum = sum64_unsigned(raw, qsum)
            pos += length
            if progress:
                progress(length)
        tail = _read_exact(src, pos, len(MAGIC_TAIL) + HEADER_BLOCK, "tail")
        if tail[:len(MAGIC_TAIL)] != MAGIC_TAIL:
            raise FormatError(name, f"expected MAGIC-BEGIN-TAIL at {self.where(pos)} after the "
                              "data", CORRUPT_HINT)
        qsum = sum64_unsigned(tail[:len(MAGIC_TAIL)], qsum)
        stored, last_volume = struct.unpack_from("<QI", tail, len(MAGIC_TAIL))
        volumes = self._volume_count()
        if last_volume + 1 != volumes:
            raise FormatError(name, f"the tail says the image has {last_volume + 1} volume(s) "
                              f"but {volumes} were read", "put all volumes of the image together")
        if stored != qsum:
            raise ChecksumError(name, f"the stream's sum64 is {qsum:#x} but the tail records "
                                f"{stored:#x}: a header, bitmap or CHK record is damaged",
                                CORRUPT_HINT, image_offset=pos)
        if progress:
            progress(len(tail))

    def _bad_chunk(self, chunk_no: int, data_offset: int, offset: int, bad_record: bool) -> None:
        bs = self.header.block_size
        block = self.bitmap.select(data_offset // bs)
        what = "has no CHK record after it" if bad_record else "does not match its CRC-32"
        raise ChecksumError(self.header.path,
                            f"data chunk #{chunk_no} (64 KiB of data at {self.where(offset)}, "
                            f"holding partition byte {block * bs + data_offset % bs} "
                            f"= block {block}) {what}", CORRUPT_HINT,
                            image_offset=offset, block=block)

