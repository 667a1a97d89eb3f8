"""Every Clonezilla compressor, mounted for real.

A real partclone ext4 image is compressed by each real tool, once as one
file and once cut with ``split -a 2 -b 4M``; partimage's own gzip and bzip2
volume sets join them.  One mount serves them all: each virtual partition
equals the ground truth, 500 random reads match, and each loop-mounts with
the source's file tree.
"""

from __future__ import annotations

import os
import random

import pytest

from realimages import mounted, tree_digest
from realimages_partimage import partimage_image
from mount_helpers import imagefs_mounted, sha256_of

pytestmark = [pytest.mark.mount, pytest.mark.root]

# (label, command, Clonezilla suffix)
COMPRESSORS = [
    ("gzip", ["gzip", "-c"], "gz"),
    ("pigz", ["pigz", "-c", "--fast"], "gz"),
    ("zstd", ["zstd", "-q", "-T0", "-c"], "zst"),
    ("pzstd", ["pzstd", "-q", "-c"], "zst"),
    ("lz4", ["lz4", "-q", "-c"], "lz4"),
    ("bzip2", ["bzip2", "-c"], "bz2"),
    ("pbzip2", ["pbzip2", "-c"], "bz2"),
    ("xz", ["xz", "-T0", "-c"], "xz"),
    ("pixz", ["pixz"], "xz"),
    ("lzop", ["lzop", "-c"], "lzo"),
    ("plzip", ["plzip", "-c"], "lzip"),
]
SPLIT = 4_000_000


@pytest.fixture(scope="module")
def codec_tree(factory, tmp_path_factory):
    """``{virtual path: (Image, fs kind)}`` and the tree's root."""
    base = factory.partclone("ext4", (), size_mb=64)
    root = tmp_path_factory.mktemp("codec-tree")
    expected = {}
    for label, cmd, suffix in COMPRESSORS:
        for split in (None, SPLIT):
            img = factory.compressed(base, cmd, suffix, split)
            d = root / (f"{label}-split" if split else label)
            d.mkdir()
            for piece in img.path.parent.iterdir():
                os.link(piece, d / piece.name)
            expected[f"{d.name}/{base.path.name}"] = (img, "ext4")
    for z in (1, 2):
        img = partimage_image(factory, "ext3", split=True, compress=z)
        d = root / f"partimage-z{z}"
        d.mkdir()
        for piece in img.path.parent.iterdir():
            if piece.name.startswith(img.path.name[:-4]):
                os.link(piece, d / piece.name)
        expected[f"{d.name}/{img.path.name[:-4]}"] = (img, "ext3")
    return root, expected


@pytest.fixture(scope="module")
def codec_mount(codec_tree, tmp_path_factory):
    root, expected = codec_tree
    mnt = tmp_path_factory.mktemp("codec-mnt")
    with imagefs_mounted(root, mnt):
        yield mnt, expected


def _ids():
    return [f"{label}{'-split' if s else ''}" for label, _, _ in COMPRESSORS
            for s in (None, SPLIT)] + ["partimage-z1", "partimage-z2"]


def test_every_codec_is_listed(codec_mount):
    mnt, expected = codec_mount
    for vpath in expected:
        assert (mnt / vpath).is_file(), f"{vpath} missing from the mount"
        assert (mnt / (vpath + ".info")).is_file()
        info = (mnt / (vpath + ".info")).read_text()
        assert "status:" in info and "BROKEN" not in info, info


@pytest.mark.parametrize("which", range(len(COMPRESSORS) * 2 + 2), ids=_ids())
def test_codec_partition_equals_ground_truth(codec_mount, which, tmp_path):
    mnt, expected = codec_mount
    vpath = list(expected)[which]
    img, fs = expected[vpath]
    path = mnt / vpath
    assert path.stat().st_size == img.ground_truth.stat().st_size
    assert sha256_of(path) == img.sha256
    truth = img.ground_truth.read_bytes()
    rng = random.Random(which)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(500):
            off = rng.randrange(len(truth))
            n = rng.choice((1, 512, 4096, 65536, 200_000))
            assert os.pread(fd, n, off) == truth[off:off + n], f"{vpath} at {off}+{n}"
    finally:
        os.close(fd)
    # Loop-mount it (read-only) and compare the file tree with the source's.
    with mounted(str(path), tmp_path / "fs", options="loop,ro") as m:
        assert tree_digest(m) == img.source.tree


def test_source_tree_untouched_by_the_mount(codec_tree, codec_mount):
    root, expected = codec_tree
    names = sorted(p.name for p in root.rglob("*"))
    assert not [n for n in names if n.endswith((".idx", ".tmp"))], "index written into SOURCE"
