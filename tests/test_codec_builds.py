"""The background index build: reads before and during it, one build per stream,
piece sums checked on every decode (real zstd / lz4 streams from the tools)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyzstd
import pytest

from imagefs.codecs import adapters, open_decompressed, source
from imagefs.codecs.building import IndexBuild
from imagefs.codecs.lz4 import Lz4Source
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.zstd import ZstdSource
from imagefs.errors import ImageError
from imagefs.io import FileSource
from imagefs.services.cache import BlockCache
from test_codecs import _original

TOOLS = {"zstd": ["zstd", "-q", "-T0", "-3", "-c"], "lz4": ["lz4", "-q", "-B4", "-BD", "-c"]}
CLASSES = {"zstd": ZstdSource, "lz4": Lz4Source}


@pytest.fixture(autouse=True)
def small_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture streams are smaller than the head served without an index."""
    monkeypatch.setattr(source, "HEAD_LIMIT", 64 << 10)


@pytest.fixture(scope="module")
def data() -> bytes:
    return _original()


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("builds")
    out = {}
    for name, cmd in TOOLS.items():
        if shutil.which(cmd[0]) is None:
            pytest.skip(f"{cmd[0]} is not installed")
        path = base / f"img.{name}"
        path.write_bytes(subprocess.run(cmd, input=data, stdout=subprocess.PIPE,
                                        check=True).stdout)
        out[name] = path
    return out


#: The gates of the running test, opened when it ends: a test that fails
#: with a pass stopped at its gate must not leave the pass's threads waiting
#: (pytest then never exits: CI ran into its time limit that way).
_GATES: list[threading.Event] = []


@pytest.fixture(autouse=True)
def open_gates_at_the_end() -> Iterator[None]:
    yield
    while _GATES:
        _GATES.pop().set()


class GatedSource:
    """A file whose bytes past ``gate_at`` are only read once ``gate`` is set."""

    def __init__(self, path: Path, gate_at: int) -> None:
        self._file = FileSource(path)
        self.name = self._file.name
        self.size = self._file.size
        self.gate_at = gate_at
        self.gate = threading.Event()
        _GATES.append(self.gate)
        self.waiting = threading.Event()   # the build reached the gate

    def read_at(self, offset: int, size: int) -> bytes:
        # The pass reads on its own thread or on its read-ahead's.
        if offset + size > self.gate_at and threading.current_thread().name.startswith(
                ("imagefs-index", "imagefs-readahead")):
            self.waiting.set()
            self.gate.wait()
        return self._file.read_at(offset, size)

    def cheap_size(self) -> int:
        return self.size

    def backing_files(self) -> list[str] | None:
        return None


def _covered(build: IndexBuild, end: int) -> SeekIndex:
    """The build's index once it covers ``end`` (waited for on a thread, so a
    build that never gets there fails the test instead of hanging it)."""
    got: list[SeekIndex] = []
    waiter = threading.Thread(target=lambda: got.append(build.wait(end)), daemon=True)
    waiter.start()
    waiter.join(30)
    assert got, f"the build never covered the first {end} bytes"
    return got[0]


