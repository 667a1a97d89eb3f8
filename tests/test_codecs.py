"""The codecs layer against the real compressors.

Each stream is made by the real tool exactly as Clonezilla-style backups
are (and also cut with ``split``); the decompressed source must equal the
original byte for byte, under random and concurrent reads, with its seek
index built, persisted, reloaded, and rebuilt when stale or corrupt.
Hand-made bytes are used only for damaged input.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from imagefs.services.cache import BlockCache
from imagefs.codecs import build_index, open_decompressed, sniff
from imagefs.codecs.sequential import SEQ_CHUNK
from imagefs.codecs.source import HEAD_LIMIT
from imagefs.codecs.streaming import STREAM_SLACK
from imagefs.errors import ImageError, TruncatedError, UnsupportedError
from imagefs.services.indexstore import MAP_PAYLOAD, IndexStore
from imagefs.io import ConcatSource, FileSource, MemorySource
from imagefs.io.source import read_into
from readers import run_in_threads

# name -> (command reading stdin and writing stdout, codec sniffed, slow path?)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "gzip": (["gzip", "-c"], "gzip"),
    "pigz": (["pigz", "-c", "--fast"], "gzip"),
    "zstd": (["zstd", "-q", "-T0", "-c"], "zstd"),
    "pzstd": (["pzstd", "-q", "-c", "-p", "2"], "zstd"),
    "lz4": (["lz4", "-q", "-c"], "lz4"),
    "lz4-linked": (["lz4", "-q", "-B4", "-BD", "-c"], "lz4"),
    "bzip2": (["bzip2", "-c"], "bzip2"),
    "pbzip2": (["pbzip2", "-c"], "bzip2"),
    "lbzip2": (["lbzip2", "-c"], "bzip2"),
    "xz": (["xz", "-T0", "--block-size=1MiB", "-c"], "xz"),
    "pixz": (["pixz", "-1", "-t"], "xz"),
    "xz-single": (["xz", "-T1", "-c"], "xz"),
    "lzop": (["lzop", "-c"], "lzop"),
    "plzip": (["plzip", "-B", "1MiB", "-c"], "lzip"),
}
NAMES = sorted(VARIANTS) + ["gzip-members"]
SLOW = {"xz-single"}          # one block, no restart point: one span (slow path if large)


def _original() -> bytes:
    """About 6 MiB like a partition image: random, text, zeros, records."""
    rnd = random.Random(4)
    parts = [rnd.randbytes(1 << 20),
             "".join(f"{i} line of text {rnd.random():.6f}\n" for i in range(40000)).encode(),
             bytes(1 << 20),
             b"".join(i.to_bytes(8, "little") + b"record\x00" + rnd.randbytes(3) * 5
                      for i in range(60000)),
             rnd.randbytes(700_001)]
    return b"".join(parts)


class Streams:
    """Compressed fixtures, made on first use and kept for the session."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = _original()
        self.orig = base / "orig.img"
        self.orig.write_bytes(self.data)
        self._made: dict[str, Path] = {}
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        with self._lock:
            if name not in self._made:
                self._made[name] = self._make(name)
            return self._made[name]

    def _make(self, name: str) -> Path:
        out = self.base / f"img.{name}"
        if name == "gzip-members":
            # Two gzip members back to back (cat a.gz b.gz): one stream.
            half = len(self.data) // 2
            with open(out, "wb") as f:
                for piece in (self.data[:half], self.data[half:]):
                    f.write(_run(["gzip", "-c"], piece))
            return out
        cmd = VARIANTS[name][0]
        if shutil.which(cmd[0]) is None:
            pytest.skip(f"{cmd[0]} is not installed")
        with open(self.orig, "rb") as fin, open(out, "wb") as fout:
            subprocess.run(cmd, stdin=fin, stdout=fout, check=True)
        return out

    def pieces(self, name: str) -> list[Path]:
        """The stream cut with ``split -a 2 -b 1M`` (made once)."""
        path = self.path(name)
        with self._lock:
            outdir = self.base / f"split-{name}"
            if not outdir.exists():
                outdir.mkdir()
                subprocess.run(["split", "-a", "2", "-b", "1M", str(path),
                                str(outdir / "img.")], check=True)
        return sorted(outdir.iterdir())


def _run(cmd: list[str], data: bytes) -> bytes:
    return subprocess.run(cmd, input=data, stdout=subprocess.PIPE, check=True).stdout


