"""Files that are not images stay visible, byte-identical, whatever their codec says.

A compressed or split file is an image only when its decompressed stream
starts with an image magic.  A codec error while sniffing one (a cut-short
``log.txt.gz`` of every codec, a tar.gz cut into pieces with split) must
leave the files shown as they are, with nothing alarming in the log, and
``imagefs ls``, ``imagefs info`` and the mount must agree.  The files are
made by the real compressors and split.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from mount_helpers import imagefs_mounted, sha256_of
from realimages import need

IMAGEFS = [sys.executable, "-m", "imagefs"]

#: codec -> (compress command, suffix)
CODECS = {
    "gzip": (["gzip", "-c"], "gz"), "zstd": (["zstd", "-q", "-c"], "zst"),
    "lz4": (["lz4", "-q", "-c"], "lz4"), "bzip2": (["bzip2", "-c"], "bz2"),
    "xz": (["xz", "-c"], "xz"), "lzop": (["lzop", "-c"], "lzo"),
    "lzip": (["lzip", "-c"], "lz"),
}


def _compress(cmd: list[str], data: bytes) -> bytes:
    need(cmd[0])
    return subprocess.run(cmd, input=data, stdout=subprocess.PIPE, check=True).stdout


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Non-images only: cut-short logs of every codec, a split tar.gz, whole ones."""
    root = tmp_path_factory.mktemp("notimages")
    rng = random.Random(11)
    log = "".join(f"{i} backup step {rng.random()}\n" for i in range(60_000)).encode()
    for codec, (cmd, suffix) in CODECS.items():
        packed = _compress(cmd, log)
        (root / f"log-{codec}.txt.{suffix}").write_bytes(packed)          # whole: fine
        (root / f"cut-{codec}.txt.{suffix}").write_bytes(packed[:len(packed) // 3])
        (root / f"stub-{codec}.txt.{suffix}").write_bytes(packed[:40])     # inside the header
    # head -c 3000000 /dev/urandom | gzip | split -b 1MB - t/backup.tar.gz.
    tgz = _compress(["gzip", "-c"], rng.randbytes(3_000_000))
    split = root / "t"
    split.mkdir()
    subprocess.run(["split", "-b", "1MB", "-", str(split / "backup.tar.gz.")], input=tgz,
                   check=True)
    assert len(list(split.iterdir())) == 4
    # The same set missing its tail, and a zstd'd random blob split likewise.
    cut = root / "cut"
    cut.mkdir()
    subprocess.run(["split", "-b", "1MB", "-", str(cut / "backup.tar.gz.")],
                   input=tgz[:2_500_000], check=True)
    blob = _compress(["zstd", "-q", "-c"], rng.randbytes(2_500_000))
    subprocess.run(["split", "-b", "1MB", "-", str(cut / "blob.zst.")], input=blob[:2_100_000],
                   check=True)
    return root


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_ls_finds_no_image(tree):
    proc = subprocess.run(IMAGEFS + ["ls", str(tree)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip() == "0 images, 0 broken"


def test_info_says_not_an_image_in_one_line(tree):
    for name in ("cut-gzip.txt.gz", "cut-zstd.txt.zst", "cut-xz.txt.xz", "stub-lz4.txt.lz4",
                 "t/backup.tar.gz.aa", "cut/blob.zst.aa"):
        proc = subprocess.run(IMAGEFS + ["info", str(tree / name)], capture_output=True,
                              text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, proc.stderr
        assert "not a partclone, ntfsclone or partimage image" in lines[0], lines[0]
        assert "Traceback" not in proc.stderr


@pytest.mark.mount
def test_mount_shows_them_byte_identical(tree, tmp_path):
    log = tmp_path / "mount.log"
    expected = _files(tree)
    with imagefs_mounted(tree, tmp_path / "mnt", "-o", f"log={log},log_level=info") as mnt:
        shown = _files(mnt)
        assert sorted(shown) == sorted(expected), "every file shown, nothing added or hidden"
        for rel, real in expected.items():
            assert sha256_of(shown[rel]) == sha256_of(real), rel
    text = log.read_text()
    for alarming in ("ERROR", "WARNING", "BROKEN", "Traceback", "unexpected"):
        assert alarming not in text, text