def _count_builds(monkeypatch: pytest.MonkeyPatch, cls: type) -> list[int]:
    calls: list[int] = []
    original = cls._build_index

    def counting(self, build):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(self, build)

    monkeypatch.setattr(cls, "_build_index", counting)
    return calls


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_read_before_the_index_exists_returns_the_right_bytes(
        compressed: dict[str, Path], data: bytes, name: str) -> None:
    stream = open_decompressed(FileSource(compressed[name]), cache=BlockCache(16 << 20),
                               spacing=256 << 10) if name == "zstd" else \
        open_decompressed(FileSource(compressed[name]), cache=BlockCache(16 << 20))
    assert stream.index is None
    end = len(data)
    assert stream.read_at(end - 5000, 5000) == data[end - 5000:]
    assert stream.read_at(1 << 20, 4096) == data[1 << 20:(1 << 20) + 4096]
    stream.close()


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_two_readers_of_an_unindexed_stream_cause_one_build(
        compressed: dict[str, Path], data: bytes, name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_builds(monkeypatch, CLASSES[name])
    size = compressed[name].stat().st_size
    monkeypatch.setattr(adapters, "PASS_CHUNK", 64 << 10)
    src = GatedSource(compressed[name], size // 2)
    stream = open_decompressed(src, cache=BlockCache(16 << 20))
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def reader(n: int, offset: int) -> None:
        try:
            results[n] = stream.read_at(offset, 4096)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n, len(data) - 4096 * (n + 1)))
               for n in range(2)]
    for t in threads:
        t.start()
    assert src.waiting.wait(30)             # the one build stands at the gate
    src.gate.set()
    for t in threads:
        t.join(30)
    assert not errors
    for n in range(2):
        off = len(data) - 4096 * (n + 1)
        assert results[n] == data[off:off + 4096]
    assert len(calls) == 1
    stream.close()


