"""ntfsclone special images: real images against ntfsclone's own restore, plus hostile bytes."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from imagefs.blockio import VirtualPartition
from imagefs.services.cache import BlockCache
from imagefs.errors import FormatError, ImageError, TruncatedError, UnsupportedError
from imagefs.formats import ntfsclone, probe
from imagefs.formats.ntfsclone import NtfscloneHeader, RunList
from imagefs.services.indexstore import IndexStore, source_key
from imagefs.io.source import FileSource, MemorySource
from readers import CountingSource, check_both_readers, check_threads

def _cli() -> list[str]:
    """The installed console script beside this interpreter (else ``python -m imagefs``)."""
    script = Path(sys.executable).parent / "imagefs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "imagefs"]


# ------------------------------------------------------------------ real images

@pytest.fixture(scope="module", params=[0, 1024], ids=["100MiB", "100MiB+1KiB"])
def nc(request, factory):
    """ntfsclone image of a filled 100 MiB NTFS (and one whose last cluster is partial)."""
    return factory.ntfsclone(100, 1, request.param)


def _open(path, store=None):
    header = probe(FileSource(str(path)))
    return header, header.open(store)


def _ground_truth(image) -> bytes:
    return Path(image.ground_truth).read_bytes()


def test_header_fields(nc):
    header, image = _open(nc.path)
    assert header.format_name == "ntfsclone" and header.format_version == "10.1"
    assert header.device_size == nc.source.size == os.path.getsize(nc.ground_truth)
    assert header.fs_type == "NTFS"
    # 10.1 saves one record more than the clusters in use: the boot sector copy.
    assert image.stored_blocks == header.inuse + 1
    assert not header.notes
    if nc.source.size % header.block_size:
        assert header.nr_clusters == nc.source.size // header.block_size


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_whole_partition_equals_restore(nc, cached):
    _, image = _open(nc.path)
    vp = VirtualPartition(image, BlockCache(8 << 20) if cached else None)
    h = hashlib.sha256()
    for off in range(0, vp.size, 3 << 20):        # 3 MiB: not a multiple of anything
        h.update(vp.read(off, 3 << 20))
    assert h.hexdigest() == nc.sha256
    assert vp.read(vp.size, 10) == b""


def _interesting_offsets(image) -> list[int]:
    """Partition offsets at run starts and ends and at the device tail."""
    cs = image.block_size
    out = [0, image.device_size - 1, image.device_size - 512, image.device_size - cs]
    for first, count in zip(image.runs.firsts, image.runs.counts):
        out += [first * cs, (first + count) * cs, (first + count) * cs - 1]
    return [o for o in out if 0 <= o < image.device_size]


def test_random_reads(nc):
    _, image = _open(nc.path)
    truth = _ground_truth(nc)
    rng = random.Random(7)

    def spans_for(vp):
        spans = [(max(0, off - size // 2), size) for off in _interesting_offsets(image)
                 for size in (1, 511, 4097, 70000)]
        for _ in range(300):
            size = rng.choice((1, 512, 4096, 4097, 65536, 300000, rng.randrange(1, 2 << 20)))
            spans.append((rng.randrange(0, vp.size), size))
        return spans

    check_both_readers(image, truth, spans_for)


def test_threads_read_the_same_bytes(nc):
    _, image = _open(nc.path)
    vp = VirtualPartition(image, BlockCache(2 << 20))
    check_threads(vp, _ground_truth(nc), seed=17)


def test_verify_passes_and_says_it_has_no_checksums(nc):
    header, image = _open(nc.path)
    seen = []
    image.verify(seen.append)
    assert sum(seen) > 0
    assert header.checksum.startswith("none") and "structure" in header.checksum


def test_index_is_persisted_and_second_open_does_not_walk(nc, tmp_path):
    store = IndexStore(str(tmp_path / "idx"))
    before = ntfsclone.walk_count
    _, first = _open(nc.path, store)
    assert first.index_origin == "built" and ntfsclone.walk_count == before + 1
    counted = CountingSource(FileSource(str(nc.path)))
    second = probe(counted).open(store)
    assert second.index_origin == "loaded"
    assert ntfsclone.walk_count == before + 1          # no second walk
    assert counted.bytes < 4096, "loading the index reads the header, not the stream"
    assert (second.runs.firsts, second.runs.counts, second.runs.offsets) == \
        (first.runs.firsts, first.runs.counts, first.runs.offsets)
    vp = VirtualPartition(second)
    h = hashlib.sha256()
    for off in range(0, vp.size, 4 << 20):
        h.update(vp.read(off, 4 << 20))
    assert h.hexdigest() == nc.sha256
    second.verify()                                     # index agrees with the stream


def test_corrupt_index_is_rebuilt(nc, tmp_path):
    store = IndexStore(str(tmp_path / "idx"))
    _, image = _open(nc.path, store)
    key = source_key(ntfsclone.INDEX_KIND, [str(nc.path)], extra="data@56")
    path = store.path_for(ntfsclone.INDEX_KIND, key)
    raw = bytearray(Path(path).read_bytes())
    raw[-3] ^= 0xFF                                     # breaks the container CRC
    Path(path).write_bytes(bytes(raw))
    _, again = _open(nc.path, store)
    assert again.index_origin == "built"
    # A payload with a valid container CRC but impossible content is refused too.
    bad = bytearray(image.runs.to_bytes(image.header))
    struct.pack_into("<q", bad, ntfsclone._INDEX_HEAD.size, 10 ** 9)   # first run past the end
    store.save(ntfsclone.INDEX_KIND, key, bytes(bad))
    _, third = _open(nc.path, store)
    assert third.index_origin == "built"
    _, fourth = _open(nc.path, store)                   # the rebuilt index was saved again
    assert fourth.index_origin == "loaded"


def _copy(nc, tmp_path, name) -> Path:
    out = tmp_path / name
    shutil.copyfile(nc.path, out)
    return out


def test_structural_corruption_is_detected(nc, tmp_path):
    """No checksums exist, so verify catches damaged records, not damaged data."""
    _, image = _open(nc.path)
    runs = image.runs
    victim = runs.offsets[1] + 3 * (image.block_size + 1)     # a NEXT byte inside run 1
    broken = _copy(nc, tmp_path, "broken.img")
    with open(broken, "r+b") as f:
        f.seek(victim)
        f.write(b"\x07")
    header = probe(FileSource(str(broken)))
    with pytest.raises(FormatError, match=f"image byte {victim}"):
        header.open()
    proc = subprocess.run([*_cli(), "verify", str(broken)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert str(broken) in proc.stderr and f"image byte {victim}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # A GAP count turned non-positive is named too.
    gap = runs.offsets[1] - ntfsclone.GAP_RECORD
    bad_gap = _copy(nc, tmp_path, "badgap.img")
    with open(bad_gap, "r+b") as f:
        f.seek(gap + 1)
        f.write(struct.pack("<q", -5))
    with pytest.raises(FormatError, match="count -5"):
        probe(FileSource(str(bad_gap))).open()


def test_flipped_data_byte_is_not_detectable_but_structure_still_checks(nc, tmp_path):
    _, image = _open(nc.path)
    flipped = _copy(nc, tmp_path, "flipped.img")
    at = image.runs.offsets[0] + 1 + 100                      # data byte of cluster 0
    with open(flipped, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    header, other = _open(flipped)
    other.verify()                                            # nothing to compare it with
    assert VirtualPartition(other).read(100, 1) == bytes([byte[0] ^ 0xFF])


def test_truncated_stream_reads_fail_past_the_cut(nc, tmp_path):
    _, image = _open(nc.path)
    runs = image.runs
    cut_at = runs.offsets[-2] + 5 * (image.block_size + 1) + 10   # inside a data record
    short = tmp_path / "short.img"
    with open(nc.path, "rb") as src, open(short, "wb") as dst:
        dst.write(src.read(cut_at))
    header, cut = _open(short)
    assert cut.runs.truncated
    assert any("truncated" in n for n in header.notes)
    cs = image.block_size
    known = cut.runs.known_clusters
    assert known == runs.firsts[-2] + 5
    truth = _ground_truth(nc)
    vp = VirtualPartition(cut)
    assert vp.read(0, known * cs) == truth[:known * cs]
    with pytest.raises(TruncatedError):
        vp.read(known * cs, 4096)
    with pytest.raises(TruncatedError):
        vp.read(vp.size - 4096, 4096)
    with pytest.raises(TruncatedError):
        cut.verify()


def test_cli_info_and_verify(nc):
    proc = subprocess.run([*_cli(), "info", "--full", str(nc.path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ntfsclone (image format 10.1)" in proc.stdout
    assert "NTFS clusters" in proc.stdout and "backup boot sector" in proc.stdout
    proc = subprocess.run([*_cli(), "verify", str(nc.path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_clonezilla_gzip_split_index_persisted(factory, tmp_path):
    """ntfsclone --save-image --output - | gzip -c --fast | split -b 1MB, opened twice."""
    from imagefs.blockio.opener import OpenContext, open_image_header
    from realimages_partimage import clonezilla_pipeline
    img = clonezilla_pipeline(factory, factory.ntfsclone(100, 1, 0), ["gzip", "-c", "--fast"])
    store = IndexStore(str(tmp_path / "idx"))
    origins = []
    before = ntfsclone.walk_count
    for _ in range(2):
        header, info = open_image_header(str(img.path), OpenContext(index_store=store))
        assert info.codec == "gzip" and len(info.pieces) > 2
        image = header.open(store)
        origins.append(image.index_origin)
        vp = VirtualPartition(image)
        h = hashlib.sha256()
        for off in range(0, vp.size, 4 << 20):
            h.update(vp.read(off, 4 << 20))
        assert h.hexdigest() == img.sha256
    assert origins == ["built", "loaded"] and ntfsclone.walk_count == before + 1


# ------------------------------------------------------------------ hand-made bytes

def make_image(records: list[tuple[str, object]], *, cs: int = 512, device: int | None = None,
               nr: int | None = None, inuse: int | None = None, major: int = 10,
               minor: int = 1, offset: int = 56, endian: str = "<") -> tuple[bytes, bytes]:
    """An ntfsclone stream from ``records`` and the partition it describes.

    Records: ``("next", data)`` or ``("gap", count)``.
    """
    body = bytearray()
    pieces: list[tuple[int, bytes]] = []                 # (cluster, data) of NEXT records
    pos = used = 0
    for kind, value in records:
        if kind == "next":
            body += b"\x01" + value                         # type: ignore[operator]
            pieces.append((pos, value))                     # type: ignore[arg-type]
            pos += 1
            used += 1
        else:
            body += b"\x00" + struct.pack(endian + "q", value)
            pos += max(0, value)                            # type: ignore[arg-type]
    device = pos * cs if device is None else device
    # The partition only for small devices (hostile tests use absurd ones).
    part = bytearray(device if device <= 1 << 24 else 0)
    for cluster, data in pieces:
        if cluster * cs < len(part):
            part[cluster * cs:cluster * cs + len(data)] = data
    nr = (device // cs - 1 if device % cs == 0 else device // cs) if nr is None else nr
    inuse = used - 1 if inuse is None else inuse
    if major >= 10:
        head = ntfsclone.HEADER_V10.pack(ntfsclone.MAGIC, major, minor, cs, device, nr, inuse,
                                         offset)
        head = head.ljust(offset, b"\0")
    else:
        head = ntfsclone.MAGIC + bytes([major, minor]) + struct.pack(endian + "IQqQ", cs,
                                                                     device, nr, inuse)
    return head + bytes(body), bytes(part)


def _blk(i: int, cs: int = 512) -> bytes:
    return bytes([(i * 7 + j) & 0xFF for j in range(cs)])


def _read_all(stream: bytes, name: str = "mem.img") -> bytes:
    header = probe(MemorySource(stream, name))
    vp = VirtualPartition(header.open())
    return vp.read(0, vp.size)


def test_synthetic_runs_gaps_and_partial_tail():
    recs = [("next", _blk(0)), ("next", _blk(1)), ("gap", 3), ("next", _blk(5)),
            ("gap", 1), ("next", _blk(7)), ("next", _blk(8))]
    stream, part = make_image(recs)
    assert _read_all(stream) == part
    # Partial last record: device ends 100 bytes into cluster 9.
    tail = _blk(9)[:100]
    stream, part = make_image(recs + [("next", tail)], device=9 * 512 + 100, nr=9)
    header = probe(MemorySource(stream, "tail.img"))
    image = header.open()
    assert image.extents(0, 10) == [(0, 2, True), (2, 3, False), (5, 1, True), (6, 1, False),
                                    (7, 3, True)]
    vp = VirtualPartition(image)
    assert vp.size == 9 * 512 + 100
    assert vp.read(0, vp.size) == part
    assert vp.read(9 * 512 + 50, 500) == tail[50:]
    image.verify()


def test_version_10_0_without_boot_sector_record():
    recs = [("next", _blk(0)), ("gap", 2), ("next", _blk(3))]
    stream, part = make_image(recs, device=5 * 512, nr=4, inuse=2, minor=0)
    header = probe(MemorySource(stream))
    image = header.open()
    assert not image.runs.truncated and not header.notes
    assert VirtualPartition(image).read(0, 5 * 512) == part
    image.verify()


def test_pre_10_native_headers_both_byte_orders():
    for endian in ("<", ">"):
        recs = [("next", _blk(0)), ("gap", 1), ("next", _blk(2)), ("next", _blk(3))]
        stream, part = make_image(recs, major=3, minor=1, endian=endian)
        header = probe(MemorySource(stream))
        assert header.data_start == 46 and header.endian == endian
        assert _read_all(stream) == part


def test_newer_minor_uses_the_offset_field():
    recs = [("next", _blk(0)), ("gap", 1), ("next", _blk(2))]
    stream, part = make_image(recs, minor=7, offset=128)
    header = probe(MemorySource(stream))
    assert header.data_start == 128 and any("10.7" in n for n in header.notes)
    assert _read_all(stream) == part


@pytest.mark.parametrize("mutate, error, text", [
    (lambda s: s[:30], TruncatedError, "truncated"),
    (lambda s: s[:16] + bytes([11, 0]) + s[18:], UnsupportedError, "11.0"),
    (lambda s: s[:18] + struct.pack("<I", 1000) + s[22:], FormatError, "cluster size 1000"),
    (lambda s: s[:22] + struct.pack("<Q", 1 << 62) + s[30:], FormatError, "absurd"),
    (lambda s: s[:30] + struct.pack("<q", 1 << 40) + s[38:], FormatError, "do not fit"),
    (lambda s: s[:46] + struct.pack("<I", 3) + s[50:], FormatError, "offset 3"),
    (lambda s: s[:16] + bytes(random.Random(1).randbytes(200)), ImageError, None),
])
def test_bad_headers(mutate, error, text):
    stream, _ = make_image([("next", _blk(0)), ("next", _blk(1))])
    with pytest.raises(error, match=text) as info:
        probe(MemorySource(mutate(stream), "bad.img")).open()
    assert str(info.value).startswith("bad.img: ")


@pytest.mark.parametrize("records, text", [
    ([("next", _blk(0)), ("gap", 0), ("next", _blk(2))], "count 0"),
    ([("next", _blk(0)), ("gap", -1), ("next", _blk(2))], "count -1"),
    ([("next", _blk(0)), ("gap", 50)], "beyond the device"),
])
def test_bad_records(records, text):
    stream, _ = make_image(records, device=4 * 512, nr=3, inuse=1)
    with pytest.raises(FormatError, match=text):
        probe(MemorySource(stream, "bad.img")).open()


def test_unknown_record_type_names_the_byte():
    stream, _ = make_image([("next", _blk(0)), ("next", _blk(1)), ("next", _blk(2))])
    at = 56 + 2 * 513
    bad = stream[:at] + b"\x05" + stream[at + 1:]
    with pytest.raises(FormatError, match=f"0x05 at image byte {at}"):
        probe(MemorySource(bad)).open()


def test_absurd_counts_neither_hang_nor_allocate():
    # A huge device and a huge gap: the walk ends at EOF immediately.
    stream, _ = make_image([("next", _blk(0)), ("gap", 1 << 45)], device=1 << 58,
                           nr=(1 << 58) // 512 - 1, inuse=5)
    counted = CountingSource(MemorySource(stream))
    image = probe(counted).open()
    assert counted.calls <= 4, "the walk jumps over the gap; it does not step through it"
    assert image.runs.truncated and image.runs.known_clusters == 1 + (1 << 45)
    with pytest.raises(TruncatedError):
        image.verify()
    # A GAP record cut in the middle of its count.
    stream, _ = make_image([("next", _blk(0)), ("gap", 2), ("next", _blk(3))])
    image = probe(MemorySource(stream[:56 + 513 + 4])).open()
    assert image.runs.truncated and image.runs.known_clusters == 1


def test_truncated_run_drops_only_the_cut_record():
    recs = [("next", _blk(i)) for i in range(6)]
    stream, part = make_image(recs)
    cut = stream[:56 + 4 * 513 + 200]                 # inside cluster 4's data
    image = probe(MemorySource(cut, "cut.img")).open()
    assert image.runs.known_clusters == 4 and image.stored_blocks == 4
    vp = VirtualPartition(image)
    assert vp.read(0, 4 * 512) == part[:4 * 512]
    with pytest.raises(TruncatedError, match="cut.img"):
        vp.read(4 * 512, 1)


def test_runlist_roundtrip_and_validation():
    recs = [("next", _blk(0)), ("gap", 2), ("next", _blk(3)), ("next", _blk(4))]
    stream, _ = make_image(recs)
    header: NtfscloneHeader = probe(MemorySource(stream))     # type: ignore[assignment]
    runs = ntfsclone.walk_records(header)
    again = RunList.from_bytes(runs.to_bytes(header), header, len(stream))
    assert (again.firsts, again.counts, again.offsets, again.stored, again.end) == \
        (runs.firsts, runs.counts, runs.offsets, runs.stored, runs.end)
    with pytest.raises(ValueError):
        RunList.from_bytes(runs.to_bytes(header)[:-8], header, len(stream))
    with pytest.raises(ValueError):
        RunList.from_bytes(runs.to_bytes(header), header, 10)   # ends past the source


@pytest.mark.parametrize("chunk", [20, 513, 700, 4096])
def test_walk_is_independent_of_the_scan_chunk(monkeypatch, chunk):
    """Records straddling chunk ends, lone clusters and long runs give the same run list."""
    rng = random.Random(chunk)
    recs: list[tuple[str, object]] = []
    cluster = 0
    for _ in range(60):
        for _ in range(rng.choice((1, 1, 2, 7))):
            recs.append(("next", _blk(cluster)))
            cluster += 1
        gap = rng.randrange(1, 4)
        recs.append(("gap", gap))
        cluster += gap
    recs.append(("next", _blk(cluster)))
    stream, part = make_image(recs)
    reference = ntfsclone.walk_records(probe(MemorySource(stream)))
    monkeypatch.setattr(ntfsclone, "SCAN_CHUNK", chunk)
    header = probe(MemorySource(stream))
    runs = ntfsclone.walk_records(header)
    assert (runs.firsts, runs.counts, runs.offsets, runs.stored, runs.end) == \
        (reference.firsts, reference.counts, reference.offsets, reference.stored, reference.end)
    assert not runs.truncated and runs.end == len(stream)
    assert VirtualPartition(header.open()).read(0, len(part)) == part
