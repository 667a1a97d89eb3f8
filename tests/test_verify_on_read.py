"""Verify on read: every checksum group is checked on its first read, once.

Real images from the Factory (partclone CRC32 with and without reseed, other
bpc values, Clonezilla's 10 MiB groups, the real partclone 0.2.x samples,
partimage CHK records); XXH modes are re-encoded from a real CRC32 image
(Debian's partclone 0.3.23 cannot write them).  Only the corruption itself
is hand-made: a flipped byte in a group's data or in its stored checksum.
A read touching a bad group fails, every other read equals the ground
truth, and the image's header names the group.
"""

from __future__ import annotations

import logging
import lzma
import random
import threading
from pathlib import Path

import pytest
from imagefs.blockio import VirtualPartition
from imagefs.errors import ChecksumError
from imagefs.formats import probe
from imagefs.formats.base import BitmapImage
from imagefs.io import FileSource
from imagefs.io.scatter import read_into
from imagefs.services.cache import BlockCache
from xxhrecode import recode_xxh

DATA = Path(__file__).parent / "data"


def _open(path: Path, cache: bool = True) -> tuple[BitmapImage, VirtualPartition]:
    image = probe(FileSource(str(path))).open()
    assert isinstance(image, BitmapImage)
    return image, VirtualPartition(image, BlockCache(8 << 20) if cache else None)


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def _group_of_block(image: BitmapImage, block: int) -> int | None:
    """The checksum group holding a partition block's data (None: not stored)."""
    if not image.bitmap.is_set(block):
        return None
    checker = image.layout.checker
    assert checker is not None
    return image.bitmap.rank(block) * image.block_size // checker.group_bytes


def _expect_only(image: BitmapImage, vp: VirtualPartition, truth: bytes, bad: set[int],
                 step: int | None = None) -> None:
    """Each block-sized read fails iff its data lies in a bad group, else equals the truth."""
    bs = step or image.block_size
    for off in range(0, vp.size, bs):
        block = off // image.block_size
        group = _group_of_block(image, block) if block < image.total_blocks else None
        if group in bad:
            with pytest.raises(ChecksumError):
                vp.read(off, bs)
        else:
            assert vp.read(off, bs) == truth[off:off + bs], f"wrong bytes at {off}"


# ------------------------------------------------------------------ good images

@pytest.mark.parametrize("args", [(), ("-K",), ("-k", "100"), ("-z", "10485760")],
                         ids=["crc32", "crc32-noreseed", "bpc100", "clonezilla-bpc2560"])
def test_good_images_read_exactly_and_every_group_gets_checked(factory, args):
    img = factory.partclone("ext4", args)
    truth = img.ground_truth.read_bytes()
    image, vp = _open(img.path)
    checker = image.layout.checker
    assert checker is not None and checker.enabled and checker.checked == 0
    rng = random.Random(7)
    for _ in range(300):                      # small reads first: whole groups get checked
        off = rng.randrange(vp.size)
        n = rng.choice([1, 512, 4096, 70_000])
        assert vp.read(off, n) == truth[off:off + n]
    assert vp.read(0, vp.size) == truth
    assert checker.complete and checker.checked == checker.groups
    assert image.header.damage is None


def test_a_small_read_checks_its_whole_group_once(factory):
    img = factory.partclone("ext4")
    image, vp = _open(img.path, cache=False)
    checker = image.layout.checker
    assert checker is not None
    block = next(b for b in range(image.total_blocks) if image.bitmap.is_set(b)
                 and image.bitmap.rank(b) % image.header.blocks_per_checksum == 77)
    vp.read(block * image.block_size + 100, 10)
    assert checker.checked == 1
    group = _group_of_block(image, block)
    assert group is not None and checker.pending(group, group) == []
    vp.read(block * image.block_size + 200, 10)
    assert checker.checked == 1


def test_no_checksums_means_no_checker(factory):
    image, vp = _open(factory.partclone("ext4", ("-a0",)).path)
    assert image.layout.checker is None


# ------------------------------------------------------------------ corruption