def test_reads_inside_the_passed_part_are_served_while_the_build_goes_on(
        compressed: dict[str, Path], data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    size = compressed["zstd"].stat().st_size
    monkeypatch.setattr(adapters, "PASS_CHUNK", 64 << 10)
    src = GatedSource(compressed["zstd"], size * 3 // 4)
    stream = open_decompressed(src, cache=BlockCache(16 << 20), spacing=256 << 10)
    build = stream.start_build()
    assert build is not None and src.waiting.wait(30)
    # The pass's input stands three quarters through; its decoder trails its
    # read-ahead, so the spans below the gate are committed a little later
    # (on a loaded CI machine, not yet when the read-ahead reaches the gate).
    partial = _covered(build, 2 << 20)
    # A read in the first part is served from the spans committed so far.
    state = stream.index_state()
    assert "building the index" in state and "%" in state and "readable now" in state
    assert build.covering(2 << 20) is not None and partial.size < len(data)
    assert stream.read_at(2 << 20, 65536) == data[2 << 20:(2 << 20) + 65536]
    assert build.running and stream.index is None
    late: list[bytes] = []
    beyond = threading.Thread(target=lambda: late.append(stream.read_at(len(data) - 100, 100)))
    beyond.start()
    assert not late                          # it cannot pass the gate before it opens
    src.gate.set()
    beyond.join(30)
    assert late == [data[-100:]]
    build.join(30)
    assert stream.index is not None
    stream.close()


def test_the_build_survives_its_first_reader_closing(
        compressed: dict[str, Path], data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_builds(monkeypatch, ZstdSource)
    size = compressed["zstd"].stat().st_size
    monkeypatch.setattr(adapters, "PASS_CHUNK", 64 << 10)
    src = GatedSource(compressed["zstd"], size // 2)
    stream = open_decompressed(src, cache=BlockCache(16 << 20))
    build = stream.start_build()
    assert build is not None and src.waiting.wait(30)
    stream.close()                          # the first reader goes away mid-build
    src.gate.set()
    build.join(30)
    assert build.error is None and stream.index is not None
    assert stream.read_at(len(data) - 4096, 4096) == data[-4096:]
    assert len(calls) == 1
    stream.close()


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_a_sequential_reader_following_the_build_decodes_nothing_again(
        compressed: dict[str, Path], data: bytes, name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Reading a fresh backup from its start is the common first use: the
    # reader trails the pass, and the pass hands it the pieces it decodes
    # (before, every span was decoded twice: by the pass and by the reader).
    monkeypatch.setattr(adapters, "PASS_CHUNK", 64 << 10)
    followed = threading.Event()
    original = IndexBuild._follow_locked

    def noting(self, start, end):  # type: ignore[no-untyped-def]
        original(self, start, end)
        followed.set()

    monkeypatch.setattr(IndexBuild, "_follow_locked", noting)
    src = GatedSource(compressed[name], 0)      # the pass waits until the reader does
    spacing = {"spacing": 256 << 10} if name == "zstd" else {}
    stream = open_decompressed(src, cache=BlockCache(64 << 20), **spacing)
    got: list[bytes] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            offset = 0
            while piece := stream.read_at(offset, 1 << 20):
                got.append(piece)
                offset += len(piece)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    assert src.waiting.wait(30) and followed.wait(30)
    src.gate.set()
    thread.join(60)
    assert not errors and b"".join(got) == data
    index = stream.index
    assert index is not None
    if name == "zstd":
        assert len(index.starts) > 10      # many spans (the linked lz4 stream is one)
    assert stream.spans_decoded == 0
    stream.close()


def test_a_resume_point_that_does_not_reproduce_the_stream_falls_back(
        compressed: dict[str, Path], data: bytes) -> None:
    stream = open_decompressed(FileSource(compressed["zstd"]), cache=BlockCache(16 << 20),
                               spacing=256 << 10)
    index = stream.build().index
    assert index is not None and index.info["resume_points"] >= 3
    # A snapshot of the wrong bytes: decoding from that point gives other
    # bytes (or fails); the piece sums catch it and the previous point is used.
    # A span in the text part of the fixture (it refers back into its window).
    i = min((n for n, m in enumerate(index.meta) if m[1][0] == "r"),
            key=lambda n: abs(index.starts[n] - (3 << 19)))
    blob = index.meta[i][1][3]
    window = len(pyzstd.decompress(index.blobs[blob]))
    index.blobs[blob] = pyzstd.compress(bytes(window))
    a, b = index.starts[i], index.starts[i + 1]
    assert stream.read_at(a, b - a) == data[a:b]
    assert "decoded from an earlier point" in stream.index_state()
    stream.close()


def test_a_piece_that_fails_its_sum_is_an_error_not_wrong_bytes(
        compressed: dict[str, Path], data: bytes) -> None:
    for name in sorted(TOOLS):
        stream = open_decompressed(FileSource(compressed[name]), cache=BlockCache(16 << 20))
        index = stream.build().index
        assert index is not None and index.sums is not None
        last = index.spans - 1
        index.sums[index.sum_base[last]] ^= 1    # the last span's first piece: as if changed
        a = index.starts[last]
        with pytest.raises(ImageError, match="does not decode to the bytes"):
            stream.read_at(a, 4096)
        if last:
            assert stream.read_at(0, 4096) == data[:4096]
        stream.close()


def test_index_verb_builds_a_tree_in_parallel(tmp_path: Path, capsys) -> None:
    import argparse

    from imagefs.cli.treeverbs import index_main
    from mount_helpers import write_partclone

    tree = tmp_path / "tree"
    tree.mkdir()
    for n, cmd in enumerate((["zstd", "-q", "-c"], ["gzip", "-c"], ["lz4", "-q", "-c"])):
        plain = tmp_path / f"img{n}"
        write_partclone(plain, seed=n, total_blocks=64)
        (tree / f"img{n}.{cmd[0]}").write_bytes(
            subprocess.run(cmd, input=plain.read_bytes(), stdout=subprocess.PIPE,
                           check=True).stdout)
    args = argparse.Namespace(source=str(tree), config=None, verbose=0, quiet=False,
                              index_dir=str(tmp_path / "idx"))
    assert index_main(args) == 0
    captured = capsys.readouterr()
    ready = [line for line in captured.out.splitlines() if ": ready in " in line]
    assert len(ready) == 3 and all("index built in" in line for line in ready), captured.out
    assert "\r" not in captured.err               # no bar drawn into a non-terminal
    # ... but progress in lines, at the default log level (no -v).
    done = [line for line in captured.err.splitlines() if line.startswith("indexing: 3 images")]
    assert len(done) == 1 and "done in" in done[0], captured.err
    assert len(list((tmp_path / "idx").glob("*.idx"))) == 3


def test_a_rapidgzip_pass_counts_each_compressed_byte_once(tmp_path: Path, data: bytes) -> None:
    # rapidgzip's parallel decoder reads some compressed bytes twice; the
    # progress of an index pass (.info, imagefs index) must not count them twice.
    import rapidgzip
    path = tmp_path / "img.gz"
    path.write_bytes(subprocess.run(["gzip", "-c"], input=data * 4, stdout=subprocess.PIPE,
                                    check=True).stdout)
    counted: list[int] = []
    dec = rapidgzip.RapidgzipFile(adapters.SourceReader(FileSource(path), counted.append),
                                  parallelization=2, chunk_size=256 << 10)
    try:
        while dec.read(4 << 20):
            pass
    finally:
        dec.close()
    assert sum(counted) == path.stat().st_size


def test_partial_indexes_share_the_committed_span_table() -> None:
    """A reader at the build front asks for a newer partial index at every
    span: each must not copy the span table (a long stream's pass became
    quadratic), and each still covers what it covered when it was made."""
    from imagefs.codecs.building import IndexBuild

    build = IndexBuild("stream", 1 << 30, lambda b: None, lambda index: index)
    partials = []
    for i in range(1, 6):
        build.commit(i << 20, ["span", i], [i, i + 100])
        partials.append(build.wait(i << 20))
    first, last = partials[0], partials[-1]
    assert first.starts is last.starts and first.meta is last.meta
    assert first.sums is last.sums and first.sum_base is last.sum_base
    assert [p.size for p in partials] == [i << 20 for i in range(1, 6)]
    assert last.piece_sum(4, 1) == 105 and last.piece_sum(4, 2) is None
    assert first.piece_sum(0, 0) == 1 and first.meta[0] == ["span", 1]


def test_a_read_close_behind_the_pass_keeps_following_it() -> None:
    # A reader that checks checksums (or shares the cores with the pass)
    # falls a little behind it and never waits again: it must still be
    # handed the pass's output, or it decodes every span a second time.
    build = IndexBuild("test", 1 << 30, lambda b: None, lambda r: r)
    build.sink = lambda i, k, data: None
    build.follow_bytes = 16 << 20
    for end in range(8 << 20, 200 << 20, 8 << 20):
        build.commit(end, ["span"])
    front = build.committed
    assert not build.following(front, front + (1 << 20))
    assert build.covering(1 << 20, 0) is not None             # far behind: no
    assert not build.following(front, front + (1 << 20))
    assert build.covering(front - (1 << 20), front - (2 << 20)) is not None
    assert build.following(front, front + (1 << 20))           # close behind: yes
    assert not build.following(front + (16 << 20), front + (17 << 20))
    build.unfollow()
    assert not build.following(front, front + (1 << 20))


def test_the_pass_waits_a_little_for_a_follower_it_would_leave_behind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A reader a little slower than the pass would fall out of its range and
    # decode the rest itself (both cores decoding the same bytes: the lz4
    # image through the mount decoded 440 of its 464 spans twice): the pass
    # waits for it to read on, briefly, unless another reader waits for the pass.
    from imagefs.codecs import building
    monkeypatch.setattr(building, "PACE_LIMIT", 0.05)
    build = IndexBuild("test", 1 << 30, lambda b: None, lambda r: r)
    build.sink = lambda i, k, data: None
    build.follow_bytes = 16 << 20
    build.started = time.monotonic() - 60          # it has worked long enough to wait
    for end in range(8 << 20, 200 << 20, 8 << 20):
        build.commit(end, ["span"])
    read_at = build.committed - (8 << 20)          # the follower, with bytes to read
    assert build.covering(read_at + (1 << 20), read_at) is not None
    edge = read_at + (1 << 20) + build.follow_bytes   # where its range ends
    build._waiters = 1                             # someone waits for the pass: no pause
    assert build.following(edge - (1 << 20), edge) and build._paced == 0
    build._waiters = 0
    assert build.following(edge - (1 << 20), edge)  # nobody reads on: it paused, then went on
    assert build._paced > 0
    assert not build.following(edge, edge + (1 << 20))   # and the follower is left behind
