"""The index passes' input and output paths (codecs/adapters.py, codecs/zstdstream.py).

The chunk reader reads the next chunk on another thread while a pass
decodes, carrying a block that runs past a chunk's end to the front of the
next: whatever the loads, the bytes must be the file's.  The zstd pass
decodes into reused buffers through the system's libzstd, or, where there is
none, through python-zstandard with a copy: both must give the same index,
and damage must be one clear error from both.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import pyzstd

from imagefs.codecs import adapters, open_decompressed, zstd, zstdstream
from imagefs.codecs.adapters import ChunkReader
from imagefs.codecs.zstdframe import header_length
from imagefs.errors import FormatError
from imagefs.io import FileSource
from imagefs.services.cache import BlockCache
from test_codecs import _original


def _file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = random.Random(5).randbytes(size)
    path = tmp_path / "bytes.bin"
    path.write_bytes(data)
    return path, data


def test_loads_read_ahead_give_the_files_bytes(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapters, "PASS_CHUNK", 4096)
    monkeypatch.setattr(adapters, "CARRY", 1024)
    path, data = _file(tmp_path, 200_000)
    told: list[int] = []
    reader = ChunkReader(FileSource(path), told.append)
    rnd = random.Random(6)
    pos = carried = 0
    while pos < len(data):
        # A pass walks blocks: most fit in the chunk held, some run past
        # its end (carried to the next chunk), now and then one is skipped.
        n = min(rnd.choice([3, 100, 900, 1000, 3000, 5000]), len(data) - pos)
        if reader.base < pos < reader.base + len(reader.view) < pos + n:
            carried += 1
        assert bytes(reader.need(pos, n, "a block")) == data[pos:pos + n]
        pos += n + (rnd.randrange(9000) if rnd.random() < 0.05 else 0)
    assert carried > 10                    # the carry path was taken
    assert sum(told) <= len(data)          # each byte counted once at most


def test_a_failed_read_ahead_fails_the_load_that_needs_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapters, "PASS_CHUNK", 4096)
    path, data = _file(tmp_path, 20_000)

    class Failing(FileSource):
        def read_into(self, offset: int, views: list[memoryview]) -> None:
            if offset >= 8192:
                raise OSError(5, "Input/output error")
            super().read_into(offset, views)

    reader = ChunkReader(Failing(path), lambda n: None)
    assert bytes(reader.need(0, 10, "a block")) == data[:10]
    assert bytes(reader.need(4096, 10, "a block")) == data[4096:4106]
    with pytest.raises(OSError):
        reader.need(8192, 10, "a block")


def _edited_copies(size: int, seed: int) -> bytes:
    """``size`` bytes of copies of test_codecs' ~6 MiB original, each with 64
    bytes changed: long-range matches, as in a partition image."""
    base = bytearray(_original())
    rnd = random.Random(seed)
    data = bytearray()
    while len(data) < size:
        for _ in range(64):
            base[rnd.randrange(len(base))] = rnd.randrange(256)
        data += base
    return bytes(data[:size])


@pytest.fixture(scope="module")
def zstd_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """``zstd -T0 -3`` of 24 MiB (three zstdmt jobs of 8 MiB), as Clonezilla writes it."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    data = _edited_copies(24 << 20, seed=9)
    path = tmp_path_factory.mktemp("zstdpass") / "img.zst"
    path.write_bytes(subprocess.run(["zstd", "-q", "-T0", "-3", "-c"], input=bytes(data),
                                    stdout=subprocess.PIPE, check=True).stdout)
    return path, bytes(data)


def _built(path: Path) -> zstd.ZstdSource:
    stream = open_decompressed(FileSource(path), cache=BlockCache(64 << 20), spacing=16 << 20)
    assert isinstance(stream, zstd.ZstdSource)
    stream.build()
    return stream


def _without_libzstd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zstdstream, "_libzstd", lambda: None)
    # The snapshot compressor looks the library up once, and keeps a
    # context per thread: both forgotten (put back after the test).
    monkeypatch.setattr(zstdstream, "_compress_checked", False)
    monkeypatch.setattr(zstdstream, "_compress_lib", None)
    monkeypatch.setattr(zstdstream, "_compressors", threading.local())


def test_the_pass_decodes_through_the_system_libzstd() -> None:
    if zstdstream._libzstd() is None:
        if os.environ.get("CI"):
            pytest.fail("no libzstd.so.1 on the CI machine (Debian's libzstd1)")
        pytest.skip("this system has no libzstd.so.1: the pass uses python-zstandard")
    assert isinstance(zstdstream.block_decoder(1 << 31), zstdstream._LibzstdBlockDecoder)


