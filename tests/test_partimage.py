"""partimage 0.6: real -z0 images (single stream and -V1 volume sets) against
``partimage restore``, plus hand-made hostile streams."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from imagefs.blockio import VirtualPartition
from imagefs.services.cache import BlockCache
from imagefs.formats.checksums import sum32_signed
from imagefs.errors import (ChecksumError, FormatError, ImageError, NotAnImageError,
                            SourceError, TruncatedError, UnsupportedError)
from imagefs.formats import partimage as pi
from imagefs.formats import probe
from imagefs.io.source import MemorySource
from imagefs.blockio.opener import open_image_header
from realimages_partimage import clonezilla_pipeline, partimage_image
from readers import check_both_readers, check_threads

def _cli() -> list[str]:
    """The installed console script beside this interpreter (else ``python -m imagefs``)."""
    script = Path(sys.executable).parent / "imagefs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "imagefs"]


# ------------------------------------------------------------------ real images

@pytest.fixture(scope="module", params=[("ext3", False), ("ext3", True), ("vfat", False),
                                        ("vfat", True)],
                ids=["ext3", "ext3-V1", "vfat", "vfat-V1"])
def pimg(request, factory):
    kind, split = request.param
    return partimage_image(factory, kind, split)


def _open(path):
    header, _ = open_image_header(str(path))
    return header, header.open()


def _volume_files(path: Path) -> list[Path]:
    if not str(path).endswith(".000"):
        return [path]
    stem = str(path)[:-4]
    out = []
    n = 0
    while os.path.exists(f"{stem}.{n:03d}"):
        out.append(Path(f"{stem}.{n:03d}"))
        n += 1
    return out


def _stream_to_file(path: Path, offset: int) -> tuple[Path, int]:
    """The volume file and byte in it that hold logical stream byte ``offset``."""
    pos = 0
    for number, vol in enumerate(_volume_files(path)):
        size = os.path.getsize(vol) - (pi.VOLUME_HEADER if number else 0)
        if offset < pos + size:
            return vol, offset - pos + (pi.VOLUME_HEADER if number else 0)
        pos += size
    raise AssertionError("offset past the stream")


def _partition_offset(image, data_byte: int) -> int:
    bs = image.block_size
    return image.bitmap.select(data_byte // bs) * bs + data_byte % bs


def _data_byte_of_stream(header, offset: int) -> int:
    rel = offset - header.data_start
    group = pi.CHK_DATA + pi.CHK_SIZE
    return rel // group * pi.CHK_DATA + min(rel % group, pi.CHK_DATA)


def test_header(pimg):
    header, image = _open(pimg.path)
    assert header.format_name == "partimage" and header.format_version == "0.6.1"
    assert header.device_size == pimg.source.size
    assert header.fs_type == ("ext3fs" if pimg.source.kind == "ext3" else "fat32")
    assert image.stored_blocks == header.used_blocks > 0
    assert not header.notes
    if str(pimg.path).endswith(".000"):
        assert len(_volume_files(pimg.path)) >= 3


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_whole_partition_equals_restore(pimg, cached):
    _, image = _open(pimg.path)
    vp = VirtualPartition(image, BlockCache(8 << 20) if cached else None)
    h = hashlib.sha256()
    for off in range(0, vp.size, 3 << 20):
        h.update(vp.read(off, 3 << 20))
    assert h.hexdigest() == pimg.sha256


def test_random_reads_cross_blocks_chk_records_and_volumes(pimg):
    header, image = _open(pimg.path)
    truth = Path(pimg.ground_truth).read_bytes()
    data_len = header.used_blocks * header.block_size
    # Partition offsets whose data sit at CHK boundaries and volume cuts.
    targets = [_partition_offset(image, p) for p in range(pi.CHK_DATA, data_len, 5 * pi.CHK_DATA)]
    pos = 0
    for number, vol in enumerate(_volume_files(pimg.path)[:-1]):
        pos += os.path.getsize(vol) - (pi.VOLUME_HEADER if number else 0)
        if header.data_start < pos < header.data_end:
            targets.append(_partition_offset(image, _data_byte_of_stream(header, pos)))
    targets += [0, header.total_blocks * header.block_size - 1, header.device_size - 1]
    rng = random.Random(11)

    def spans_for(vp):
        spans = [(max(0, t - rng.randrange(0, size + 1)), size) for t in targets
                 for size in (1, 17, 1024, 4096, 70000)]
        for _ in range(200):
            size = rng.choice((1, 512, 1024, 4096, 65536, 65552, rng.randrange(1, 1 << 21)))
            spans.append((rng.randrange(0, vp.size), size))
        return spans

    check_both_readers(image, truth, spans_for)


def test_threads_read_the_same_bytes(pimg):
    _, image = _open(pimg.path)
    vp = VirtualPartition(image, BlockCache(2 << 20))
    check_threads(vp, Path(pimg.ground_truth).read_bytes(), seed=17)


def test_verify_passes(pimg):
    _, image = _open(pimg.path)
    seen: list[int] = []
    image.verify(seen.append)
    assert sum(seen) > 0


def _copy_set(pimg, tmp_path: Path) -> Path:
    out = []
    for vol in _volume_files(pimg.path):
        dst = tmp_path / vol.name
        shutil.copyfile(vol, dst)
        out.append(dst)
    return out[0]


def test_flipped_data_byte_names_the_chunk(pimg, tmp_path):
    header, image = _open(pimg.path)
    chunks = header.used_blocks * header.block_size // pi.CHK_DATA
    k = max(1, chunks * 2 // 3)                       # in a later volume for split sets
    offset = header.data_start + k * (pi.CHK_DATA + pi.CHK_SIZE) + 100
    first = _copy_set(pimg, tmp_path)
    vol, local = _stream_to_file(first, offset)
    with open(vol, "r+b") as f:
        f.seek(local)
        b = f.read(1)
        f.seek(local)
        f.write(bytes([b[0] ^ 0x5A]))
    _, broken = _open(first)
    with pytest.raises(ChecksumError) as info:
        broken.verify()
    msg = str(info.value)
    assert f"data chunk #{k} " in msg
    assert f"stream byte {offset - 100}" in msg
    if vol != first:
        assert f"volume {vol.name[-3:].lstrip('0') or '0'}, {vol}" in msg
    assert info.value.block == image.bitmap.select(k * pi.CHK_DATA // header.block_size)
    proc = subprocess.run([*_cli(), "verify", str(first)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"data chunk #{k} " in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["ext3", "vfat"])
def test_truncated_real_image(factory, kind, tmp_path):
    pimg = partimage_image(factory, kind)
    header, image = _open(pimg.path)
    cut = header.data_start + (header.data_end - header.data_start) // 2
    short = tmp_path / "short.img"
    with open(pimg.path, "rb") as src, open(short, "wb") as dst:
        dst.write(src.read(cut))
    h2, im2 = _open(short)
    assert im2.truncated and any("truncated" in n for n in h2.notes)
    vp = VirtualPartition(im2)
    last_block = image.bitmap.select(header.used_blocks - 1)
    with pytest.raises(TruncatedError, match="short.img"):
        vp.read(last_block * header.block_size, 1)
    with pytest.raises(TruncatedError):
        im2.verify()


def test_cli_info_and_verify(factory):
    img = partimage_image(factory, "ext3", True)
    proc = subprocess.run([*_cli(), "info", "--full", str(img.path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "partimage (image format 0.6.1)" in proc.stdout and "ext3fs" in proc.stdout
    assert "volumes" in proc.stdout
    proc = subprocess.run([*_cli(), "verify", str(img.path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _check_stream(img, image) -> None:
    vp = VirtualPartition(image, BlockCache(4 << 20))
    h = hashlib.sha256()
    for off in range(0, vp.size, 4 << 20):
        h.update(vp.read(off, 4 << 20))
    assert h.hexdigest() == img.sha256
    image.verify()


@pytest.mark.parametrize("compress", [1, 2], ids=["gzip", "bzip2"])
def test_partimage_compressed_volumes(factory, compress):
    """partimage's own -z1/-z2: every volume is its own gzip/bzip2 stream."""
    img = partimage_image(factory, "ext3", True, compress=compress)
    header, image = _open(img.path)
    assert header.compression == compress
    assert len(_volume_files(img.path)) >= 2
    _check_stream(img, image)


