"""The io layer: pread sources, piece sets, the descriptor pool."""

from __future__ import annotations

import os
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from imagefs.errors import SourceChangedError, SourceError, TruncatedError
from imagefs.io import ConcatSource, FdPool, FileSource, MemorySource, SliceSource
from imagefs.io.pieces import collect_piece_set, next_auto_suffix, next_fixed_suffix
from imagefs.blockio.opener import open_path
from imagefs.io.pieces import resolve
from imagefs.io.scatter import read_into


def test_file_source_reads_without_a_shared_cursor(tmp_path):
    data = random.Random(1).randbytes(3_000_000)
    p = tmp_path / "f"
    p.write_bytes(data)
    src = FileSource(p, FdPool(2))

    def check(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            off = rng.randrange(len(data))
            n = rng.randrange(1, 70_000)
            assert src.read_at(off, n) == data[off:off + n]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(check, range(8)))
    assert src.read_at(len(data) - 3, 10) == data[-3:]
    assert src.read_at(len(data), 10) == b""


def test_file_that_shrinks_has_changed(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 10_000)
    src = FileSource(p)
    os.truncate(p, 5000)
    with pytest.raises(SourceChangedError, match="changed since mounted: size 10000 -> 5000"):
        src.read_at(4000, 3000)
    with pytest.raises(SourceChangedError):          # and stays so
        src.read_at(0, 10)


def test_fd_pool_stays_bounded(tmp_path):
    pool = FdPool(4)
    sources = []
    for i in range(50):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * 100)
        sources.append(FileSource(p, pool))
    for _ in range(3):
        for i, s in enumerate(sources):
            assert s.read_at(0, 3) == bytes([i]) * 3
            assert pool.open_count() <= 4
    pool.close_all()
    assert pool.open_count() == 0


def test_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="nope"):
        FileSource(tmp_path / "nope")


def test_concat_and_slice():
    parts = [MemorySource(bytes([i]) * (i * 7 + 1)) for i in range(10)]
    whole = b"".join(bytes([i]) * (i * 7 + 1) for i in range(10))
    cat = ConcatSource(parts)
    assert cat.size == len(whole)
    for off in range(len(whole)):
        for n in (1, 5, 50, 400):
            assert cat.read_at(off, n) == whole[off:off + n]
    sl = SliceSource(cat, 13)
    assert sl.read_at(0, 1000) == whole[13:]
    assert sl.cheap_size() == len(whole) - 13


def _scatter_views(rng: random.Random, total: int) -> tuple[bytearray, list[memoryview]]:
    """One buffer cut into random-sized views (some empty) covering ``total`` bytes."""
    buf = bytearray(b"\xee" * total)
    mv = memoryview(buf)
    views, pos = [], 0
    while pos < total:
        n = min(rng.choice((0, 1, 3, 4, 100, 4096)), total - pos)
        views.append(mv[pos:pos + n])
        pos += n
    return buf, views


def test_read_into_matches_read_at_for_every_kind_of_source(tmp_path):
    data = random.Random(2).randbytes(200_000)
    cuts = [0, 70_000, 70_001, 150_000, len(data)]
    paths = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        paths.append(tmp_path / f"p{i}")
        paths[-1].write_bytes(data[a:b])
    (tmp_path / "whole.bin").write_bytes(data)
    sources = {
        "file": FileSource(tmp_path / "whole.bin"),
        "pieces": ConcatSource([FileSource(p) for p in paths]),
        "memory": MemorySource(data),
        "slice": SliceSource(ConcatSource([FileSource(p) for p in paths]), 5, len(data) - 10),
    }
    rng = random.Random(3)
    for name, src in sources.items():
        shift = 5 if name == "slice" else 0
        for _ in range(200):
            off = rng.randrange(src.cheap_size())
            total = rng.randrange(0, min(30_000, src.cheap_size() - off) + 1)
            buf, views = _scatter_views(rng, total)
            read_into(src, off, views)
            assert bytes(buf) == data[shift + off:shift + off + total], (name, off, total)


def test_read_into_takes_more_buffers_than_one_preadv_can(tmp_path):
    data = random.Random(4).randbytes(5000)
    (tmp_path / "f").write_bytes(data)
    buf = bytearray(len(data))
    mv = memoryview(buf)
    views = [mv[i:i + 1] for i in range(len(data))]        # 5000 iovecs > IOV_MAX
    FileSource(tmp_path / "f").read_into(0, views)
    assert bytes(buf) == data


def test_read_into_past_the_end_raises_and_never_half_fills_silently(tmp_path):
    (tmp_path / "f").write_bytes(b"y" * 10_000)
    src = FileSource(tmp_path / "f")
    with pytest.raises(TruncatedError):
        src.read_into(9_000, [memoryview(bytearray(2_000))])
    os.truncate(tmp_path / "f", 5_000)                      # shrank after opening
    with pytest.raises(SourceChangedError):
        src.read_into(4_000, [memoryview(bytearray(3_000))])
    with pytest.raises(TruncatedError):
        read_into(MemorySource(b"z" * 10), 5, [memoryview(bytearray(6))])
    with pytest.raises(TruncatedError):
        ConcatSource([MemorySource(b"a" * 4), MemorySource(b"b" * 4)]).read_into(
            6, [memoryview(bytearray(3))])