def test_both_decoders_build_the_same_index(zstd_stream: tuple[Path, bytes],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path, data = zstd_stream
    if zstdstream._libzstd() is None:
        pytest.skip("this system has no libzstd.so.1")
    first = _built(path)
    _without_libzstd(monkeypatch)
    second = _built(path)
    a, b = first.index, second.index
    assert a is not None and b is not None
    assert (a.size, a.starts, a.meta, a.sums, a.sum_base) == \
           (b.size, b.starts, b.meta, b.sums, b.sum_base)
    # The same snapshots (compressed by libzstd or by pyzstd's own copy).
    assert [pyzstd.decompress(x) for x in a.blobs] == [pyzstd.decompress(x) for x in b.blobs]
    assert a.info["light_points"] > 0 and a.info["resume_points"] > 0   # both kinds tried
    for stream in (first, second):
        for off in range(0, len(data), 3 << 20):
            assert stream.read_at(off, 65536) == data[off:off + 65536]
        stream.close()


@pytest.mark.parametrize("decoder", ["libzstd", "pyzstd"])
def test_snapshots_compress_to_frames_any_zstd_decodes(monkeypatch: pytest.MonkeyPatch,
                                                       decoder: str) -> None:
    if decoder == "pyzstd":
        _without_libzstd(monkeypatch)
        assert zstdstream._compressor_lib() is None
    elif zstdstream._libzstd() is None:
        pytest.skip("this system has no libzstd.so.1")
    window = random.Random(3).randbytes(1 << 16) * 40      # 2.5 MiB, compressible
    frames: list[bytes] = []
    for data in (window, memoryview(window)[7:], b""):
        frames.append(zstdstream.compress_frame(data, 1))
        assert pyzstd.decompress(frames[-1]) == bytes(data)
    assert len(frames[0]) < len(window) // 10
    other: list[bytes] = []                                  # a second thread, its own context
    thread = threading.Thread(target=lambda: other.append(zstdstream.compress_frame(window, 1)))
    thread.start()
    thread.join()
    assert pyzstd.decompress(other[0]) == window


def test_a_window_larger_than_a_segment(tmp_path: Path) -> None:
    """``zstd --long=25``: a 32 MiB window, matches ~6 MiB back (beyond the
    4 MiB segments the pass uses for small windows): the buffer-less decoder
    reads them from the pass's own segments, which must hold the window."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    data = _edited_copies(48 << 20, seed=11)
    path = tmp_path / "long.zst"
    path.write_bytes(subprocess.run(["zstd", "-q", "-T0", "-3", "--long=25", "-c"],
                                    input=bytes(data), stdout=subprocess.PIPE,
                                    check=True).stdout)
    stream = _built(path)
    index = stream.index
    assert index is not None and index.size == len(data)
    assert index.info["resume_points"] > 0          # 32 MiB snapshots were taken
    for off in range(0, len(data), 5 << 20):
        assert stream.read_at(off, 1 << 20) == data[off:off + (1 << 20)]
    stream.close()


def _block_types(raw: bytes) -> set[int]:
    """The types of the blocks of the one frame in ``raw``."""
    pos = header_length(raw[4])
    types = set()
    while True:
        bh = int.from_bytes(raw[pos:pos + 3], "little")
        types.add((bh >> 1) & 3)
        pos += 3 + (1 if (bh >> 1) & 3 == 1 else bh >> 3)
        if bh & 1:
            return types


@pytest.mark.parametrize("decoder", ["libzstd", "python-zstandard"])
def test_raw_and_rle_blocks_keep_the_history_of_the_blocks_after_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoder: str) -> None:
    """The block API decodes compressed blocks only; raw and RLE blocks are
    copied or filled by the pass and announced to libzstd: compressed blocks
    after them match into them (the same text again after each)."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    if decoder == "python-zstandard":
        _without_libzstd(monkeypatch)
    elif zstdstream._libzstd() is None:
        pytest.skip("this system has no libzstd.so.1")
    rnd = random.Random(3)
    text = _original()[:300_000]
    data = bytearray()
    for i in range(12):
        noise = rnd.randbytes(200_000)              # raw blocks
        data += noise + bytes([i]) * 300_000 + text + noise[:50_000]
    path = tmp_path / "mixed.zst"
    path.write_bytes(subprocess.run(["zstd", "-q", "-3", "-c"], input=bytes(data),
                                    stdout=subprocess.PIPE, check=True).stdout)
    assert _block_types(path.read_bytes()) == {0, 1, 2}       # raw, RLE, compressed
    stream = _built(path)
    assert stream.read_at(0, len(data)) == data
    stream.close()


@pytest.mark.parametrize("decoder", ["libzstd", "python-zstandard"])
def test_a_block_larger_than_its_frame_allows_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoder: str) -> None:
    """Hand-made: a 1 KiB window (descriptor 0) and a 4 KiB raw block, which
    RFC 8878 forbids (the block API does not check it: the pass must)."""
    if decoder == "python-zstandard":
        _without_libzstd(monkeypatch)
    elif zstdstream._libzstd() is None:
        pytest.skip("this system has no libzstd.so.1")
    block = (4096 << 3 | 1).to_bytes(3, "little") + bytes(4096)    # raw, last
    path = tmp_path / "big-block.zst"
    path.write_bytes((0xFD2FB528).to_bytes(4, "little") + b"\x00\x00" + block)
    stream = open_decompressed(FileSource(path), cache=BlockCache(16 << 20))
    with pytest.raises(FormatError, match="larger than its frame allows"):
        stream.build()
    stream.close()


