"""The pool of paused span decoders (codecs/cursors.py) and its memory bound.

A paused decoder pins more than the decoded bytes it buffers: a zstd one
keeps two window-sized output segments, so the pool counts what the decoder
reports as resident.  With a real ``zstd --long=27`` stream (a 128 MiB
window) one parked decoder alone is over the budget: the newest is kept,
older ones are closed, and the kept one still reads on correctly.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagefs.codecs import open_decompressed, zstd
from imagefs.codecs.cursors import MAX_CURSOR_BYTES, CursorPool, SpanCursor, cursors
from imagefs.codecs.zstdstream import available
from imagefs.io import FileSource
from imagefs.services.cache import BlockCache

from test_zstd_light_points import data  # noqa: F401 - the fixture: 64 MiB of varied data


class _FakeRun:
    """A decoder that says it keeps ``resident`` bytes, and knows if it was closed."""

    def __init__(self, resident: int) -> None:
        self._resident = resident
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return b"x" * 4096

    def resident(self) -> int:
        return 0 if self.closed else self._resident

    def close(self) -> None:
        self.closed = True


def _park(pool: CursorPool, owner: str, resident: int) -> _FakeRun:
    run = _FakeRun(resident)
    pool.put(owner, SpanCursor(0, run))
    return run


def test_the_pool_counts_what_each_paused_decoder_keeps() -> None:
    pool = CursorPool(4, 64 << 20)
    small = [_park(pool, f"s{n}", 10 << 20) for n in range(4)]
    assert [o for o, _ in pool.parked()] == ["s0", "s1", "s2", "s3"]
    assert not any(r.closed for r in small)
    big = _park(pool, "big", 40 << 20)        # 40 + 40 MiB is over: the oldest go
    assert [o for o, _ in pool.parked()] == ["s2", "s3", "big"]
    assert [r.closed for r in small] == [True, True, False, False]
    huge = _park(pool, "huge", 1 << 30)       # over the budget alone: still kept
    assert [o for o, _ in pool.parked()] == ["huge"]
    assert all(r.closed for r in small) and big.closed and not huge.closed


def test_the_pool_still_bounds_the_count() -> None:
    pool = CursorPool(2, 64 << 20)
    runs = [_park(pool, f"c{n}", 0) for n in range(3)]
    assert [o for o, _ in pool.parked()] == ["c1", "c2"]
    assert [r.closed for r in runs] == [True, False, False]


@pytest.fixture(scope="module")
def long_window(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> Path:  # noqa: F811
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    path = tmp_path_factory.mktemp("long") / "img.zst"
    # From a pipe the size is unknown, so the frame keeps --long's 128 MiB window.
    path.write_bytes(subprocess.run(["zstd", "-q", "-T0", "-3", "--long=27", "-c"], input=data,
                                    stdout=subprocess.PIPE, check=True).stdout)
    return path


def _opened(path: Path) -> zstd.ZstdSource:
    stream = open_decompressed(FileSource(path), cache=BlockCache(64 << 20), spacing=4 << 20)
    assert isinstance(stream, zstd.ZstdSource)
    stream.build()
    stream._stream.prefetch = False            # the reader's own decoder is the one parked
    return stream


@pytest.mark.skipif(not available(), reason="the system libzstd cannot be loaded")
def test_a_long_window_decoder_counts_whole_and_only_the_newest_stays(
        long_window: Path, data: bytes) -> None:  # noqa: F811
    first, second = _opened(long_window), _opened(long_window)
    try:
        assert first.read_at(0, 1 << 20) == data[:1 << 20]
        assert second.read_at(0, 1 << 20) == data[:1 << 20]
        owners = [o for o, _ in cursors.parked()]
        assert second._owner in owners and first._owner not in owners
        weight = dict(cursors.parked())[second._owner]
        assert weight >= 128 << 20 > MAX_CURSOR_BYTES      # libzstd holds the whole window
        # The kept decoder reads on: the same bytes, no second decoder.
        assert second.read_at(1 << 20, 8 << 20) == data[1 << 20:9 << 20]
        assert second._spans.spans_decoded == 1
    finally:
        first.close()
        second.close()
    assert not any(o in (first._owner, second._owner) for o, _ in cursors.parked())


def test_the_pyzstd_decoder_reports_its_window_too(long_window: Path, data: bytes,  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the system libzstd, spans go through pyzstd: its paused
    # decoder holds the frame's window, counted as such.
    monkeypatch.setattr(zstd.zstdspan, "decodable", lambda origin, prefix: False)
    stream = _opened(long_window)
    try:
        assert stream.read_at(0, 1 << 20) == data[:1 << 20]
        assert dict(cursors.parked())[stream._owner] >= 128 << 20
        assert stream.read_at(1 << 20, 8 << 20) == data[1 << 20:9 << 20]
    finally:
        stream.close()