@pytest.fixture(scope="session")
def streams(tmp_path_factory: pytest.TempPathFactory) -> Streams:
    return Streams(tmp_path_factory.mktemp("codecs"))


def _source(streams: Streams, name: str, split: bool):
    if split:
        pieces = streams.pieces(name)
        assert len(pieces) > 1
        return ConcatSource([FileSource(p) for p in pieces]), [str(p) for p in pieces]
    path = streams.path(name)
    return FileSource(path), [str(path)]


def _open(streams: Streams, name: str, cache_bytes: int, split: bool = False):
    """The decompressed stream of fixture ``name`` (file or pieces), with its own cache."""
    src, paths = _source(streams, name, split)
    return open_decompressed(src, cache=BlockCache(cache_bytes), key_paths=paths)


def _random_reads(src, data: bytes, count: int, seed: int, max_len: int = 200_000) -> None:
    rnd = random.Random(seed)
    n = len(data)
    for _ in range(count):
        off = rnd.randrange(n + 100)         # a few past the end too
        length = rnd.randrange(1, max_len)
        got = src.read_at(off, length)
        assert got == data[off:off + length], (off, length)


def _max_span(stream) -> int:
    starts = stream.index.starts
    return max(b - a for a, b in zip(starts, starts[1:]))


# -- sniffing -----------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_sniff_names_the_codec(streams: Streams, name: str) -> None:
    expected = "gzip" if name == "gzip-members" else VARIANTS[name][1]
    assert sniff(streams.path(name).read_bytes()[:64]) == expected


def test_sniff_plain_and_weak_magics() -> None:
    assert sniff(b"partclone-image\x000.3.23" + bytes(40)) is None
    assert sniff(bytes(64)) is None
    assert sniff(b"\x5d\x00\x00\x40\x00" + b"\xff" * 8 + bytes(16)) == "lzma"
    assert sniff(b"\x5d\x00\x00\x41\x00" + b"\xff" * 8 + bytes(16)) is None   # odd dict size
    assert sniff(b"LRZI\x00\x06" + bytes(20)) == "lrzip"
    assert sniff(b"BZh9" + bytes(20)) is None                              # no block magic


def test_plain_source_is_returned_unchanged() -> None:
    src = MemorySource(b"partclone-image\x00" + bytes(100))
    assert open_decompressed(src) is src


# -- content ------------------------------------------------------------------

@pytest.mark.parametrize("split", [False, True], ids=["file", "split"])
@pytest.mark.parametrize("name", NAMES)
def test_content_matches_original(streams: Streams, name: str, split: bool) -> None:
    data = streams.data
    stream = _open(streams, name, 32 << 20, split)
    try:
        assert stream.codec == (VARIANTS.get(name, (None, "gzip"))[1])
        # A header probe is served without building the index.
        assert stream.read_at(1000, 5000) == data[1000:6000]
        assert "not built" in stream.index_state()
        assert stream.size == len(data)
        assert "not built" not in stream.index_state()
        whole = b"".join(stream.read_at(o, 1 << 20) for o in range(0, len(data), 1 << 20))
        assert whole == data
        assert stream.read_at(len(data), 10) == b""
        _random_reads(stream, data, 500, seed=hash(name) & 0xFFFF)
    finally:
        stream.close()


@pytest.mark.parametrize("name", NAMES)
def test_read_into_scatters_the_same_bytes(streams: Streams, name: str) -> None:
    """The FUSE path: decoded pieces copied straight into scattered buffers."""
    data = streams.data
    stream = _open(streams, name, 32 << 20)
    rnd = random.Random(11)
    try:
        # Sequential 1 MiB reads cut like a layout's scatter (data, 4-byte
        # trailer, data), then random ones; the head is read before the index.
        pos = 0
        while pos < len(data):
            n = min(1 << 20, len(data) - pos)
            buf = bytearray(n)
            mv = memoryview(buf)
            cut = rnd.randrange(n + 1)
            views = [mv[:cut], mv[cut:cut + 4], mv[cut + 4:]] if cut + 4 <= n else [mv]
            read_into(stream, pos, views)
            assert buf == data[pos:pos + n], pos
            pos += n
        for _ in range(200):
            off = rnd.randrange(len(data))
            n = rnd.randrange(1, min(300_000, len(data) - off) + 1)
            buf = bytearray(n)
            read_into(stream, off, [memoryview(buf)])
            assert buf == data[off:off + n], (off, n)
        with pytest.raises(TruncatedError):
            read_into(stream, len(data) - 10, [memoryview(bytearray(20))])
    finally:
        stream.close()


