"""Light zstd resume points at zstdmt job starts (codecs/zstdindex.py).

A real ``zstd -T0 -3`` stream, as Clonezilla writes it, piped (window 2 MiB,
so jobs of 8 MiB): the pass places light points, each with an eighth of the
window as its snapshot, at the job starts between the full points; each
span decodes alone from its own point; and a light point that does not hold
falls back to the full point before it, never to wrong bytes.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import pyzstd
from imagefs.codecs import open_decompressed, zstd
from imagefs.codecs.zstdindex import LIGHT_WINDOW_SHIFT
from imagefs.io import FileSource
from imagefs.services.cache import BlockCache

from test_codecs import _original

#: 64 MiB: eight zstdmt jobs of 8 MiB, two full-point spacings (32 MiB).
SIZE = 64 << 20


@pytest.fixture(scope="module")
def data() -> bytes:
    # Copies of the mixed fixture, each changed a little so that no two
    # jobs are alike (a copy is 6 MiB: beyond the 2 MiB window anyway).
    base = bytearray(_original())
    rnd = random.Random(8)
    out = bytearray()
    while len(out) < SIZE:
        for _ in range(64):
            base[rnd.randrange(len(base))] = rnd.randrange(256)
        out += base
    return bytes(out[:SIZE])


@pytest.fixture(scope="module")
def stream_path(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> Path:
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    path = tmp_path_factory.mktemp("light") / "img.zst"
    path.write_bytes(subprocess.run(["zstd", "-q", "-T0", "-3", "-c"], input=data,
                                    stdout=subprocess.PIPE, check=True).stdout)
    return path


def _indexed(path: Path) -> zstd.ZstdSource:
    stream = open_decompressed(FileSource(path), cache=BlockCache(64 << 20))
    assert isinstance(stream, zstd.ZstdSource)
    stream.build()
    return stream


def _light_spans(stream: zstd.ZstdSource) -> list[int]:
    assert stream.index is not None
    return [i for i, m in enumerate(stream.index.meta) if m[1][0] == "l"]


def test_light_points_sit_at_job_starts_and_decode_alone(stream_path: Path, data: bytes) -> None:
    stream = _indexed(stream_path)
    index = stream.index
    assert index is not None
    light = _light_spans(stream)
    assert len(light) >= 2 and index.info["light_points"] == len(light)
    assert "light points at zstdmt job starts" in stream.index_state()
    job = 8 << 20                           # 4 x the 2 MiB window of a piped level-3 stream
    for i in light:
        assert index.starts[i] % job == 0
        window = len(pyzstd.decompress(index.blobs[index.meta[i][1][3]]))
        assert window == (2 << 20) >> LIGHT_WINDOW_SHIFT
    for i in range(index.spans):
        a, b = index.starts[i], index.starts[i + 1]
        assert stream._decode_span(index, i) == data[a:b]
    assert "decoded from an earlier point" not in stream.index_state()
    stream.close()


def test_a_light_point_that_does_not_hold_falls_back_to_the_full_point(
        stream_path: Path, data: bytes) -> None:
    stream = _indexed(stream_path)
    index = stream.index
    assert index is not None
    light = _light_spans(stream)
    stream.prefetch = False                 # each span decoded by the read that wants it
    # Snapshots of the wrong bytes: a span that refers back into its history
    # decodes to other bytes or fails, the sums catch it, and it is decoded
    # from the full point before it (a span that never refers back does not
    # notice: corrupt spans until LIGHT_FAILURE_LIMIT of them have).
    used = 0
    for i in light:
        if len(stream._fallback) >= zstd.LIGHT_FAILURE_LIMIT:
            break
        blob = index.meta[i][1][3]
        garbage = random.Random(i).randbytes(len(pyzstd.decompress(index.blobs[blob])))
        index.blobs[blob] = pyzstd.compress(garbage)
        a, b = index.starts[i], index.starts[i + 1]
        assert stream.read_at(a, b - a) == data[a:b]
        used += 1
    state = stream.index_state()
    assert "decoded from an earlier point" in state and "light points unused" in state
    # From then on the stream's other light spans decode from full points too.
    rest = light[used:]
    assert rest, "the fixture has more light points than the failure limit"
    stream.close()                          # nothing cached; what it learnt stays
    before = stream.decoded_bytes
    i = rest[0]
    a, b = index.starts[i], index.starts[i + 1]
    assert stream.read_at(a, 4096) == data[a:a + 4096]
    assert stream.decoded_bytes - before > (2 << 20)    # from the full point, 8+ MiB back
    stream.close()


def test_no_point_on_a_frames_empty_last_block(tmp_path: Path, data: bytes) -> None:
    # pzstd writes 8 MiB frames, each ending on a job boundary with the
    # empty last block zstd adds there: a point on it would start a span of
    # nothing and store a snapshot for no span.
    if shutil.which("pzstd") is None:
        pytest.skip("pzstd is not installed")
    path = tmp_path / "img.zst"
    path.write_bytes(subprocess.run(["pzstd", "-q", "-3", "-c", "-p", "2"], input=data[:20 << 20],
                                    stdout=subprocess.PIPE, check=True).stdout)
    stream = _indexed(path)
    index = stream.index
    assert index is not None and index.info["frames"] >= 3
    points = [m[1][0] for m in index.meta if m[1][0] != "f"]
    assert index.info["light_points"] + index.info["resume_points"] == len(points)
    assert len(index.blobs) == len(points)
    stream.close()
