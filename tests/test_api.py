"""The Python API: imagefs.open(path) -> Image, over real images of every format."""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
from pathlib import Path

import pytest

import imagefs
from realimages_partimage import partimage_image
from readers import run_in_threads

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "backups"


@pytest.fixture(scope="module", params=["partclone-zstd-split", "ntfsclone-gzip", "partimage"])
def case(request, factory):
    ext4 = factory.partclone("ext4")
    if request.param == "partclone-zstd-split":
        return factory.compressed(ext4, ["zstd", "-q", "-c", "-3"], "zst", split_bytes=4_000_000)
    if request.param == "ntfsclone-gzip":
        return factory.compressed(factory.ntfsclone(), ["gzip", "-c", "--fast"], "gz")
    return partimage_image(factory, "ext3")


def test_reads_the_ground_truth_through_every_interface(case, tmp_path):
    truth = case.ground_truth.read_bytes()
    with imagefs.open(case.path, index_dir=str(tmp_path / "idx")) as image:
        assert image.size == len(truth) and image.seekable() and image.readable()
        assert not image.writable()
        # read() from the position, through a BufferedReader, to the end
        buffered = io.BufferedReader(image, 1 << 20)
        h = hashlib.sha256()
        while chunk := buffered.read(3 << 20):
            h.update(chunk)
        assert h.hexdigest() == case.sha256
        # seek / tell / readinto
        assert image.seek(-4096, io.SEEK_END) == len(truth) - 4096
        buf = bytearray(8192)
        assert image.readinto(buf) == 4096 and bytes(buf[:4096]) == truth[-4096:]
        assert image.tell() == len(truth) and image.read(10) == b""
        image.seek(12345)
        image.seek(100, io.SEEK_CUR)
        assert image.read(777) == truth[12445:12445 + 777]
        # positional reads, with and without a buffer
        view = bytearray(5000)
        assert image.preadinto(len(truth) // 2, view) == 5000
        assert bytes(view) == truth[len(truth) // 2:len(truth) // 2 + 5000]
        assert image.pread(len(truth) - 10, 100) == truth[-10:]
        assert image.header.format_name in ("partclone", "ntfsclone", "partimage")
        assert "status:" in image.info and image.header.format_name in image.info


def test_threads_share_one_image(case, tmp_path):
    truth = case.ground_truth.read_bytes()
    with imagefs.open(case.path, index_dir=str(tmp_path / "idx")) as image:
        errors: list[str] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            step = len(truth) // 64
            for i in range(n, 64, 8):
                off = i * step + n * 17
                if image.pread(off, 65536) != truth[off:off + 65536]:
                    with lock:
                        errors.append(f"pread at {off}")
            with lock:                 # the shared position under the caller's lock too
                image.seek(n * 4096)
                if image.read(4096) != truth[n * 4096:(n + 1) * 4096]:
                    errors.append(f"read at {n * 4096}")

        run_in_threads(worker, 8)
        assert not errors, errors


def test_errors_are_image_errors(tmp_path):
    (tmp_path / "x.img").write_text("not an image\n")
    with pytest.raises(imagefs.NotAnImageError, match="x.img: not a partclone"):
        imagefs.open(tmp_path / "x.img")
    with pytest.raises(imagefs.ImageError):
        imagefs.open(tmp_path / "gone.img")


def test_closed_image_refuses_reads(tmp_path):
    shutil.copy(SAMPLES / "loose" / "old-laptop.ext2-ptcl-img", tmp_path / "a.img")
    image = imagefs.open(tmp_path / "a.img")
    assert "partclone" in repr(image)
    image.close()
    with pytest.raises(ValueError):
        image.read(1)


def test_the_package_root_is_light():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import imagefs, sys; "
                          "print('imagefs.api' in sys.modules, imagefs.__version__); "
                          "imagefs.open; print('imagefs.api' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False" and out[2] == "True"