@pytest.mark.parametrize("name", ["zstd", "gzip", "lz4"])
def test_stream_read_out_of_order_decodes_each_piece_once(streams: Streams, name: str) -> None:
    """FUSE serves readahead with several threads: request k+1 may come before k.

    Streamed pieces are freed once delivered, but only once *all* their bytes
    are out: freeing a piece when its tail went out first would make the
    late request for its head decode the span again from its start.
    """
    data = streams.data
    stream = open_decompressed(FileSource(streams.path(name)), cache=BlockCache(64 << 20))
    try:
        stream.build()
        step = (1 << 20) + 4                 # unaligned, as partclone's CRCs make them
        offsets = list(range(0, len(data), step))
        order = []
        for a, b in zip(offsets[0::2], offsets[1::2] + [None]):
            order += [b, a] if b is not None else [a]     # pairs swapped
        before = stream.decoded_bytes
        for off in order:
            buf = bytearray(min(step, len(data) - off))
            read_into(stream, off, [memoryview(buf)])
            assert buf == data[off:off + len(buf)], off
        assert stream.decoded_bytes - before <= len(data) + (1 << 20)
    finally:
        stream.close()


def test_a_stream_that_steps_over_a_few_bytes_leaves_no_pieces_cached(tmp_path: Path) -> None:
    """A ``dd`` of a partclone image never asks for the checksum after a group
    whose last block ends a request: 4 bytes of a piece stay undelivered.

    Such pieces were kept until the LRU evicted them (60 MiB of the bench's
    2 GiB image, in a fresh mount's cache); they are freed once the stream
    is STREAM_SLACK past them.
    """
    rnd = random.Random(9)
    data = b"".join(rnd.randbytes(1 << 19) + bytes(1 << 19) for _ in range(24))   # 24 MiB
    path = tmp_path / "img.zst"
    path.write_bytes(_run(["zstd", "-q", "-T0", "-3", "-c"], data))
    cache = BlockCache(256 << 20)
    stream = open_decompressed(FileSource(str(path)), cache=cache)
    try:
        stream.build()
        stream.prefetch = False               # only what the reads decode is cached
        before = stream.decoded_bytes
        step = (1 << 20) + 4                  # 1 MiB of blocks, then a 4-byte checksum
        for off in range(0, len(data), step):
            buf = bytearray(min(1 << 20, len(data) - off))
            read_into(stream, off, [memoryview(buf)])
            assert buf == data[off:off + len(buf)], off
        assert stream.decoded_bytes - before <= len(data) + (1 << 20)   # decoded once
        assert cache.size <= STREAM_SLACK + (2 << 20), cache.size
    finally:
        stream.close()


@pytest.mark.parametrize("name", NAMES)
def test_concurrent_reads_match(streams: Streams, name: str) -> None:
    """Eight threads at once, the first of them racing to build the index."""
    data = streams.data
    stream = _open(streams, name, 8 << 20)
    try:
        run_in_threads(lambda seed: _random_reads(stream, data, 40, seed, max_len=300_000))
    finally:
        stream.close()


# -- index persistence ---------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_index_is_persisted_and_reloaded(streams: Streams, name: str, tmp_path: Path) -> None:
    store = IndexStore(str(tmp_path / "idx"))
    data = streams.data
    src, paths = _source(streams, name, False)
    first = build_index(src, index_store=store, key_paths=paths, cache=BlockCache(8 << 20))
    assert first.decoded_bytes > 0 or name in ("xz", "pixz", "plzip", "lzop", "xz-single")
    assert "saved to" in first.index_state()
    assert glob.glob(str(tmp_path / "idx" / "*.idx"))
    first.close()

    again, _ = _source(streams, name, False)
    second = open_decompressed(again, index_store=store, key_paths=paths,
                               cache=BlockCache(8 << 20))
    assert second.size == len(data)
    assert second.decoded_bytes == 0            # nothing was decoded to learn the size
    assert "loaded from" in second.index_state()
    _random_reads(second, data, 50, seed=7)
    second.close()