def test_clonezilla_gzip_split_stream(factory):
    """Clonezilla's way: partimage -z0 to stdout | gzip -c --fast | split -b 1MB."""
    img = clonezilla_pipeline(factory, partimage_image(factory, "vfat"), ["gzip", "-c", "--fast"])
    header, image = _open(img.path)
    assert header.compression == 0
    _check_stream(img, image)


def test_missing_volume_and_impostor(factory, tmp_path):
    img = partimage_image(factory, "vfat", True)
    first = _copy_set(img, tmp_path)
    os.unlink(str(first)[:-4] + ".001")
    with pytest.raises(SourceError, match=r"\.001"):
        _open(first)
    proc = subprocess.run([*_cli(), "info", str(first)], capture_output=True, text=True)
    assert proc.returncode != 0 and ".001" in proc.stderr
    impostor = tmp_path / "other.000"
    impostor.write_bytes(random.Random(1).randbytes(70000))
    with pytest.raises(NotAnImageError, match="other.000"):
        _open(impostor)


# ------------------------------------------------------------------ hand-made bytes

def _sum(block: bytes) -> bytes:
    return struct.pack("<I", sum32_signed(block))


def build(bs: int = 1024, count: int = 300, stored: list[int] | None = None,
          partition: int | None = None, *, seed: int = 5, version: bytes = b"0.6.1",
          vol_id: int = 0xABCDEF, mbrs: int = 0, ext: dict[int, bytes] | None = None,
          bitmap_extra: int = 3, used: int | None = None,
          bitmap_size: int | None = None, volumes: int = 1) -> tuple[bytes, bytes]:
    """A partimage logical stream and the partition it restores to."""
    rng = random.Random(seed)
    stored = sorted(rng.sample(range(count), count // 2) if stored is None else stored)
    partition = count * bs + 700 if partition is None else partition
    bitmap = bytearray((count + 7) // 8 + bitmap_extra)
    for k in stored:
        bitmap[k >> 3] |= 1 << (k & 7)
    data = rng.randbytes(len(stored) * bs)
    part = bytearray(partition)
    for r, k in enumerate(stored):
        part[k * bs:(k + 1) * bs] = data[r * bs:(r + 1) * bs]
    vol = (pi.VOLUME_MAGIC.ljust(32, b"\0") + version.ljust(64, b"\0")
           + struct.pack("<IQ", 0, vol_id)).ljust(512, b"\0")
    main = bytearray(pi.HEADER_BLOCK)
    main[0:6] = b"ext3fs"
    main[4608:4617] = b"/dev/sdz3"
    struct.pack_into("<Q", main, 9592, partition)
    main[9728:9733] = b"0.6.1"
    struct.pack_into("<II", main, 9792, mbrs, 2048)
    local = bytearray(pi.HEADER_BLOCK)
    struct.pack_into("<5Q", local, 0, bs, len(stored) if used is None else used, count,
                     len(bitmap) if bitmap_size is None else bitmap_size, 0)
    info = bytes(rng.randbytes(64)).ljust(pi.HEADER_BLOCK, b"\0")
    ext = ext or {}
    s = bytearray(vol + main + _sum(main) + pi.MAGIC_MBR + bytes(2048 * mbrs))
    for k in range(10):
        payload = ext.get(k, b"")
        s += b"MAGIC-BEGIN-EXT%03d" % k + struct.pack("<I", len(payload)) + payload
    s += pi.MAGIC_LOCAL + local + _sum(local) + pi.MAGIC_BITMAP + bitmap
    s += pi.MAGIC_INFO + info + _sum(info) + pi.MAGIC_DATA
    for j in range(0, len(data), pi.CHK_DATA):
        chunk = data[j:j + pi.CHK_DATA]
        s += chunk
        if len(chunk) == pi.CHK_DATA:
            s += b"CHK\0" + struct.pack("<IQ", zlib.crc32(chunk), j // bs)
    qsum = (sum(s[512:]) + sum(pi.MAGIC_TAIL)) & (2 ** 64 - 1)
    s += pi.MAGIC_TAIL + struct.pack("<QI", qsum, volumes - 1).ljust(pi.HEADER_BLOCK, b"\0")
    return bytes(s), bytes(part)


def _read_all(stream: bytes) -> bytes:
    image = probe(MemorySource(stream, "mem.img")).open()
    return VirtualPartition(image).read(0, image.device_size)


@pytest.mark.parametrize("bs, count", [(1024, 300), (512, 1001), (4096, 70), (3072, 90),
                                       (131072, 3)])
def test_synthetic_layouts(bs, count):
    """Block sizes that divide 64 KiB, do not divide it, and exceed it."""
    stream, part = build(bs, count)
    image = probe(MemorySource(stream, "mem.img")).open()
    vp = VirtualPartition(image)
    assert vp.read(0, vp.size) == part
    rng = random.Random(bs)
    for _ in range(100):
        start = rng.randrange(len(part))
        size = rng.randrange(1, 200000)
        assert vp.read(start, size) == part[start:start + size]
    image.verify()


def test_exact_multiple_of_64k_ends_with_a_chk_record():
    stream, part = build(1024, 256, stored=list(range(128)))   # 128 KiB of data
    image = probe(MemorySource(stream)).open()
    assert image.header.data_end - image.header.data_start == 2 * (65536 + 16)
    assert _read_all(stream) == part
    image.verify()


def test_ext_records_and_mbrs_shift_the_layout():
    stream, part = build(1024, 200, mbrs=2, ext={3: b"x" * 77, 9: b"y"})
    header = probe(MemorySource(stream))
    assert header.mbr_count == 2 and header.ext_lengths[3] == 77
    assert _read_all(stream) == part
    header.open().verify()


def _patch(stream: bytes, offset: int, data: bytes) -> bytes:
    return stream[:offset] + data + stream[offset + len(data):]


LOCAL_AT = 17141 + len(pi.MAGIC_LOCAL)         # with M = 0 and empty EXT records


@pytest.mark.parametrize("mutate, error, text", [
    (lambda s: s[:300], TruncatedError, "volume header is truncated"),
    (lambda s: s[:9000], TruncatedError, "main header is truncated"),
    (lambda s: s[:LOCAL_AT + 100], TruncatedError, "local header is truncated"),
    (lambda s: _patch(s, 600, b"!"), FormatError, "main header checksum"),
    (lambda s: _patch(s, LOCAL_AT + 200, b"!"), FormatError, "local header checksum"),
    (lambda s: _patch(s, 32, b"0.7.0"), UnsupportedError, "0.7.0"),
    (lambda s: _patch(s, 96, b"\x02"), FormatError, "volume 2"),
    (lambda s: _patch(s, 16900, b"MAGIC-BEGIN-XXX"), FormatError, "MAGIC-BEGIN-MBRBACKUP"),
])
def test_bad_headers(mutate, error, text):
    stream, _ = build()
    with pytest.raises(error, match=text) as info:
        probe(MemorySource(mutate(stream), "bad.img")).open()
    assert str(info.value).startswith("bad.img: ")


def _with_local(**fields) -> bytes:
    """A stream whose local header fields are replaced (with a valid sum32s)."""
    stream, _ = build()
    local = bytearray(stream[LOCAL_AT:LOCAL_AT + pi.HEADER_BLOCK])
    names = ("bs", "used", "count", "bitmap", "bad")
    for name, value in fields.items():
        struct.pack_into("<Q", local, 8 * names.index(name), value)
    return _patch(stream, LOCAL_AT, bytes(local) + _sum(local))


@pytest.mark.parametrize("fields, text", [
    ({"count": 1 << 40}, "block count"),
    ({"bs": 0}, "block size 0"),
    ({"bs": 1 << 40}, "block size"),
    ({"used": 10 ** 6}, "used of"),
    ({"bitmap": 1 << 50}, "bitmap size"),
    ({"bitmap": 3}, "bitmap size"),
    ({"count": 10 ** 6}, "exceed the partition size"),
    ({"used": 3}, "bitmap marks"),
])
def test_absurd_sizes_and_counts(fields, text):
    with pytest.raises(ImageError, match=text):
        probe(MemorySource(_with_local(**fields), "bad.img")).open()


def test_absurd_main_header_values():
    stream, _ = build()
    main = bytearray(stream[512:512 + pi.HEADER_BLOCK])
    struct.pack_into("<II", main, 9792, 10 ** 6, 2048)       # a million saved MBRs
    bad = _patch(stream, 512, bytes(main) + _sum(main))
    with pytest.raises(FormatError, match="saved MBRs"):
        probe(MemorySource(bad))
    stream, _ = build(ext={2: b"z"})
    at = stream.index(b"MAGIC-BEGIN-EXT002") + 18
    with pytest.raises(FormatError, match="EXT002 record claims"):
        probe(MemorySource(_patch(stream, at, struct.pack("<I", 1 << 31))))


def test_garbage_after_a_valid_magic():
    rng = random.Random(3)
    for n in range(20):
        junk = pi.VOLUME_MAGIC.ljust(32, b"\0") + rng.randbytes(rng.randrange(0, 40000))
        with pytest.raises(ImageError):
            probe(MemorySource(junk, "junk.img")).open()
    # Valid volume header, then garbage.
    stream, _ = build()
    junk = stream[:512] + rng.randbytes(40000)
    with pytest.raises(ImageError, match="junk.img: "):
        probe(MemorySource(junk, "junk.img")).open()


def test_truncated_data_area_raises_on_read_and_verify():
    stream, part = build(1024, 400)
    header = probe(MemorySource(stream))
    # Inside the 101st stored block (one CHK record lies before it).
    cut = header.data_start + 100 * 1024 + 16 + 10
    image = probe(MemorySource(stream[:cut], "cut.img")).open()
    assert image.truncated
    stored = [k for k in range(400) if image.bitmap.is_set(k)]
    vp = VirtualPartition(image)
    # Verify on read: the chunk the cut falls in cannot be checked, so none of
    # it is served; the complete chunk before it is.
    assert vp.read(stored[10] * 1024, 1024) == part[stored[10] * 1024:stored[10] * 1024 + 1024]
    with pytest.raises(TruncatedError, match="cut.img"):
        vp.read(stored[99] * 1024, 1024)
    # Unchecked (-o verify=off), every byte that survives is served.
    image.set_verify(False)
    assert vp.read(stored[99] * 1024, 1024) == part[stored[99] * 1024:stored[100] * 1024]
    # The 10 bytes of block 101 that survive are served; the next one is not.
    first = stored[100] * 1024
    assert vp.read(first, 10) == part[first:first + 10]
    with pytest.raises(TruncatedError, match="cut.img"):
        vp.read(first + 10, 1)
    with pytest.raises(TruncatedError, match="cut.img"):
        vp.read(first, 1024)
    with pytest.raises(TruncatedError):
        image.verify()


def test_verify_catches_crc_and_sum64_damage():
    stream, _ = build(1024, 400)
    header = probe(MemorySource(stream))
    # A data byte in the second 64 KiB chunk.
    at = header.data_start + 65552 + 5
    bad = _patch(stream, at, bytes([stream[at] ^ 1]))
    chunk_at = header.data_start + 65552
    with pytest.raises(ChecksumError, match=f"data chunk #1 .*stream byte {chunk_at}"):
        probe(MemorySource(bad)).open().verify()
    # The CHK position field is covered by no CRC, only by the tail's sum64.
    at = header.data_start + 65536 + 8
    bad = _patch(stream, at, b"\x99")
    with pytest.raises(ChecksumError, match="sum64"):
        probe(MemorySource(bad)).open().verify()
    # A broken CHK magic.
    at = header.data_start + 65536
    with pytest.raises(ChecksumError, match="no CHK record"):
        probe(MemorySource(_patch(stream, at, b"XYZ"))).open().verify()
    # Garbage where the tail should start.
    with pytest.raises(FormatError, match="MAGIC-BEGIN-TAIL"):
        probe(MemorySource(_patch(stream, header.data_end, b"JUNK"))).open()


def _write_volumes(stream: bytes, directory: Path, cuts: list[int], *, ids=None,
                   numbers=None) -> Path:
    """Split a logical stream into partimage volumes NAME.000 ... at ``cuts``."""
    head = stream[:512]
    bounds = [0] + cuts + [len(stream)]
    for n in range(len(bounds) - 1):
        body = stream[bounds[n]:bounds[n + 1]]
        if n:
            vol_id = struct.unpack_from("<Q", head, 100)[0] if ids is None else ids[n]
            number = n if numbers is None else numbers[n]
            vh = head[:96] + struct.pack("<IQ", number, vol_id) + head[108:]
            body = vh + body
        (directory / f"img.{n:03d}").write_bytes(body)
    return directory / "img.000"


def test_synthetic_volume_sets(tmp_path):
    stream, part = build(1024, 600, stored=list(range(0, 600, 2)) + [1, 3], volumes=5)
    cuts = [40000, 100000, 100001, 200000]
    first = _write_volumes(stream, tmp_path, cuts)
    header, image = _open(first)
    vp = VirtualPartition(image)
    assert vp.read(0, vp.size) == part
    image.verify()
    assert "volume 2" in image.where(100000)
    # The same stream cut into 4 volumes: the tail's volume count disagrees.
    d = tmp_path / "four"
    d.mkdir()
    _, image = _open(_write_volumes(stream, d, cuts[:3]))
    with pytest.raises(FormatError, match="tail says the image has 5 volume"):
        image.verify()
    # A volume of another image, and volumes out of order.
    for name, kw, text in (("other", {"ids": [0, 0, 77, 0, 0]}, "another image"),
                           ("order", {"numbers": [0, 1, 3, 2, 4]}, "is volume 3")):
        d = tmp_path / name
        d.mkdir()
        first = _write_volumes(stream, d, cuts, **kw)
        with pytest.raises(FormatError, match=text):
            _open(first)