def _corrupt_copy(img_path: Path, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    out.write_bytes(img_path.read_bytes())
    return out


@pytest.mark.parametrize("args", [(), ("-K",)], ids=["reseed", "noreseed"])
def test_flipped_data_fails_only_its_group(factory, tmp_path, caplog, args):
    img = factory.partclone("ext4", args)
    truth = img.ground_truth.read_bytes()
    path = _corrupt_copy(img.path, tmp_path, "flip.img")
    image, _ = _open(img.path)
    checker = image.layout.checker
    assert checker is not None
    bad = checker.groups // 2
    _flip(path, image.layout.data_offset(bad * checker.group_bytes + 1234))
    image, vp = _open(path)
    with caplog.at_level(logging.ERROR):
        _expect_only(image, vp, truth, {bad})
        _expect_only(image, vp, truth, {bad})            # the second time from the bit table
    damage = image.header.damage or ""
    assert f"group {bad} " in damage and "partition bytes" in damage and "image byte" in damage
    logged = [r for r in caplog.records if f"group {bad} " in r.getMessage()]
    assert len(logged) == 1, "a bad group is logged once"


def test_flipped_running_crc_record_fails_its_group_and_the_next(factory, tmp_path):
    """Without reseed a group starts from the previous record: a bad record fails two groups."""
    img = factory.partclone("ext4", ("-K",))
    truth = img.ground_truth.read_bytes()
    path = _corrupt_copy(img.path, tmp_path, "record.img")
    image, _ = _open(img.path)
    checker = image.layout.checker
    assert checker is not None
    bad = 3
    _flip(path, image.layout.data_offset(bad * checker.group_bytes) + checker.group_bytes + 1)
    image, vp = _open(path)
    _expect_only(image, vp, truth, {bad, bad + 1})
    with pytest.raises(ChecksumError, match=f"block group {bad} "):
        image.verify()


@pytest.mark.parametrize("mode,reseed", [(0x30, True), (0x31, True), (0x30, False),
                                         (0x31, False)])
def test_xxh_modes(factory, tmp_path, mode, reseed):
    img = factory.partclone("ext4")
    truth = img.ground_truth.read_bytes()
    path = tmp_path / "xxh.img"
    path.write_bytes(recode_xxh(img.path.read_bytes(), mode, reseed, 111))
    image, vp = _open(path)
    checker = image.layout.checker
    assert checker is not None and checker.algo.sequential is (not reseed)
    assert vp.read(0, vp.size) == truth and checker.complete
    image.verify()                 # the whole-image check reads the same records
    bad = checker.groups // 2
    target = image.layout.data_offset(bad * checker.group_bytes + 99)
    _flip(path, target)
    image, vp = _open(path)
    with pytest.raises(ChecksumError, match=f"block group {bad} ") as err:
        image.verify()
    assert err.value.image_offset is not None and err.value.image_offset <= target
    # A running digest cannot be trusted after a damaged group: those reads fail too.
    failing = {bad} if reseed else set(range(bad, checker.groups))
    _expect_only(image, vp, truth, failing)
    # Reads far behind the damage still work after it was found.
    assert vp.read(0, 4096) == truth[:4096]


def test_partclone_v1_register_is_checked(tmp_path):
    path = tmp_path / "v1.img"
    path.write_bytes(lzma.decompress((DATA / "partclone-v1" / "ext4-4k.v1.img.xz").read_bytes()))
    truth = lzma.decompress((DATA / "partclone-v1" / "ext4-4k.raw.xz").read_bytes())
    image, vp = _open(path)
    checker = image.layout.checker
    assert checker is not None
    stored = [b for b in range(image.total_blocks) if image.bitmap.is_set(b)]
    truth_stored = bytearray(truth)        # the raw source with unstored blocks zeroed
    bs = image.block_size
    for b in range(image.total_blocks):
        if not image.bitmap.is_set(b):
            truth_stored[b * bs:(b + 1) * bs] = bytes(bs)
    assert vp.read(0, vp.size) == bytes(truth_stored)[:vp.size] and checker.complete
    victim = stored[len(stored) // 2]
    rank = image.bitmap.rank(victim)
    _flip(path, image.layout.data_offset(rank * bs))          # the block's first byte
    image, vp = _open(path)
    _expect_only(image, vp, bytes(truth_stored), {rank})


def test_partimage_chk_records(factory, tmp_path):
    from realimages_partimage import partimage_image
    img = partimage_image(factory, "ext3")
    truth = img.ground_truth.read_bytes()
    image, vp = _open(img.path)
    checker = image.layout.checker
    assert checker is not None and checker.group_bytes == 65536
    assert vp.read(0, vp.size) == truth and checker.complete
    path = _corrupt_copy(img.path, tmp_path, "pi.img")
    bad = checker.groups // 3
    _flip(path, image.layout.data_offset(bad * 65536 + 4000))
    image, vp = _open(path)
    _expect_only(image, vp, truth, {bad})
    assert "data chunk" in (image.header.damage or "")


def test_verify_off_serves_the_stored_bytes(factory, tmp_path):
    img = factory.partclone("ext4")
    path = _corrupt_copy(img.path, tmp_path, "off.img")
    image, _ = _open(img.path)
    _flip(path, image.layout.data_offset(5000))
    image, vp = _open(path)
    image.set_verify(False)
    block = image.bitmap.select(5000 // image.block_size)
    data = vp.read(block * image.block_size, image.block_size)
    assert data != img.ground_truth.read_bytes()[block * image.block_size:][:len(data)]


def test_threads_never_see_wrong_bytes(factory, tmp_path):
    img = factory.partclone("ext4", ("-k", "100"))
    truth = img.ground_truth.read_bytes()
    path = _corrupt_copy(img.path, tmp_path, "threads.img")
    image, _ = _open(img.path)
    checker = image.layout.checker
    assert checker is not None
    bad = {5, 17}
    for g in bad:
        _flip(path, image.layout.data_offset(g * checker.group_bytes + 10))
    image, vp = _open(path, cache=False)
    wrong: list[int] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(400):
                off = rng.randrange(vp.size)
                n = rng.choice([512, 4096, 100_000, 1 << 20])
                try:
                    got = vp.read(off, n)
                except ChecksumError:
                    continue
                if got != truth[off:off + n]:
                    wrong.append(off)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong
    assert image.layout.checker is not None and image.layout.checker.damaged == len(bad)


# ------------------------------------------------------------------ the setting

def test_verify_setting_from_yaml_and_options():
    from imagefs.config import apply_overrides, settings_from_dict
    from imagefs.errors import ConfigError
    assert settings_from_dict({}).verify is True
    assert settings_from_dict({"verify": False}).verify is False
    assert settings_from_dict({"mount": {"verify": "off"}}).verify is False
    assert apply_overrides(settings_from_dict({}), {"verify": "off"}).verify is False
    assert apply_overrides(settings_from_dict({"verify": False}), {"verify": "on"}).verify
    with pytest.raises(ConfigError, match="verify"):
        settings_from_dict({"verify": True, "mount": {"verify": False}})
    with pytest.raises(ConfigError, match="verify"):
        settings_from_dict({"mount": {"verify": "maybe"}})


def test_the_catalog_applies_the_setting(factory, tmp_path):
    from imagefs.catalog import Catalog
    from imagefs.config import Settings
    img = factory.partclone("ext4")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.img").write_bytes(img.path.read_bytes())
    for verify in (True, False):
        catalog = Catalog(Settings(verify=verify, index_dir=str(tmp_path / "idx")), str(src))
        try:
            entry = next(e for e in (getattr(n, "entry", None) for n in catalog.walk()) if e)
            checker = entry.partition().image.layout.checker
            assert checker is not None and checker.enabled is verify
        finally:
            catalog.close()


# ------------------------------------------------- compressed streams, many readers

def _zstd_partition(factory) -> tuple[object, BitmapImage, VirtualPartition, bytes]:
    """A real partclone image compressed by the real ``zstd -T0`` (one frame),
    read through resume points 2 MiB apart so that it has several spans."""
    from imagefs.codecs import open_decompressed

    img = factory.compressed(factory.partclone("ext4"), ["zstd", "-q", "-T0", "-3", "-c"], "zst")
    stream = open_decompressed(FileSource(str(img.path)), cache=BlockCache(64 << 20),
                               spacing=2 << 20)
    stream.build()
    image = probe(stream).open()
    assert isinstance(image, BitmapImage) and image.layout.checker is not None
    return stream, image, VirtualPartition(image, None), img.ground_truth.read_bytes()


@pytest.mark.parametrize("order", ["in-order", "pairs-swapped"])
def test_checking_a_compressed_stream_decodes_it_once(factory, order):
    """Widening a read to whole groups reads bytes the next request wants.

    They are read as a peek: counted as delivered, a decompressed stream
    freed their piece before that request came, which then decoded the span
    again from its resume point (twice the work: half the speed).
    """
    stream, image, vp, truth = _zstd_partition(factory)
    try:
        step = 128 << 10                      # the kernel's readahead requests
        offsets = list(range(0, vp.size, step))
        if order == "pairs-swapped":          # FUSE threads overtaking each other
            swapped = [o for a, b in zip(offsets[0::2], offsets[1::2], strict=False)
                       for o in (b, a)]
            offsets = swapped + offsets[len(swapped):]
        before = stream.decoded_bytes
        for off in offsets:
            assert vp.read(off, step) == truth[off:off + step], off
        assert image.layout.checker.complete
        assert stream.decoded_bytes - before <= stream.size + (1 << 20)
    finally:
        stream.close()


class _RecordingSource:
    """The layout's source, recording every read; the first peek waits for ``go``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int, int, bool]] = []
        self.holding = threading.Event()     # the first peek has begun
        self.go = threading.Event()
        self._held = False

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def read_into(self, offset: int, views) -> None:
        self._record(offset, views, False)
        read_into(self.inner, offset, views)

    def peek_into(self, offset: int, views) -> None:
        self._record(offset, views, True)
        if not self._held:
            self._held = True
            self.holding.set()
            assert self.go.wait(20), "the second reader never came"
        read_into(self.inner, offset, views)

    def _record(self, offset: int, views, peek: bool) -> None:
        self.calls.append((threading.current_thread().name, offset, sum(map(len, views)), peek))


def test_a_reader_waits_for_the_check_of_its_group_instead_of_repeating_it(factory):
    """Two threads reading one unchecked group: one checks it, the other waits.

    The second reader is let in while the first is inside its check (its
    first peek waits until the second has asked which groups are pending);
    it must then read only its own bytes, after the check.
    """
    img = factory.partclone("ext4")
    truth = img.ground_truth.read_bytes()
    image, vp = _open(img.path, cache=False)
    layout = image.layout
    checker = layout.checker
    assert checker is not None
    source = _RecordingSource(layout.source)
    layout.source = source
    pending = checker.pending

    def pending_then_let_the_first_go_on(g0: int, g1: int) -> list[int]:
        todo = pending(g0, g1)
        if threading.current_thread().name == "second":
            source.go.set()
        return todo

    checker.pending = pending_then_let_the_first_go_on     # type: ignore[method-assign]
    block = next(b for b in range(image.total_blocks) if image.bitmap.is_set(b)
                 and image.bitmap.rank(b) % image.header.blocks_per_checksum == 77)
    first_off = block * image.block_size + 100
    second_off = first_off + 3 * image.block_size
    got: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def reader(name: str, off: int) -> None:
        try:
            got[name] = vp.read(off, 10)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    first = threading.Thread(target=reader, args=("first", first_off), name="first")
    first.start()
    assert source.holding.wait(20)            # the first is inside its check
    second = threading.Thread(target=reader, args=("second", second_off), name="second")
    second.start()
    first.join()
    second.join()
    assert not errors
    assert got == {"first": truth[first_off:first_off + 10],
                   "second": truth[second_off:second_off + 10]}
    assert checker.checked == 1
    seconds = [c for c in source.calls if c[0] == "second"]
    assert seconds == [("second", layout.data_offset(image.bitmap.rank(block) * image.block_size
                                                     + 3 * image.block_size + 100), 10, False)]


def test_a_random_reads_check_decodes_as_demand_and_a_streams_as_background(factory):
    """Decode-ahead makes way for someone waiting (codecs/tuning.demand): with
    verify on, a random read's decoding happens in the peek that widens it to
    its group, so that peek must count as demand; a stream's peeks must not."""
    from imagefs.codecs import tuning
    from imagefs.codecs.streaming import PREFETCH_AFTER

    stream, image, vp, truth = _zstd_partition(factory)
    spans = stream._spans
    # (span start, tuning.urgent()) per piece decoded (a stream's decoder
    # goes on from span to span, so count pieces, not decoders started)
    started: list[tuple[int, bool]] = []
    inner = spans._load

    def recording(index, i, k):
        started.append((index.starts[i], tuning.urgent()))
        return inner(index, i, k)

    spans._load = recording
    stream.prefetch = False                   # every decode in the reading thread
    try:
        bpc = image.header.blocks_per_checksum
        block = max(b for b in range(image.total_blocks)
                    if image.bitmap.is_set(b) and image.bitmap.rank(b) % bpc == bpc // 2)
        off = block * image.block_size       # the middle of its group: a head to peek
        assert vp.read(off, 4096) == truth[off:off + 4096]
        assert started and all(urgent for _, urgent in started), started
        stream.close()                        # forget the decoded pieces: decode again
        started.clear()
        step = 128 << 10
        for pos in range(0, vp.size, step):   # a stream
            assert vp.read(pos, step) == truth[pos:pos + step], pos
        late = [urgent for start, urgent in started if start >= 2 * PREFETCH_AFTER]
        assert late and not any(late), started
    finally:
        stream.close()


class _PeekCounter:
    """The layout's source, counting how its peeked bytes are read."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.copied = 0                       # bytes peeked into scratch (peek_into)
        self.viewed = 0                       # bytes peeked as views of cached pieces

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def read_into(self, offset: int, views) -> None:
        read_into(self.inner, offset, views)

    def peek_into(self, offset: int, views) -> None:
        self.copied += sum(map(len, views))
        read_into(self.inner, offset, views, peek=True)

    def peek_views(self, offset: int, size: int):
        got = self.inner.peek_views(offset, size)
        if got is not None:
            self.viewed += size
        return got


def test_a_compressed_streams_peeked_bytes_are_checked_where_they_lie(factory):
    """The part of a group outside a read is summed in the stream's cached
    pieces, not copied into scratch first (a third of a sequential zstd
    read's copies); the reads still equal the ground truth."""
    stream, image, vp, truth = _zstd_partition(factory)
    counter = _PeekCounter(image.layout.source)
    image.layout.source = counter
    try:
        step = 128 << 10
        for off in range(0, vp.size, step):
            assert vp.read(off, step) == truth[off:off + step], off
        assert image.layout.checker.complete
        assert counter.viewed > 0 and counter.copied == 0, (counter.viewed, counter.copied)
    finally:
        stream.close()


def test_damage_in_the_peeked_part_of_a_compressed_group_is_caught(factory, tmp_path):
    """A flipped byte in the half of a group that a small read does not ask
    for (checked from the cached pieces): that read fails, the next group reads."""
    import shutil
    import subprocess

    from imagefs.codecs import open_decompressed

    img = factory.partclone("ext4")
    truth = img.ground_truth.read_bytes()
    clean, _vp = _open(img.path)
    gb = clean.layout.checker.group_bytes
    bpc = clean.header.blocks_per_checksum
    groups = clean.layout.checker.groups
    assert groups >= 3
    k = groups // 2
    damaged = tmp_path / "damaged.img"
    shutil.copy(img.path, damaged)
    _flip(damaged, clean.layout.data_offset(k * gb + gb // 2 + 123))
    packed = tmp_path / "damaged.img.zst"
    packed.write_bytes(subprocess.run(["zstd", "-q", "-T0", "-3", "-c", str(damaged)],
                                      stdout=subprocess.PIPE, check=True).stdout)
    stream = open_decompressed(FileSource(str(packed)), cache=BlockCache(64 << 20),
                               spacing=2 << 20)
    stream.build()
    try:
        image = probe(stream).open()
        assert isinstance(image, BitmapImage)
        vp = VirtualPartition(image, None)
        bs = image.block_size

        def first_block(group: int) -> int:
            return next(b for b in range(image.total_blocks)
                        if image.bitmap.is_set(b) and image.bitmap.rank(b) == group * bpc)

        with pytest.raises(ChecksumError):
            vp.read(first_block(k) * bs, 4096)
        nxt = first_block(k + 1) * bs
        assert vp.read(nxt, 4096) == truth[nxt:nxt + 4096]
    finally:
        stream.close()
