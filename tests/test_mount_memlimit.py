"""A mount under an address-space limit stays alive and reads right.

rapidgzip reserves about 1 GiB of address space per thread that calls it;
under ``prlimit --as`` gzip and bzip2 reads used to kill the daemon
(SIGSEGV).  One mount of real gzip, bzip2, zstd and xz images under a
2 GiB limit: every virtual partition equals its ground truth, read from
several threads at once, and the daemon is still there afterwards.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mount_helpers import IMAGEFS, in_mount_table, need_fuse, pids_serving, sha256_of, unmount
from readers import run_in_threads

pytestmark = [pytest.mark.mount, pytest.mark.root]

LIMIT = 2 << 30
COMPRESSORS = [("gzip", ["gzip", "-c"], "gz"), ("bzip2", ["bzip2", "-c"], "bz2"),
               ("zstd", ["zstd", "-q", "-T0", "-c"], "zst"), ("xz", ["xz", "-T0", "-c"], "xz")]


@contextlib.contextmanager
def _limited_mount(root: Path, mnt: Path, cache: Path) -> Iterator[Path]:
    need_fuse()
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed")
    mnt.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(["prlimit", f"--as={LIMIT}", *IMAGEFS, str(root), str(mnt)],
                          capture_output=True, timeout=120, env=env)
    try:
        assert proc.returncode == 0, f"mount failed: {proc.stderr.decode()}"
        yield mnt
    finally:
        unmount(mnt)


def test_mount_under_an_address_space_limit_serves_every_codec(factory, tmp_path: Path) -> None:
    base = factory.partclone("ext4", (), size_mb=64)
    root = tmp_path / "src"
    root.mkdir()
    expected = {}
    for label, cmd, suffix in COMPRESSORS:
        if shutil.which(cmd[0]) is None:
            pytest.skip(f"{cmd[0]} is not installed")
        img = factory.compressed(base, cmd, suffix)
        d = root / label
        d.mkdir()
        os.link(img.path, d / img.path.name)
        expected[f"{label}/{base.path.name}"] = img
    with _limited_mount(root, tmp_path / "mnt", tmp_path / "cache") as mnt:
        truth = base.ground_truth.read_bytes()

        def random_reads(vpath: str, seed: int) -> None:
            rng = random.Random(seed)
            fd = os.open(mnt / vpath, os.O_RDONLY)
            try:
                for _ in range(100):
                    off = rng.randrange(len(truth) - 65536)
                    assert os.pread(fd, 65536, off) == truth[off:off + 65536], vpath
            finally:
                os.close(fd)

        vpaths = list(expected)
        run_in_threads(lambda i: random_reads(vpaths[i % len(vpaths)], i),
                       count=2 * len(vpaths))
        for vpath, img in expected.items():
            assert sha256_of(mnt / vpath) == img.sha256, vpath
        assert in_mount_table(mnt) and pids_serving(mnt), "the daemon died"
