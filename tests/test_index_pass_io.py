"""The index passes' input path (codecs/adapters.py).

The chunk reader reads the next chunk on another thread while a pass
decodes, carrying a block that runs past a chunk's end to the front of the
next: whatever the loads, the bytes must be the file's.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from imagefs.codecs import adapters
from imagefs.codecs.adapters import ChunkReader
from imagefs.io import FileSource


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