def test_an_index_kept_nowhere_is_not_serialized(streams: Streams,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an index store the payload (every snapshot joined) is not made."""
    from imagefs.codecs.seekindex import SeekIndex

    def refuse(*args: object) -> bytes:
        raise AssertionError("an index without a store was serialized")

    monkeypatch.setattr(SeekIndex, "to_payload", refuse)
    stream = build_index(FileSource(streams.path("zstd")))
    assert stream.read_at(0, 4096) == streams.data[:4096]
    assert "saved" not in stream.index_state()
    stream.close()


@pytest.mark.parametrize("name", ["zstd", "gzip", "lz4", "bzip2", "xz"])
def test_stale_index_is_rebuilt(streams: Streams, name: str, tmp_path: Path) -> None:
    store = IndexStore(str(tmp_path / "idx"))
    path = tmp_path / "image"
    shutil.copy(streams.path(name), path)
    build_index(FileSource(path), index_store=store, key_paths=[str(path)]).close()

    # The backup is replaced by another one (different content and size).
    other = streams.data[: len(streams.data) // 2] + b"changed" * 1000
    with open(path, "wb") as f:
        f.write(_run(VARIANTS[name][0], other))
    stream = open_decompressed(FileSource(path), index_store=store, key_paths=[str(path)])
    assert stream.size == len(other)
    assert "built" in stream.index_state() and "loaded" not in stream.index_state()
    assert stream.read_at(0, len(other)) == other
    stream.close()


@pytest.mark.parametrize("name", ["zstd", "gzip", "lz4", "lzop"])
def test_stale_index_with_same_size_is_rebuilt(streams: Streams, name: str,
                                               tmp_path: Path) -> None:
    store = IndexStore(str(tmp_path / "idx"))
    path = tmp_path / "image"
    shutil.copy(streams.path(name), path)
    build_index(FileSource(path), index_store=store, key_paths=[str(path)]).close()
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))   # touched
    stream = open_decompressed(FileSource(path), index_store=store, key_paths=[str(path)])
    assert stream.size == len(streams.data)
    assert "loaded" not in stream.index_state()
    stream.close()


@pytest.mark.parametrize("name", ["zstd", "gzip", "lz4", "xz", "plzip"])
def test_corrupt_index_file_is_rejected_and_rebuilt(streams: Streams, name: str,
                                                    tmp_path: Path, caplog) -> None:
    store = IndexStore(str(tmp_path / "idx"))
    src, paths = _source(streams, name, False)
    build_index(src, index_store=store, key_paths=paths).close()
    (index_file,) = glob.glob(str(tmp_path / "idx" / "*.idx"))
    raw = bytearray(Path(index_file).read_bytes())
    raw[len(raw) // 2] ^= 0x55
    Path(index_file).write_bytes(bytes(raw))

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        stream = open_decompressed(FileSource(paths[0]), index_store=store, key_paths=paths)
        assert stream.size == len(streams.data)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "rebuild" in warnings[0].getMessage()
    assert "loaded" not in stream.index_state()
    _random_reads(stream, streams.data, 30, seed=3)
    stream.close()
    # The rebuilt index was saved over the bad one and loads again.
    third = open_decompressed(FileSource(paths[0]), index_store=store, key_paths=paths)
    assert third.size == len(streams.data) and "loaded" in third.index_state()
    third.close()


def test_payload_that_passes_the_container_check_is_still_validated(
        streams: Streams, tmp_path: Path, caplog) -> None:
    """A well-formed file whose payload does not fit the stream is not trusted."""
    from imagefs.services.indexstore import source_key
    from imagefs.codecs.seekindex import INDEX_VERSION

    store = IndexStore(str(tmp_path / "idx"))
    path = str(streams.path("zstd"))
    key = source_key("codec-zstd", [path], extra=f"v{INDEX_VERSION}")
    store.save("codec-zstd", key, b"IFCX\x02\x00\x00\x00{}")
    with caplog.at_level(logging.WARNING):
        stream = open_decompressed(FileSource(path), index_store=store, key_paths=[path])
        assert stream.size == len(streams.data)
    assert sum(r.levelno >= logging.WARNING for r in caplog.records) == 1
    stream.close()


# -- one span per random read -----------------------------------------------------

@pytest.mark.parametrize("name", [n for n in NAMES if n not in SLOW])
def test_random_read_decodes_at_most_one_span(streams: Streams, name: str,
                                              tmp_path: Path) -> None:
    store = IndexStore(str(tmp_path / "idx"))
    src, paths = _source(streams, name, False)
    options = {"spacing": 256 << 10} if VARIANTS.get(name, ("", ""))[1] == "zstd" else {}
    build_index(src, index_store=store, key_paths=paths, **options).close()

    fresh, _ = _source(streams, name, False)
    stream = open_decompressed(fresh, index_store=store, key_paths=paths,
                               cache=BlockCache(64 << 20), **options)
    assert stream.size == len(streams.data) and stream.decoded_bytes == 0
    largest = _max_span(stream)
    assert stream.index.spans >= 2
    rnd = random.Random(11)
    for _ in range(30):
        stream.close()                  # cold: no cached pieces, no paused decoders
        off = rnd.randrange(len(streams.data) - 4096)
        before = stream.decoded_bytes
        assert stream.read_at(off, 4096) == streams.data[off:off + 4096]
        # A 4 KiB read may straddle two spans, never more.
        assert 0 < stream.decoded_bytes - before <= 2 * largest
        index = stream.index
        i = max(j for j, s in enumerate(index.starts) if s <= off)
        if off + 4096 <= index.starts[i + 1]:
            assert stream.decoded_bytes - before <= largest
    stream.close()


def test_zstd_single_frame_gets_verified_resume_points(streams: Streams) -> None:
    stream = build_index(FileSource(streams.path("zstd")), spacing=512 << 10)
    info = stream.index.info
    assert info["frames"] == 1
    assert info["resume_points"] >= 4
    assert "resume points" in stream.index_state()
    assert "every piece checked against its sum" in stream.index_state()
    # Every span starting at a resume point decodes alone, from its snapshot.
    for i, m in enumerate(stream.index.meta):
        data = stream._decode_span(stream.index, i)
        a, b = stream.index.starts[i], stream.index.starts[i + 1]
        assert data == streams.data[a:b]
    stream.close()


def test_pzstd_frames_are_restart_points(streams: Streams) -> None:
    stream = build_index(FileSource(streams.path("pzstd")))
    assert stream.index.info["skippable"] >= 1
    assert stream.index.info["frames"] >= 1
    stream.close()


def test_head_reads_stay_lazy(streams: Streams) -> None:
    """A header probe decodes from the start and builds no index."""
    for name in ("zstd", "gzip", "lz4", "xz", "bzip2", "lzop", "plzip"):
        stream = open_decompressed(FileSource(streams.path(name)), cache=BlockCache(8 << 20))
        assert stream.read_at(0, 4096) == streams.data[:4096]
        assert stream.decoded_bytes <= SEQ_CHUNK * 2 + (4 << 20)
        assert stream.index is None
        assert stream.read_at(HEAD_LIMIT - 10, 10) == streams.data[HEAD_LIMIT - 10:HEAD_LIMIT]
        assert stream.index is None
        stream.close()


def test_slow_path_is_reported(streams: Streams, monkeypatch) -> None:
    from imagefs.codecs import xz

    monkeypatch.setattr(xz, "SMALL_SINGLE_BLOCK", 1 << 20)   # the fixture counts as large
    stream = build_index(FileSource(streams.path("xz-single")))
    assert "slow path" in stream.index_state()
    assert stream.read_at(len(streams.data) - 100, 100) == streams.data[-100:]
    stream.close()


def test_reads_after_close_reopen_decoders(streams: Streams) -> None:
    stream = open_decompressed(FileSource(streams.path("gzip")))
    assert stream.read_at(5 << 20, 100) == streams.data[(5 << 20):(5 << 20) + 100]
    stream.close()
    assert stream.read_at(5 << 20, 100) == streams.data[(5 << 20):(5 << 20) + 100]
    stream.close()


def test_interpreter_exit_with_open_rapidgzip_decoders(streams: Streams) -> None:
    """A gzip source never closed must not abort the process at exit."""
    code = ("import sys; from imagefs.codecs import open_decompressed;"
            "from imagefs.io import FileSource;"
            f"s = open_decompressed(FileSource({str(streams.path('gzip'))!r}));"
            "s.read_at(5 << 20, 10); print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(Path(__file__).parent.parent), timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


# -- unsupported and damaged input -------------------------------------------------

@pytest.mark.parametrize("cmd,hint", [
    (["xz", "--format=lzma", "-c"], "lzma -dc"),
    (["plzip", "-c"], "lzip -dc"),              # one member
])
def test_unsupported_streams_name_the_command(cmd: list[str], hint: str, tmp_path: Path,
                                              monkeypatch) -> None:
    from imagefs.codecs import lzip

    monkeypatch.setattr(lzip, "SMALL_SINGLE_MEMBER", 1000)   # this one counts as large
    path = tmp_path / "x"
    path.write_bytes(_run(cmd, b"some data " * 5000))
    with pytest.raises(UnsupportedError) as info:
        open_decompressed(FileSource(path))
    assert hint in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("cmd", [["plzip", "-c"], ["xz", "-T1", "-c"]])
def test_small_single_unit_streams_are_served_whole(cmd: list[str], tmp_path: Path) -> None:
    data = b"small image " * 20000
    stream = open_decompressed(MemorySource(_run(cmd, data)))
    assert stream.size == len(data) and stream.read_at(1000, 50) == data[1000:1050]
    assert "slow path" not in stream.index_state()


def test_lrzip_is_unsupported(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"lrzip data " * 5000)
    subprocess.run(["lrzip", "-q", "-o", str(tmp_path / "out.lrz"), str(src)], check=True,
                   stdin=subprocess.DEVNULL)
    with pytest.raises(UnsupportedError) as info:
        open_decompressed(FileSource(tmp_path / "out.lrz"))
    assert "lrzip -d" in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_truncated_stream_raises_instead_of_zeros(streams: Streams, name: str) -> None:
    raw = streams.path(name).read_bytes()
    cut = MemorySource(raw[: len(raw) * 3 // 5], name=f"cut-{name}")
    with pytest.raises(ImageError):
        stream = open_decompressed(cut, cache=BlockCache(8 << 20))
        stream.read_at(0, len(streams.data))
        stream.size  # noqa: B018 - must raise if the read did not


@pytest.mark.parametrize("name", ["zstd", "gzip", "lz4", "bzip2", "xz", "lzop", "plzip",
                                  "pzstd", "pixz"])
def test_damaged_stream_never_yields_wrong_bytes(streams: Streams, name: str) -> None:
    raw = bytearray(streams.path(name).read_bytes())
    rnd = random.Random(5)
    for _ in range(20):
        pos = rnd.randrange(len(raw) // 4, len(raw) - 64)
        raw[pos] ^= 0xFF
    stream = open_decompressed(MemorySource(bytes(raw)), cache=BlockCache(8 << 20))
    try:
        data = b"".join(stream.read_at(o, 1 << 20) for o in range(0, stream.size, 1 << 20))
    except ImageError:
        return
    assert data == streams.data      # only acceptable if the damage was harmless


@pytest.mark.parametrize("head", [
    b"\x28\xb5\x2f\xfd" + bytes(range(60)),
    b"\x1f\x8b\x08\x00" + bytes(60),
    b"\x04\x22\x4d\x18\x64\x40\xa7" + b"\xff" * 57,
    b"\xfd7zXZ\x00" + bytes(58),
    b"BZh91AY&SY" + bytes(54),
    b"\x89LZO\x00\r\n\x1a\n" + bytes(55),
])
def test_garbage_after_a_magic_raises(head: bytes) -> None:
    with pytest.raises(ImageError):
        stream = open_decompressed(MemorySource(head + bytes(4000)))
        stream.read_at(0, 100)
        stream.size  # noqa: B018


def test_live_sequential_decoders_are_bounded(streams: Streams) -> None:
    """Header probes of many images keep only a few decoders alive."""
    from imagefs.codecs import sequential

    sources = [open_decompressed(FileSource(streams.path(name)), cache=BlockCache(4 << 20))
               for name in ("zstd", "xz", "lz4") * (sequential.MAX_LIVE_SEQUENTIAL // 2 + 2)]
    for s in sources:
        assert s.read_at(0, 100) == streams.data[:100]
    assert sequential.live_decoders() <= sequential.MAX_LIVE_SEQUENTIAL
    for s in sources:                    # evicted ones restart and still read right
        s._cache.clear()
        assert s.read_at(SEQ_CHUNK + 5, 100) == streams.data[SEQ_CHUNK + 5:SEQ_CHUNK + 105]
        s.close()


def test_zstd_snapshots_stay_in_the_index_file(streams: Streams, tmp_path: Path) -> None:
    """Window snapshots are read from the index file when needed, and checked."""
    from imagefs.codecs.seekindex import LazyBlobs

    store = IndexStore(str(tmp_path / "idx"))
    path = str(streams.path("zstd"))
    built = build_index(FileSource(path), index_store=store, key_paths=[path],
                        spacing=256 << 10)
    assert isinstance(built.index.blobs, LazyBlobs)      # also right after a build
    built.close()
    stream = open_decompressed(FileSource(path), index_store=store, key_paths=[path],
                               spacing=256 << 10)
    assert stream.size == len(streams.data)
    assert isinstance(stream.index.blobs, LazyBlobs)
    (index_file,) = glob.glob(str(tmp_path / "idx" / "*.idx"))
    # Loaded from its mapping (over 1 MiB), which nothing keeps.
    assert os.path.getsize(index_file) > MAP_PAYLOAD
    assert index_file not in Path("/proc/self/maps").read_text()
    _random_reads(stream, streams.data, 40, seed=9)
    # The index file is damaged after it was loaded: never wrong bytes.
    raw = bytearray(Path(index_file).read_bytes())
    for pos in range(len(raw) - 2000, len(raw), 97):
        raw[pos] ^= 0xFF
    Path(index_file).write_bytes(bytes(raw))
    stream.close()
    last = stream.index.spans - 1
    assert stream.index.meta[last][1][0] == "r"
    with pytest.raises(ImageError):
        stream.read_at(stream.index.starts[last], 100)


def test_configure_sets_spacing_and_threads(streams: Streams, monkeypatch) -> None:
    import imagefs.codecs as codecs
    from imagefs.codecs import tuning, zstd

    monkeypatch.setattr(zstd, "DEFAULT_SPACING", zstd.DEFAULT_SPACING)
    monkeypatch.setattr(tuning, "PREFETCH", tuning.PREFETCH)
    monkeypatch.setattr(tuning, "PREFETCH_DEPTH", tuning.PREFETCH_DEPTH)
    monkeypatch.setattr(tuning, "INDEX_THREADS", tuning.INDEX_THREADS)
    codecs.configure(threads=1, zstd_spacing=512 << 10)
    assert tuning.PREFETCH is False and tuning.INDEX_THREADS == 1
    # One thread means no helper threads either: piece sums and snapshots
    # are made in the pass's own thread.
    from imagefs.codecs import spans, zstdindex

    def no_helper() -> None:
        raise AssertionError("a helper thread was asked for with threads=1")

    for helper in (spans._hash_pool, zstdindex._snapshot_pool):
        monkeypatch.setattr(helper._pool, "get", no_helper)
    stream = build_index(FileSource(streams.path("zstd")))
    assert stream.spacing == 512 << 10 and stream.index.info["resume_points"] >= 4
    data = b"".join(stream.read_at(o, 1 << 20) for o in range(0, stream.size, 1 << 20))
    assert data == streams.data
    stream.close()
    with pytest.raises(ValueError):
        codecs.configure(zstd_spacing=1000)
    codecs.configure(threads=0)


@pytest.mark.parametrize("name", ["gzip", "bzip2", "zstd"])
def test_close_while_other_threads_read(streams: Streams, name: str) -> None:
    """close() drops decoders and cache but never under a reading thread."""
    stream = build_index(FileSource(streams.path(name)), cache=BlockCache(8 << 20))
    try:
        run_in_threads(lambda seed: _random_reads(stream, streams.data, 25, seed, max_len=100_000),
                       count=4, while_running=stream.close)
    finally:
        stream.close()


@pytest.mark.parametrize("name", ["zstd", "gzip", "xz"])
def test_index_build_with_a_progress_bar(streams: Streams, name: str, capsys) -> None:
    stream = build_index(FileSource(streams.path(name)), progress=True)
    assert stream.size == len(streams.data)
    assert "indexing" in capsys.readouterr().err        # tqdm writes to stderr
    stream.close()


def test_rapidgzip_decoders_are_bounded_over_all_sources(streams: Streams) -> None:
    """Each rapidgzip decoder keeps its own chunk cache: few live at once."""
    from imagefs.codecs import rapidpool as rapid

    before = rapid._total                # decoders of other tests' sources, if any
    sources = [build_index(FileSource(streams.path(name)), cache=BlockCache(4 << 20))
               for name in ("gzip", "pigz", "bzip2", "pbzip2", "gzip-members")]
    rnd = random.Random(8)
    for _ in range(60):
        s = rnd.choice(sources)
        off = rnd.randrange(len(streams.data) - 4096)
        assert s.read_at(off, 4096) == streams.data[off:off + 4096]
        assert rapid._total <= rapid.MAX_DECODERS
    for s in sources:
        s.close()
    assert rapid._total <= before
