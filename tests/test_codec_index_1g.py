"""After indexing, a fresh open of a 1 GB zstd or gzip
image answers a random 4 KiB read by decoding at most the checkpoint spans
its checksum group touches: verify on read checks the read's whole group
(256 blocks, 1 MiB), which may reach into the next span (gzip's are about
1 MiB of compressed bytes).

Asserted on the codec source's decoded-byte counter, never on time.  The
image is a real ``partclone.imager`` image of a 1 GiB source holding mixed
data, compressed the way Clonezilla does (``zstd -T0 -3``, ``pigz --fast``).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from imagefs.blockio import VirtualPartition
from imagefs.codecs import build_index
from imagefs.services.indexstore import IndexStore
from imagefs.blockio.opener import OpenContext, open_image_header, open_stream
from imagefs.io.pieces import SINGLE, resolve
from realimages import loop_device, need, need_root, pipe_to_files, run

SIZE = 1 << 30


@pytest.fixture(scope="module")
def big_image(tmp_path_factory) -> tuple[Path, Path]:
    """(raw source, partclone image) of 1 GiB with about 600 MB of data."""
    need("partclone.imager")
    need_root()
    d = tmp_path_factory.mktemp("big")
    raw = d / "src.raw"
    rng = random.Random(42)
    text = b"".join(b"record %08d payload %s\n" % (i, b"x" * (i % 40)) for i in range(30000))
    with open(raw, "wb") as f:
        f.truncate(SIZE)
        for mib in rng.sample(range(SIZE >> 20), 600):
            f.seek(mib << 20)
            f.write(rng.randbytes(1 << 20) if mib % 3 == 0 else text[:1 << 20])
    image = d / "sda1.dd-ptcl-img"
    with loop_device(raw) as dev:
        run(["partclone.imager", "-c", "-s", dev, "-o", str(image)])
    return raw, image


@pytest.mark.parametrize("cmd,suffix", [(["zstd", "-q", "-c", "-T0", "-3"], "zst"),
                                        (["pigz", "-c", "--fast", "-b", "1024", "--rsyncable"], "gz")],
                         ids=["zstd", "pigz"])
def test_one_span_per_random_read_after_indexing(big_image, tmp_path, cmd, suffix):
    raw, image = big_image
    compressed = tmp_path / f"{image.name}.{suffix}"
    pipe_to_files(image, cmd, compressed)
    store = IndexStore(str(tmp_path / "index"))

    # Build and persist the index (what `imagefs index` or a first mount does).
    stream, _ = open_stream([str(compressed)], "single", OpenContext(index_store=store))
    build_index(stream, index_store=store)
    stream.close()

    rng = random.Random(7)
    with open(raw, "rb") as truth_file:
        for _ in range(5):
            # A fresh open with the same index directory = a fresh mount.
            ctx = OpenContext(index_store=store)
            header, _ = open_image_header(str(compressed), ctx)
            codec_source = header.source
            vp = VirtualPartition(header.open(store), None)
            before = codec_source.decoded_bytes
            off = rng.randrange(SIZE // 2, SIZE - 4096) // 4096 * 4096
            data = vp.read(off, 4096)
            truth_file.seek(off)
            assert data == truth_file.read(4096)
            decoded = codec_source.decoded_bytes - before
            assert "index loaded" in codec_source.index_state(), codec_source.index_state()
            starts = codec_source.index.starts
            largest_span = max(b - a for a, b in zip(starts, starts[1:]))
            assert 0 < decoded <= 2 * largest_span, (decoded, largest_span,
                                                     codec_source.index_state())
            codec_source.close()
    assert resolve(str(compressed)).kind == SINGLE