def _compressed_block_body(raw: bytes) -> int:
    """The offset of the first body byte of a compressed block past the middle."""
    pos = header_length(raw[4])          # the frame header, its magic included
    while True:
        bh = int.from_bytes(raw[pos:pos + 3], "little")
        btype, size = (bh >> 1) & 3, bh >> 3
        if btype == 2 and pos > len(raw) // 2:
            return pos + 3
        assert not bh & 1, "no compressed block in the second half"
        pos += 3 + (1 if btype == 1 else size)


@pytest.mark.parametrize("decoder", ["libzstd", "python-zstandard"])
@pytest.mark.parametrize("where", ["block", "checksum"])
def test_damage_is_one_clear_error(zstd_stream: tuple[Path, bytes], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   decoder: str, where: str) -> None:
    path, _ = zstd_stream
    if decoder == "python-zstandard":
        _without_libzstd(monkeypatch)
    elif zstdstream._libzstd() is None:
        pytest.skip("this system has no libzstd.so.1")
    raw = bytearray(path.read_bytes())
    # The frame's last four bytes are its content checksum (zstd -T0 writes
    # one); a compressed block's first byte after its header starts its
    # literals section (a raw block's damage only the checksum would show).
    raw[-2 if where == "checksum" else _compressed_block_body(raw)] ^= 0x10
    bad = tmp_path / "bad.zst"
    bad.write_bytes(bytes(raw))
    stream = open_decompressed(FileSource(bad), cache=BlockCache(16 << 20))
    with pytest.raises(FormatError) as info:
        stream.build()
    text = str(info.value)
    assert "\n" not in text and len(text) < 400
    if where == "checksum":
        assert "fails its checksum" in text
    else:
        assert "damaged" in text
    stream.close()


def test_a_libzstd_too_old_or_missing_means_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    class Old:                               # a library without ZSTD_DCtx_setParameter (< 1.4)
        def __getattr__(self, name: str) -> object:
            raise AttributeError(name)

    def missing(name: str) -> object:
        raise OSError(f"{name}: cannot open shared object file")

    for cdll in (lambda name: Old(), missing):
        monkeypatch.setattr(zstdstream.ctypes, "CDLL", cdll)
        # Both globals are put back after the test (monkeypatch).
        monkeypatch.setattr(zstdstream, "_lib", None)
        monkeypatch.setattr(zstdstream, "_loaded", False)
        assert zstdstream._libzstd() is None
        assert isinstance(zstdstream.block_decoder(1 << 31), zstdstream._CopyingBlockDecoder)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_pass_checks_the_content_checksum_libzstd_leaves_to_it(
        zstd_stream: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        threads: int) -> None:
    # libzstd never sees the frame's XXH64 (its block API; a sixth of the pass's time);
    # the pass's hasher takes it instead, on its thread or (--threads 1) inline.
    from imagefs.codecs import tuning
    if zstdstream._libzstd() is None:
        pytest.skip("this system has no libzstd.so.1")
    decoder = zstdstream.block_decoder(1 << 27)
    assert not decoder.checks_content          # else this tests libzstd's own check
    decoder.close()
    monkeypatch.setattr(tuning, "INDEX_THREADS", threads)
    path, data = zstd_stream
    stream = open_decompressed(FileSource(path), cache=BlockCache(16 << 20))
    stream.build()                             # the right sum passes
    assert stream.read_at(len(data) - 4096, 4096) == data[-4096:]
    stream.close()
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01                            # the stored XXH64's top byte
    bad = tmp_path / "bad.zst"
    bad.write_bytes(bytes(raw))
    stream = open_decompressed(FileSource(bad), cache=BlockCache(16 << 20))
    with pytest.raises(FormatError, match="fails its checksum"):
        stream.build()
    stream.close()
