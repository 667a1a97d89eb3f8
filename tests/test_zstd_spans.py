"""Decoding zstd spans through the system libzstd (codecs/zstdspan.py).

A real ``zstd -T0 -3`` stream and a real pzstd one: every span decoded by
libzstd's streaming decoder, a piece per call, equals the same span decoded by pyzstd and the
original bytes, also from an earlier origin (a fallback, dropping what
comes before the span); a snapshot that libzstd would read as a dictionary
goes to pyzstd; a damaged block is one clear error, never wrong bytes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import pyzstd
from imagefs.codecs import open_decompressed, zstd, zstdspan, zstdstream
from imagefs.codecs.spans import SUB_CHUNK
from imagefs.codecs.zstdstream import DICT_MAGIC, available
from imagefs.errors import ImageError
from imagefs.io import FileSource
from imagefs.services.cache import BlockCache

from test_zstd_light_points import data  # noqa: F401 - the fixture: 64 MiB of varied data

pytestmark = pytest.mark.skipif(not available(), reason="the system libzstd cannot be loaded")

TOOLS = {"zstd": ["zstd", "-q", "-T0", "-3", "-c"], "pzstd": ["pzstd", "-q", "-3", "-c"]}


@pytest.fixture(scope="module", params=sorted(TOOLS))
def packed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           data: bytes) -> Path:  # noqa: F811
    cmd = TOOLS[request.param]
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} is not installed")
    path = tmp_path_factory.mktemp(request.param) / "img.zst"
    path.write_bytes(subprocess.run(cmd, input=data, stdout=subprocess.PIPE,
                                    check=True).stdout)
    return path


def _indexed(path: Path) -> zstd.ZstdSource:
    stream = open_decompressed(FileSource(path), cache=BlockCache(64 << 20), spacing=4 << 20)
    assert isinstance(stream, zstd.ZstdSource)
    stream.build()
    return stream


def _both(stream: zstd.ZstdSource, i: int, j: int) -> tuple[list[bytes], list[bytes]]:
    """Span ``i`` decoded from span ``j``'s origin by each decoder."""
    index = stream.index
    assert index is not None
    _kind, _own, blocks_end, frame_end = index.meta[i]
    origin = index.meta[j][1]
    skip = index.starts[i] - index.starts[j]
    prefix = None if origin[0] == "f" else pyzstd.decompress(index.blobs[origin[3]])
    assert zstdspan.decodable(origin, prefix)
    new = list(zstdspan.SpanDecoder(stream.source, origin, prefix, blocks_end, frame_end, skip,
                                   lambda n: None).pieces())
    old = list(stream._iter_span_pyzstd(i, origin, prefix, blocks_end, frame_end, skip))
    return new, old


def test_every_span_decodes_the_same_through_libzstd_and_pyzstd(packed: Path,
                                                                 data: bytes) -> None:  # noqa: F811
    stream = _indexed(packed)
    index = stream.index
    assert index is not None and index.spans > 4
    kinds = set()
    for i in range(index.spans):
        new, old = _both(stream, i, i)
        kinds.add(index.meta[i][1][0])
        assert [len(p) for p in new[:-1]] == [SUB_CHUNK] * (len(new) - 1)   # aligned pieces
        assert b"".join(new) == b"".join(old) == data[index.starts[i]:index.starts[i + 1]], i
    assert "f" in kinds and len(kinds) > 1, kinds        # frame starts and resume points
    stream.close()


def test_a_span_takes_a_foreign_call_per_piece_not_per_block(
        packed: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Every call into libzstd releases and retakes the GIL, and retaking it
    waits for other threads' Python: a span is decoded a piece per call
    (plus one per compressed read and the flush), not a call per 128 KiB
    block; and each piece is its own memory, not a view pinning more."""
    steps = []

    class Counting(zstdstream.StreamDecoder):
        def step(self) -> bool:
            steps.append(1)
            return super().step()

    def counting(window: int) -> zstdstream.StreamDecoder:
        dec = zstdstream.stream_decoder(window)
        assert dec is not None
        dec.__class__ = Counting
        return dec

    monkeypatch.setattr(zstdspan, "stream_decoder", counting)
    stream = _indexed(packed)
    index = stream.index
    assert index is not None
    for i in range(index.spans):
        steps.clear()
        new, _old = _both(stream, i, i)
        compressed = index.meta[i][2] - index.meta[i][1][1]
        reads = -(-compressed // zstdspan.READ_CHUNK)
        blocks = -(-(index.starts[i + 1] - index.starts[i]) // (128 << 10))
        assert len(new) <= len(steps) <= len(new) + reads + 2 < blocks, (i, len(steps), blocks)
        for piece in new:
            whole = piece.obj if isinstance(piece, memoryview) else piece
            assert type(whole) is bytes and len(whole) == SUB_CHUNK, i
    stream.close()


def test_a_span_decoded_from_an_earlier_origin_drops_what_comes_before(
        packed: Path, data: bytes) -> None:  # noqa: F811
    stream = _indexed(packed)
    index = stream.index
    assert index is not None
    i = index.spans - 1                                 # the last span: the frame's checksum too
    j = zstd._frame_start(index, i)                     # as a fallback decodes it at last
    if j == i:
        pytest.skip("the last frame holds one span")
    new, old = _both(stream, i, j)
    assert b"".join(new) == b"".join(old) == data[index.starts[i]:]
    stream.close()


def test_a_snapshot_that_looks_like_a_dictionary_goes_to_pyzstd() -> None:
    origin = ["r", 1000, 0x50, 0]
    assert zstdspan.decodable(origin, b"\x00" * 64)
    assert not zstdspan.decodable(origin, DICT_MAGIC + b"\x00" * 60)
    assert zstdspan.decodable(["f", 0], None)


def test_a_damaged_block_is_one_error_not_wrong_bytes(packed: Path, data: bytes,  # noqa: F811
                                                     tmp_path: Path) -> None:
    good = _indexed(packed)
    index = good.index
    assert index is not None
    i = index.spans // 2
    origin = index.meta[i][1]
    damaged = tmp_path / "damaged.zst"
    raw = bytearray(packed.read_bytes())
    raw[origin[1] + 1000] ^= 0x55                       # inside the span's first block
    damaged.write_bytes(bytes(raw))
    stream = open_decompressed(FileSource(damaged), cache=BlockCache(64 << 20), spacing=4 << 20)
    assert isinstance(stream, zstd.ZstdSource)
    stream._index = index                               # the good file's (its pass would stop)
    with pytest.raises(ImageError):
        stream.read_at(index.starts[i], 1 << 20)
    assert stream.read_at(0, 4096) == data[:4096]       # other spans still read
    good.close()
    stream.close()


def test_a_sequential_reader_takes_one_decoder_on_through_the_frames_spans(
        packed: Path, data: bytes) -> None:  # noqa: F811
    # Each span resumes where the one before ended: going on with the same
    # decoder gives the same bytes without loading the next span's snapshot.
    stream = _indexed(packed)
    index = stream.index
    assert index is not None and index.spans > 4
    stream._stream.prefetch = False                  # the reader's own decoding
    got = b"".join(stream.read_at(o, 1 << 20) for o in range(0, stream.size, 1 << 20))
    assert got == data
    frames = sum(1 for m in index.meta if m[1][0] == "f")
    assert stream._spans.spans_decoded == frames < index.spans
    stream.close()
