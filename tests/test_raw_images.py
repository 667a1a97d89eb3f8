"""Raw partition images (partclone.dd, dd) named the Clonezilla way.

The images are made by the real ``partclone.dd`` (and ``dd``) from a real
ext4 file system, compressed and split as Clonezilla does; the ground truth
is the partition's bytes themselves (a raw image stores all of them).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import imagefs
from imagefs.errors import NotAnImageError, TruncatedError
from mount_helpers import IMAGEFS, imagefs_mounted, sha256_of
from realimages import mounted, need, pipe_to_files, run

SECTORS = 40960                                   # a 20 MiB partition


@pytest.fixture(scope="module")
def partition(factory, tmp_path_factory) -> Path:
    """A real ext4 partition's bytes (made by the factory, 20 MiB)."""
    src = factory.source("ext4", size_mb=20, seed=7)
    return src.raw


def _table(directory: Path, dev: str = "sda6", sectors: int = SECTORS) -> None:
    (directory / "sda-pt.sf").write_text(
        "label: dos\nlabel-id: 0x1234abcd\ndevice: /dev/sda\nunit: sectors\n"
        f"sector-size: 512\n\n/dev/sda1 : start= 2048, size= 2048, type=83\n"
        f"/dev/{dev} : start= 8192, size= {sectors}, type=7\n")


def _partclone_dd(partition: Path, out: Path, compressor: list[str] | None,
                  split_bytes: int | None = None) -> None:
    need("partclone.dd")
    raw = out.parent / "pcdd.raw"
    run(["partclone.dd", "-s", str(partition), "-o", str(raw)])
    if compressor is None:
        raw.rename(out)
        return
    pipe_to_files(raw, compressor, out, split_bytes)
    raw.unlink()


def test_split_gzip_set_is_the_partition(partition, tmp_path):
    cz = tmp_path / "img"
    cz.mkdir()
    _table(cz)
    _partclone_dd(partition, cz / "sda6.dd-ptcl-img.gz", ["gzip", "-c", "--fast"], 2_000_000)
    pieces = sorted(cz.glob("sda6.dd-ptcl-img.gz.*"))
    assert len(pieces) >= 2
    with imagefs.open(pieces[0], index_dir=str(tmp_path / "idx")) as image:
        assert image.size == SECTORS * 512 == partition.stat().st_size
        assert image.header.format_name == "raw" and image.header.fs_type == "EXTFS"
        info = image.info
        assert "raw partition data (partclone.dd)" in info
        assert "the partition table sda-pt.sf" in info
        with open(partition, "rb") as truth:
            for off in (0, 1 << 20, image.size - 4096, image.size // 2 + 511):
                truth.seek(off)
                assert image.pread(off, 4096) == truth.read(4096)


def test_mount_shows_the_raw_partition_and_it_loop_mounts(partition, factory, tmp_path):
    cz = tmp_path / "src" / "2026-12-01-img"
    cz.mkdir(parents=True)
    _table(cz)
    _partclone_dd(partition, cz / "sda6.dd-ptcl-img.zst", ["zstd", "-q", "-c", "-3"], 3_000_000)
    with imagefs_mounted(tmp_path / "src", tmp_path / "mnt") as m:
        names = sorted(os.listdir(m / "2026-12-01-img"))
        # The raw bytes hold an ext4: its files view is there too.
        assert [n for n in names if not n.endswith(".files")] == \
            ["sda-pt.sf", "sda6.dd-ptcl-img", "sda6.dd-ptcl-img.info"]
        part = m / "2026-12-01-img" / "sda6.dd-ptcl-img"
        assert sha256_of(part) == sha256_of(partition)
        info = (m / "2026-12-01-img" / "sda6.dd-ptcl-img.info").read_text()
        assert "raw partition data (partclone.dd)" in info and "e2fsck -fn" in info
        with mounted(str(part), tmp_path / "ext4", options="loop,ro") as fs:
            assert (fs / "docs" / "numbers.txt").stat().st_size > 0
        ls = subprocess.run([*IMAGEFS, "ls", str(tmp_path / "src")],
                            capture_output=True, text=True)
        assert "sda6.dd-ptcl-img  raw partclone.dd, EXTFS" in ls.stdout


def test_plain_uncompressed_and_size_from_the_stream(partition, tmp_path):
    """No partition table beside it: the stream's own length is the size."""
    out = tmp_path / "sdb2.dd-ptcl-img"
    _partclone_dd(partition, out, None)
    with imagefs.open(out) as image:
        assert image.size == partition.stat().st_size
        assert "the stream's length" in image.info
        assert image.pread(1024, 1024) == partition.read_bytes()[1024:2048]


def test_legacy_dd_img_with_its_size_sidecar(partition, tmp_path):
    need("dd")
    cz = tmp_path / "old-img"
    cz.mkdir()
    _table(cz, dev="hda3")
    with open(cz / "hda3.dd-img", "wb") as f:
        subprocess.run(["dd", f"if={partition}", "bs=1M", "status=none"], stdout=f, check=True)
    (cz / "hda3-size").write_text("20M\n")
    with imagefs.open(cz / "hda3.dd-img") as image:
        assert image.header.format_version == "dd"
        info = image.info
        assert "raw partition data (dd)" in info and "noted the partition size as 20M" in info
        assert image.size == partition.stat().st_size


def test_a_short_tail_reads_as_zeros_a_truncated_stream_fails(partition, tmp_path):
    cz = tmp_path / "img"
    cz.mkdir()
    data = partition.read_bytes()
    # One sector more in the table than the stream holds, minus one byte:
    # what partclone.dd's dropped partial sector looks like.
    _table(cz, sectors=SECTORS + 1)
    (cz / "sda6.dd-ptcl-img.uncomp").write_bytes(data + b"\x01" * 1)
    with imagefs.open(cz / "sda6.dd-ptcl-img.uncomp") as image:
        assert image.size == (SECTORS + 1) * 512
        tail = image.pread(len(data), 1024)
        assert tail == b"\x01" + bytes(511)
        assert "DAMAGED" not in image.info
    (cz / "sda6.dd-ptcl-img.uncomp").write_bytes(data[:len(data) // 2])
    with imagefs.open(cz / "sda6.dd-ptcl-img.uncomp") as image:
        assert "DAMAGED: the image is truncated" in image.info
        assert image.pread(0, 4096) == data[:4096]
        with pytest.raises(TruncatedError):
            image.pread(len(data) - 4096, 4096)


def test_names_are_what_recognises_raw_data(tmp_path):
    other = tmp_path / "random.bin"
    other.write_bytes(os.urandom(64 << 10))
    with pytest.raises(NotAnImageError):
        imagefs.open(other)
    from imagefs.formats.raw import raw_name
    assert raw_name("sda6.dd-ptcl-img.gz.aa").device == "sda6"
    assert raw_name("nvme0n1p3.dd-ptcl-img").tool == "partclone.dd"
    assert raw_name("cciss-c0d0p1.dd-img.ab").tool == "dd"
    assert raw_name("sda1.ext4-ptcl-img.gz.aa") is None
