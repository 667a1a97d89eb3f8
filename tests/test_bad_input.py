"""Corrupt and hostile input: one clear error, never a traceback or wrong bytes.

Hand-made bytes are derived from a real partclone image and then damaged.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from imagefs.blockio import VirtualPartition
from imagefs.formats.checksums import pc_crc32
from imagefs.errors import (FormatError, ImageError, NotAnImageError, SourceError,
                            TruncatedError)
from imagefs.formats import probe
from imagefs.io import FileSource
from imagefs.blockio.opener import open_image_header


@pytest.fixture(scope="module")
def good(factory) -> bytes:
    return factory.partclone("ext4", (), size_mb=64).path.read_bytes()


def _fix_header_crc(head: bytearray) -> None:
    struct.pack_into("<I", head, 106, pc_crc32(bytes(head[:106])))


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _open(path: Path):
    header, _ = open_image_header(str(path))
    return header.open()


def _cli_one_line(path: Path, verb: str = "info", names: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "imagefs", verb, str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (names or path.name) in lines[0]
    return lines[0]


def _bitmap_bytes(good: bytes) -> int:
    total = struct.unpack_from("<Q", good, 60)[0]
    return (total + 7) // 8


def test_empty_file(tmp_path):
    p = _write(tmp_path, "sda1.ext4-ptcl-img", b"")
    with pytest.raises(NotAnImageError, match="empty"):
        _open(p)
    assert "empty" in _cli_one_line(p)


def test_truncated_header(tmp_path, good):
    p = _write(tmp_path, "trunc-head.img", good[:60])
    with pytest.raises(TruncatedError, match="header"):
        _open(p)
    _cli_one_line(p)


def test_truncated_bitmap(tmp_path, good):
    p = _write(tmp_path, "trunc-bitmap.img", good[:110 + _bitmap_bytes(good) // 2])
    with pytest.raises(TruncatedError, match="bitmap"):
        _open(p)
    _cli_one_line(p, "verify")


def test_truncated_data_area_reads_fail_not_zeros(tmp_path, good):
    cut = len(good) - 3_000_000
    p = _write(tmp_path, "trunc-data.img", good[:cut])
    image = _open(p)           # the header and bitmap are intact
    assert any("truncated" in n for n in image.header.notes)
    vp = VirtualPartition(image)
    # The last stored block lies in the missing part: reading it must fail.
    last = next(b for b in range(image.total_blocks - 1, -1, -1) if image.bitmap.is_set(b))
    with pytest.raises(TruncatedError):
        vp.read(last * image.block_size, 4096)
    # Earlier blocks still read.
    assert len(vp.read(0, 4096)) == 4096
    assert "truncated" in _cli_one_line(p, "verify")


def test_bad_header_crc(tmp_path, good):
    data = bytearray(good)
    data[40] ^= 0x55                       # inside the fs-type field
    p = _write(tmp_path, "badcrc.img", bytes(data))
    with pytest.raises(FormatError, match="header checksum"):
        _open(p)
    assert "header checksum" in _cli_one_line(p)


def test_bad_bitmap_crc(tmp_path, good):
    data = bytearray(good)
    data[110 + 10] ^= 0x01
    p = _write(tmp_path, "badbitmap.img", bytes(data))
    with pytest.raises(FormatError, match="bitmap checksum"):
        _open(p)
    _cli_one_line(p, "verify")


def test_bitmap_count_disagrees_with_header(tmp_path, good):
    data = bytearray(good)
    nb = _bitmap_bytes(good)
    # Set one more bit (a free block) and make the bitmap CRC match again.
    bitmap = bytearray(data[110:110 + nb])
    i = next(i for i in range(nb - 2, -1, -1) if bitmap[i] != 0xFF)
    bitmap[i] |= bitmap[i] + 1                  # sets the lowest clear bit
    data[110:110 + nb] = bitmap
    struct.pack_into("<I", data, 110 + nb, pc_crc32(bytes(bitmap)))
    p = _write(tmp_path, "count.img", bytes(data))
    with pytest.raises(FormatError, match="marks .* blocks as used but the header says"):
        _open(p)
    _cli_one_line(p, "verify")


@pytest.mark.parametrize("field,value,match", [
    ("total", 1 << 50, "absurd"),
    ("total_dev", (1 << 39, 1 << 60), "truncated"),    # huge but consistent: bitmap missing
    ("block_size", 0, "block size"),
    ("block_size", 1 << 30, "block size"),
    ("used", 1 << 40, "used"),
    ("device", 4096, "exceed the device size"),
    ("bpc", 0, "blocks-per-checksum"),
])
def test_absurd_sizes_and_counts(tmp_path, good, field, value, match):
    head = bytearray(good[:110])
    if field == "total":
        struct.pack_into("<Q", head, 60, value)
    elif field == "total_dev":
        struct.pack_into("<Q", head, 60, value[0])
        struct.pack_into("<Q", head, 52, value[1])
    elif field == "block_size":
        struct.pack_into("<I", head, 84, value)
    elif field == "used":
        struct.pack_into("<Q", head, 76, value)
    elif field == "device":
        struct.pack_into("<Q", head, 52, value)
    elif field == "bpc":
        struct.pack_into("<I", head, 100, value)
    _fix_header_crc(head)
    p = _write(tmp_path, f"absurd-{field}.img", bytes(head) + good[110:200_000])
    with pytest.raises(ImageError, match=match):
        _open(p)
    _cli_one_line(p)


def test_garbage_after_valid_magic(tmp_path):
    import random
    junk = b"partclone-image" + random.Random(1).randbytes(5000)
    p = _write(tmp_path, "junk.img", junk)
    with pytest.raises(ImageError):
        _open(p)
    _cli_one_line(p)
    junk2 = b"partclone-image\x00" + random.Random(2).randbytes(14) + b"0002" + \
        random.Random(3).randbytes(5000)
    p2 = _write(tmp_path, "junk2.img", junk2)
    with pytest.raises(ImageError):
        _open(p2)
    _cli_one_line(p2)


def test_missing_piece_in_split_set(tmp_path, good):
    d = tmp_path / "pieces"
    d.mkdir()
    step = 1_000_000
    names = ["aa", "ab", "ac", "ad"]
    for i, suffix in enumerate(names):
        (d / f"sda1.ext4-ptcl-img.{suffix}").write_bytes(good[i * step:(i + 1) * step])
    (d / "sda1.ext4-ptcl-img.ab").unlink()
    first = d / "sda1.ext4-ptcl-img.aa"
    with pytest.raises(SourceError, match=r"\.ab.*missing"):
        open_image_header(str(first))
    assert "missing" in _cli_one_line(first, names="sda1.ext4-ptcl-img.ab")


def test_missing_last_piece_is_truncation(tmp_path, good):
    d = tmp_path / "pieces2"
    d.mkdir()
    step = 4_000_000
    n = -(-len(good) // step)
    for i in range(n - 1):                      # drop the last piece
        (d / f"img.{'abcdefgh'[0]}{'abcdefgh'[i]}").write_bytes(good[i * step:(i + 1) * step])
    header, _ = open_image_header(str(d / "img.aa"))
    image = header.open()
    assert any("truncated" in note for note in header.notes)
    with pytest.raises(ImageError):
        image.verify()


def test_non_image_named_like_one(tmp_path):
    p = _write(tmp_path, "sda1.ext4-ptcl-img", b"this is a shopping list\n" * 100)
    with pytest.raises(NotAnImageError, match="not a partclone"):
        probe(FileSource(str(p)))
    assert "not a partclone" in _cli_one_line(p)


def test_missing_file_is_one_line(tmp_path):
    p = tmp_path / "nope.img"
    with pytest.raises(SourceError):
        open_image_header(str(p))
    _cli_one_line(p)
