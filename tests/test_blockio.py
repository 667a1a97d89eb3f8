"""Bitmap ranks, grouped layouts and the virtual-partition reader."""

from __future__ import annotations

import random

import pytest
from imagefs.blockio import VirtualPartition
from imagefs.formats.base import BlockImage
from imagefs.formats.bitmap import RankedBitmap
from imagefs.formats.layout import GroupedLayout
from imagefs.io import MemorySource
from imagefs.services.cache import BlockCache


@pytest.mark.parametrize("total", [1, 7, 8, 9, 4095, 4096, 4097, 20000])
def test_rank_and_extents_against_a_naive_count(total):
    rng = random.Random(total)
    bits = bytearray(rng.randbytes((total + 7) // 8))
    bits[-1] |= 0xF0                        # padding bits set, as partclone leaves them
    bm = RankedBitmap(bytes(bits), total)
    naive = [(bits[k >> 3] >> (k & 7)) & 1 for k in range(total)]
    running = 0
    for k in range(total + 1):
        assert bm.rank(k) == running
        if k < total:
            running += naive[k]
    assert bm.count == sum(naive)
    for _ in range(200):
        a = rng.randrange(total)
        n = rng.randrange(1, total - a + 1)
        runs = bm.extents(a, n)
        flat = [s for start, cnt, s in runs for _ in range(cnt)]
        assert flat == [bool(x) for x in naive[a:a + n]]
        assert all(runs[i][2] != runs[i + 1][2] for i in range(len(runs) - 1))


def test_byte_flag_bitmap_counts_only_ones():
    flags = bytes([1, 0, 2, 1, 255, 1, 1, 0, 1])
    bm = RankedBitmap.from_byte_flags(flags, len(flags))
    assert [bm.is_set(k) for k in range(9)] == [f == 1 for f in flags]


def test_grouped_layout_strips_trailers():
    bs, g, t = 16, 3, 5
    blocks = [bytes([i]) * bs for i in range(20)]
    stream = bytearray(b"H" * 7)
    for i, b in enumerate(blocks):
        stream += b
        if (i + 1) % g == 0:
            stream += b"C" * t
    layout = GroupedLayout(MemorySource(bytes(stream)), 7, bs, g, t)
    for r in range(20):
        for n in range(1, 21 - r):
            assert layout.read_ranks(r, n) == b"".join(blocks[r:r + n])


@pytest.mark.parametrize("on_file", [False, True], ids=["memory", "file-preadv"])
def test_grouped_layout_read_into_any_byte_range(tmp_path, on_file):
    """read_into scatters data bytes from any position; trailers never reach dest."""
    bs, g, t = 16, 3, 5
    blocks = [bytes([i + 1]) * bs for i in range(40)]
    stream = bytearray(b"H" * 7)
    for i, b in enumerate(blocks):
        stream += b
        if (i + 1) % g == 0:
            stream += b"C" * t
    if on_file:
        (tmp_path / "img").write_bytes(bytes(stream))
        from imagefs.io import FileSource
        source = FileSource(tmp_path / "img")
    else:
        source = MemorySource(bytes(stream))
    layout = GroupedLayout(source, 7, bs, g, t)
    data = b"".join(blocks)
    for pos in range(0, len(data), 3):
        for n in (1, 15, 16, 17, 47, 48, 49, 200):
            n = min(n, len(data) - pos)
            dest = bytearray(n)
            layout.read_into(pos, memoryview(dest))
            assert bytes(dest) == data[pos:pos + n], (pos, n)


class _FakeImage:
    """A block image over an in-memory map, to test the reader's assembly."""

    def __init__(self, bs, total, stored, device_size):
        from types import SimpleNamespace
        self.header = SimpleNamespace(block_size=bs, total_blocks=total, device_size=device_size,
                                      source=MemorySource(b""))
        self.bitmap = RankedBitmap(
            int("".join("1" if k in stored else "0" for k in reversed(range(total))) or "0", 2)
            .to_bytes((total + 7) // 8, "little"), total)
        self.block_size, self.total_blocks, self.device_size = bs, total, device_size
        self.data = {k: random.Random(k).randbytes(bs) for k in stored}

    def extents(self, first, count):
        return self.bitmap.extents(first, count)

    def read_stored(self, first, count):
        return b"".join(self.data[k] for k in range(first, first + count))

    read_stored_into = BlockImage.read_stored_into   # the default: read and copy

    def close(self):
        pass


def _fake_partition(seed: int, stored_count: int, tail: int, cache):
    """A 300-block fake image with ``tail`` bytes past its blocks, and its true bytes."""
    bs, total = 512, 300
    stored = set(random.Random(seed).sample(range(total), stored_count))
    img = _FakeImage(bs, total, stored, total * bs + tail)   # the tail reads as zeros
    truth = b"".join(img.data.get(k, bytes(bs)) for k in range(total)) + bytes(tail)
    return VirtualPartition(img, cache, chunk_size=4096), truth


def _random_ranges(seed: int, device: int, count: int = 500):
    """(offset, size) pairs, some past the end, some empty."""
    rng = random.Random(seed)
    for _ in range(count):
        yield rng.randrange(device + 10), rng.randrange(0, 20_000)


@pytest.mark.parametrize("cache", [None, BlockCache(64 * 1024)])
def test_reader_zero_fills_holes_and_tail(cache):
    vp, truth = _fake_partition(2, 120, 777, cache)
    for off, n in _random_ranges(3, len(truth)):
        assert vp.read(off, n) == truth[off:off + n]
    assert vp.read(0, len(truth)) == truth


@pytest.mark.parametrize("cache", [None, BlockCache(64 * 1024)])
def test_read_into_fills_exactly_the_partition_bytes(cache):
    """read_into (the FUSE reply path) = read, and leaves the buffer past the end alone."""
    vp, truth = _fake_partition(4, 150, 333, cache)
    for off, n in _random_ranges(5, len(truth)):
        buf = bytearray(b"\xee" * (n + 7))        # garbage, as a reply buffer may hold
        got = vp.read_into(off, memoryview(buf)[:n])
        want = truth[off:off + n]
        assert got == len(want)
        assert buf[:got] == want
        assert buf[got:] == b"\xee" * (n + 7 - got)
    # read() still hands out bytes (mfusepy's plain read passes them to ctypes).
    assert type(vp.read(0, 20_000)) is bytes
