"""partclone images made by the real partclone, read as virtual partitions."""

from __future__ import annotations

import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagefs.blockio import VirtualPartition
from imagefs.services.cache import BlockCache
from imagefs.errors import ChecksumError
from imagefs.formats import probe
from imagefs.io import FileSource
from xxhrecode import recode_xxh
from readers import check_random_reads, check_threads, open_vp, random_spans, vp_sha256

DATA = Path(__file__).parent / "data"

# (source kind, partclone options, size in MiB)
VARIANTS = [
    ("ext4", (), 64),
    ("ext4", ("-a0",), 64),
    ("ext4", ("-a1", "-k", "100"), 64),
    ("ext4", ("-a1", "-k", "277"), 64),
    ("ext4", ("-a1", "-k", "1"), 64),
    ("ext4", ("-K",), 64),
    ("ext4", ("-z", "10485760"), 64),      # Clonezilla's buffer: 2560 blocks per checksum
    ("ext4-1k", (), 32),
    ("ext4-odd", (), 64),                  # 16387 blocks: padding bits in the last bitmap byte
    ("ext4-tail", (), 64),                 # device not a multiple of the block size
    ("ext2", (), 32),
    ("xfs", (), 64),
    ("btrfs", (), 128),
    ("vfat", (), 48),
    ("exfat", (), 48),
    ("ntfs", (), 64),
    ("raw", (), 16),                       # partclone.imager: raw data with a header
]


def _id(v):
    kind, args, size = v
    return kind + ("".join(args) or "-default")


@pytest.fixture(scope="module", params=VARIANTS, ids=_id)
def pc_image(request, factory):
    kind, args, size = request.param
    return factory.partclone(kind, args, size_mb=size)


def test_whole_partition_equals_ground_truth(pc_image):
    vp = open_vp(pc_image.path)
    assert vp.size == pc_image.ground_truth.stat().st_size
    assert vp_sha256(vp) == pc_image.sha256
    cached = open_vp(pc_image.path, BlockCache(8 << 20))
    assert vp_sha256(cached, step=1_000_003) == pc_image.sha256


def test_random_reads_cross_boundaries(pc_image):
    header = probe(FileSource(str(pc_image.path)))
    vp = open_vp(pc_image.path, BlockCache(4 << 20))
    truth = pc_image.ground_truth.read_bytes()
    bs = header.block_size
    bpc = getattr(header, "blocks_per_checksum", 0) or 1
    boundaries = [k * bs for k in range(0, header.total_blocks, max(1, header.total_blocks // 50))]
    boundaries += [k * bpc * bs for k in range(1, 20)] + [vp.size - 1, vp.size]
    check_random_reads(vp, truth, random_spans(vp.size, 400, seed=7, boundaries=boundaries))
    # Reads past the end are short, not errors.
    assert vp.read(vp.size - 10, 100) == truth[-10:]
    assert vp.read(vp.size + 5, 100) == b""


def test_eight_threads_read_the_same_bytes(pc_image):
    vp = open_vp(pc_image.path, BlockCache(2 << 20))
    check_threads(vp, pc_image.ground_truth.read_bytes(), seed=3)


def test_verify_passes_and_names_a_flipped_byte(pc_image, tmp_path):
    header = probe(FileSource(str(pc_image.path)))
    image = header.open()
    image.verify()
    if header.checksum_size == 0:
        return          # -a0: nothing to flip-detect; verify() above checked the length
    # Flip one byte inside the data of the 3rd stored block.
    bad = tmp_path / "flipped.img"
    shutil.copyfile(pc_image.path, bad)
    target = image.layout.offset(min(2, image.stored_blocks - 1)) + 100
    with open(bad, "r+b") as f:
        f.seek(target)
        byte = f.read(1)
        f.seek(target)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumError) as err:
        probe(FileSource(str(bad))).open().verify()
    assert err.value.image_offset is not None and err.value.image_offset <= target
    assert str(bad) in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "imagefs", "verify", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert str(bad) in proc.stderr and "checksum" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_split_pieces_read_as_one(factory):
    img = factory.partclone("ext4", (), size_mb=64)
    split = factory.split(img, 1_000_000)
    vp = open_vp(split.path, BlockCache(4 << 20))
    assert vp_sha256(vp) == img.sha256
    truth = img.ground_truth.read_bytes()
    check_threads(vp, truth, seed=11)


def test_info_cli_matches_header(factory):
    img = factory.partclone("ext4", (), size_mb=64)
    proc = subprocess.run([sys.executable, "-m", "imagefs", "info", str(img.path)],
                          capture_output=True, text=True, check=True)
    assert "partclone (image format 2)" in proc.stdout
    assert "EXTFS" in proc.stdout
    assert str(img.ground_truth.stat().st_size) in proc.stdout


def test_btrfs_superblock_used_count_is_reported_not_rejected(factory):
    img = factory.partclone("btrfs", (), size_mb=128)
    header = probe(FileSource(str(img.path)))
    header.open()
    if header.fs_used_blocks != header.used_blocks:
        assert any("file system reported" in n for n in header.notes)


# ----------------------------------------------------------- XXH checksum modes

@pytest.mark.parametrize("mode,reseed,bpc", [(0x30, True, None), (0x31, True, None),
                                             (0x30, False, 77), (0x31, False, 300)])
def test_xxh_modes(factory, tmp_path, mode, reseed, bpc):
    pytest.importorskip("xxhash")
    img = factory.partclone("ext4", (), size_mb=64)
    recoded = tmp_path / "xxh.img"
    recoded.write_bytes(recode_xxh(img.path.read_bytes(), mode, reseed, bpc))
    vp = open_vp(recoded, BlockCache(4 << 20))
    assert vp_sha256(vp) == img.sha256
    image = probe(FileSource(str(recoded))).open()
    image.verify()
    raw = bytearray(recoded.read_bytes())
    raw[image.layout.offset(image.stored_blocks // 2) + 5] ^= 1
    recoded.write_bytes(raw)
    with pytest.raises(ChecksumError):
        probe(FileSource(str(recoded))).open().verify()


# -------------------------------------------------------------- format 1 (0.2.x)

@pytest.mark.parametrize("name", ["ext4-4k", "ext2-1k"])
def test_partclone_v1_real_images(name, tmp_path):
    image = tmp_path / f"{name}.v1.img"
    image.write_bytes(lzma.decompress((DATA / "partclone-v1" / f"{name}.v1.img.xz").read_bytes()))
    raw = lzma.decompress((DATA / "partclone-v1" / f"{name}.raw.xz").read_bytes())
    header = probe(FileSource(str(image)))
    assert header.format_version == "1"
    vp = VirtualPartition(header.open(), BlockCache(4 << 20))
    assert vp.size == len(raw)
    assert vp.read(0, vp.size) == raw
    check_random_reads(vp, raw, random_spans(len(raw), 200, seed=5))
    check_threads(vp, raw, seed=9)
    header.open().verify()