def test_split_suffix_rules_match_gnu_split(tmp_path):
    data = bytes(700)
    (tmp_path / "in").write_bytes(data)
    subprocess.run(["split", "-b", "1", str(tmp_path / "in"), str(tmp_path / "p.")], check=True)
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("p."))
    ps = collect_piece_set("p.aa", names)
    assert len(ps.names) == 700 and ps.missing is None
    # Check our successor rule reproduces split's own order.
    produced = ["aa"]
    while len(produced) < 700:
        produced.append(next_auto_suffix(produced[-1]))
    assert set(f"p.{s}" for s in produced) == set(names)
    assert next_fixed_suffix("az") == "ba" and next_fixed_suffix("zz") is None


def test_split_with_fixed_width_and_partimage_volumes(tmp_path):
    names = [f"x.img.{a}{b}" for a in "ab" for b in "abcdefghijklmnopqrstuvwxyz"]
    ps = collect_piece_set("x.img.aa", names)
    assert ps.names == names and ps.missing is None
    vols = ["v.000", "v.001", "v.002"]
    ps = collect_piece_set("v.000", vols)
    assert ps.names == vols
    ps = collect_piece_set("v.000", ["v.000", "v.002"])
    assert ps.missing == "v.001"


def test_a_hole_in_a_set_is_one_error_everywhere(tmp_path):
    for s in ("aa", "ab", "ad"):
        (tmp_path / f"img.{s}").write_bytes(b"x")
    resolved = resolve(str(tmp_path / "img.aa"))
    assert resolved.missing is not None and "img.ac" in str(resolved.missing)
    with pytest.raises(SourceError, match=r"img\.ac"):
        open_path(str(tmp_path / "img.aa"))
    (tmp_path / "img.ac").write_bytes(b"x")
    resolved = resolve(str(tmp_path / "img.aa"))
    assert [os.path.basename(n) for n in resolved.paths] == ["img.aa", "img.ab", "img.ac",
                                                             "img.ad"]
    assert resolved.kind == "split" and resolved.missing is None


def test_unrelated_sibling_is_not_a_missing_piece():
    names = ["x.img.aa", "x.img.ab", "x.img.sha", "x.img.md5sum"]
    ps = collect_piece_set("x.img.aa", names)
    assert ps.names == ["x.img.aa", "x.img.ab"] and ps.missing is None
    ps = collect_piece_set("x.img.aa", ["x.img.aa", "x.img.ab", "x.img.ad"])
    assert ps.missing == "x.img.ac"
    ps = collect_piece_set("x.img.aa", ["x.img.aa", "x.img.zaab"])   # auto-widened piece
    assert ps.missing == "x.img.ab"


def test_fd_pool_shares_one_descriptor_between_threads(tmp_path):
    data = random.Random(4).randbytes(1 << 20)
    p = tmp_path / "shared"
    p.write_bytes(data)
    pool = FdPool(4)
    src = FileSource(p, pool)

    def reads(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(500):
            off = rng.randrange(len(data))
            assert src.read_at(off, 4096) == data[off:off + 4096]

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(reads, range(8)))
    # Concurrent first opens may race, but readers never churn descriptors.
    assert pool.opens <= 8
    assert pool.open_count() == 1


def test_scatter_parts_copies_every_cutting_exactly() -> None:
    # Long copies go through memmove with the GIL released, short ones and
    # read-only or non-bytes ones through slice assignment: all the same bytes.
    from imagefs.io.scatter import RELEASED_COPY, scatter_parts
    rng = random.Random(5)
    blobs = [rng.randbytes(rng.choice([100, RELEASED_COPY - 1, RELEASED_COPY, 3 << 20]))
             for _ in range(12)]
    parts: list[tuple[bytes, int, int]] = []
    for blob in blobs:
        lo = rng.randrange(len(blob) // 2)
        parts.append((blob, lo, len(blob) - lo - rng.randrange(len(blob) - lo)))
    parts.append((bytearray(b"not bytes" * 20000), 7, 150000))   # type: ignore[arg-type]
    want = b"".join(bytes(d[lo:lo + n]) for d, lo, n in parts)
    for sizes in ([len(want)], [1 << 20] * (len(want) >> 20) + [len(want) % (1 << 20)],
                  [rng.randrange(1, 200000) for _ in range(400)]):
        bufs = [bytearray(s) for s in sizes]
        views = [memoryview(b) for b in bufs]
        copied = scatter_parts(parts, views)
        got = b"".join(bufs)
        assert copied == min(len(want), len(got)) and got[:copied] == want[:copied]
    with pytest.raises(TypeError):       # a read-only destination is refused, never written
        scatter_parts(parts, [memoryview(bytes(len(want)))])


def test_join_released_equals_join() -> None:
    import mmap

    from imagefs.io.scatter import join_released
    rng = random.Random(6)
    seg = mmap.mmap(-1, 4 << 20)
    seg[:] = rng.randbytes(4 << 20)
    view = memoryview(seg)
    cuts = [view[0:100], view[100:(3 << 20)], view[(3 << 20):(3 << 20)], view[(3 << 20) + 5:]]
    assert join_released(cuts) == b"".join(cuts)
    assert join_released([view[:10]]) == bytes(view[:10])       # short: the plain join
    assert join_released([memoryview(b"read-only" * 10000)]) == b"read-only" * 10000
    del cuts, view
    seg.close()
