"""The index pass's blobs (zstd window snapshots) wait in a temporary file, not in memory."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from imagefs.codecs import open_decompressed
from imagefs.codecs.blobspill import SpilledBlobs
from imagefs.codecs.seekindex import LazyBlobs
from imagefs.io import FileSource
from imagefs.services.cache import BlockCache
from imagefs.services.fastzlib import crc32
from imagefs.services.indexstore import IndexStore


def _open_files_in(directory: Path) -> list[str]:
    """This process's open files under ``directory`` (unnamed ones included)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def _fill_and_read(blobs: SpilledBlobs) -> None:
    first = blobs.append(b"snapshot one")
    later = blobs.append(b"")                  # a place filled once compressed
    third = blobs.append(bytes(range(256)) * 300)
    assert blobs[later] == b""
    blobs[later] = b"filled later"
    assert [blobs[first], blobs[later], blobs[third]] == \
        [b"snapshot one", b"filled later", bytes(range(256)) * 300]
    assert list(blobs) == [blobs[0], blobs[1], blobs[2]]
    assert blobs.lengths == [12, 12, 76800] and blobs.total() == 76824
    assert blobs.crcs == [crc32(b) for b in blobs]


def test_blobs_round_trip_through_an_unnamed_file(tmp_path: Path) -> None:
    blobs = SpilledBlobs(str(tmp_path))
    _fill_and_read(blobs)
    assert blobs._memory is None               # they went to the file...
    assert os.listdir(tmp_path) == []          # ...which has no name to clean up


def test_blobs_stay_in_memory_where_no_file_can_be_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "a-file" / "tmp"))
    blobs = SpilledBlobs(str(tmp_path / "a-file" / "index"))
    _fill_and_read(blobs)
    assert blobs._memory is not None


@pytest.fixture(scope="module")
def zstd_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """48 MiB of text-like records, as Clonezilla writes them (one zstd -T0 frame)."""
    rnd = random.Random(3)
    words = [rnd.randbytes(rnd.randrange(2, 9)).hex().encode() for _ in range(5000)]
    data = b" ".join(rnd.choices(words, k=7_000_000))[:48 << 20]
    path = tmp_path_factory.mktemp("spill") / "img.zst"
    path.write_bytes(subprocess.run(["zstd", "-q", "-T0", "-3", "-c"], input=data,
                                    stdout=subprocess.PIPE, check=True).stdout)
    return path, data


def test_a_zstd_pass_holds_its_snapshots_outside_memory(
        zstd_stream: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots are ~5% of a stream: a 500 GB backup's first pass held 25 GB
    of them in memory until it saved its index.  When the save starts, the
    Python objects alive that have a snapshot's size are counted (the pass's
    own buffers are alive then too, so a byte total would not tell)."""
    path, data = zstd_stream
    traces: list[tracemalloc.Snapshot] = []
    save = IndexStore.save

    def measured_save(self: IndexStore, *args: object, **kwargs: object) -> str | None:
        traces.append(tracemalloc.take_snapshot())
        return save(self, *args, **kwargs)          # type: ignore[arg-type]

    monkeypatch.setattr(IndexStore, "save", measured_save)
    tracemalloc.start()
    try:
        stream = open_decompressed(FileSource(str(path)), index_store=IndexStore(str(tmp_path)),
                                   key_paths=[str(path)], cache=BlockCache(1 << 20),
                                   spacing=2 << 20)
        stream.build()
    finally:
        tracemalloc.stop()
    try:
        index = stream.index
        assert index is not None and isinstance(index.blobs, LazyBlobs)
        lengths = [len(index.blobs[i]) for i in range(len(index.blobs))]
        assert len(lengths) >= 4 and index.blob_bytes() > 2 << 20
        bytes_header = sys.getsizeof(b"")
        sizes = {n + bytes_header for n in lengths}
        alive = sum(1 for trace in traces[0].traces if trace.size in sizes)
        assert alive <= 1, (alive, len(lengths))       # one in flight, at most
        # Saved, the snapshots are read from the index file: the pass's
        # temporary file is closed (its disk space freed), not kept with the stream.
        assert not _open_files_in(tmp_path), _open_files_in(tmp_path)
        for off in (0, 5 << 20, 13 << 20, len(data) - 4096):   # spans from their snapshots
            assert stream.read_at(off, 4096) == data[off:off + 4096]
    finally:
        stream.close()


def test_an_index_kept_nowhere_reads_its_snapshots_from_the_pass_file(
        zstd_stream: tuple[Path, bytes]) -> None:
    path, data = zstd_stream
    stream = open_decompressed(FileSource(str(path)), cache=BlockCache(1 << 20), spacing=2 << 20)
    try:
        stream.build()
        index = stream.index
        assert index is not None and isinstance(index.blobs, SpilledBlobs)
        assert index.blobs._memory is None and index.blob_bytes() > 2 << 20
        for off in (0, 5 << 20, 13 << 20, 29 << 20, len(data) - 4096):
            assert stream.read_at(off, 4096) == data[off:off + 4096]
    finally:
        stream.close()
