"""Benchmark fixtures, built once with the real tools and cached under BENCH_DIR.

- :func:`ext4_image`: a sparse ext4 file system filled to ~90% with files of
  mixed data (incompressible, text-like, mostly-zero) plus one 100 MB file,
  imaged with ``partclone.ext4 -c`` (default CRC32 checksums).
- :func:`small_images` / :func:`image_tree`: small real partclone images and
  trees of 10 .. 10,000 of them (hard links: the figure is about catalog
  work, not disk space).
- :func:`synthetic_partclone`: a valid partclone v2 header + bitmap with
  correct CRCs for a huge device (up to 4 TB), data area a sparse hole.
- :func:`ntfs_image`: mkntfs on a sparse file, filled through ntfs-3g,
  saved with ``ntfsclone --save-image``.

A fixture is reused when its ``meta.json`` matches the parameters, so a
second bench run spends no time here.
"""

from __future__ import annotations

import json
import os
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from common import (BENCH_DIR, GiB, MiB, bench_tempdir, have, log, loop_device, loop_mount,
                    run, unmount)

BIG_FILE = "big100.bin"       # the file the loop-mount copy test reads
BIG_FILE_SIZE = 100 * 1000 * 1000


@dataclass
class Fixture:
    raw: Path            # the file system as a plain file (sparse)
    image: Path          # the partclone / ntfsclone image of it
    meta: dict


def _cached(dirpath: Path, params: dict) -> dict | None:
    """The stored meta when a fixture with these parameters is complete."""
    meta_path = dirpath / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("params") == params else None


def _store_meta(dirpath: Path, params: dict, **extra: object) -> dict:
    meta = {"params": params, **extra}
    (dirpath / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


# ------------------------------------------------------------------ file data

def _chunk(rng: random.Random, n: int, kind: int) -> bytes:
    """n bytes of one of three kinds, so that codecs see realistic mixes.

    0: incompressible (media, archives); 1: hex text (~2:1 compressible,
    like logs and source); 2: mostly zeros with random islands (databases,
    VM disks, sparse-ish files).
    """
    if kind == 0:
        return rng.randbytes(n)
    if kind == 1:
        return rng.randbytes((n + 1) // 2).hex().encode()[:n]
    out = bytearray(n)
    for _ in range(max(1, n // 65536)):
        pos = rng.randrange(0, max(1, n - 4096))
        out[pos:pos + 4096] = rng.randbytes(min(4096, n - pos))
    return bytes(out)


def _write_file(path: Path, size: int, rng: random.Random) -> None:
    kind = rng.choice((0, 0, 1, 2))
    with open(path, "wb") as fh:
        left = size
        while left > 0:                      # bounded: left shrinks every pass
            n = min(left, 4 * MiB)
            fh.write(_chunk(rng, n, kind))
            left -= n


def _fill(mnt: Path, fill: float, seed: int, max_files: int = 200_000) -> int:
    """Write files until ``fill`` of the blocks are used; return the file count."""
    rng = random.Random(seed)
    _write_file(mnt / BIG_FILE, BIG_FILE_SIZE, random.Random(seed + 1))
    st = os.statvfs(mnt)
    target_free = st.f_blocks * (1 - fill)
    count = 1
    d = mnt / "d000"
    d.mkdir()
    while count < max_files:
        st = os.statvfs(mnt)
        free = st.f_bfree * st.f_frsize
        room = free - target_free * st.f_frsize
        if room <= 64 * 1024:
            break
        if count % 200 == 0:
            d = mnt / f"d{count // 200:03d}"
            d.mkdir(exist_ok=True)
        # Log-uniform 4 KiB .. 16 MiB: many small files, most bytes in big ones.
        size = int(2 ** rng.uniform(12, 24))
        size = int(min(size, room))
        _write_file(d / f"f{count:06d}", size, rng)
        count += 1
    return count


# ------------------------------------------------------------------- ext4

def ext4_image(size: int, fill: float = 0.9, name: str | None = None,
               seed: int = 1) -> Fixture:
    """A partclone image of an ext4 of ``size`` bytes filled to ``fill``."""
    name = name or f"ext4-{size // MiB}m"
    params = {"size": size, "fill": fill, "seed": seed, "v": 2}
    d = BENCH_DIR / name
    raw, img = d / "fs.raw", d / "fs.img"
    meta = _cached(d, params)
    if meta and raw.exists() and img.exists():
        return Fixture(raw, img, meta)
    log(f"building {name}: ext4 of {size / GiB:.2f} GiB, {fill:.0%} full (once; cached)")
    d.mkdir(parents=True, exist_ok=True)
    for p in (raw, img, d / "meta.json"):
        p.unlink(missing_ok=True)
    with open(raw, "wb") as fh:
        fh.truncate(size)
    # Eager inode-table/journal init: no kernel thread writing in the background.
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E",
         "lazy_itable_init=0,lazy_journal_init=0", str(raw)])
    mnt = d / "mnt"
    with loop_mount(raw, mnt, "loop,rw"):
        files = _fill(mnt, fill, seed)
    mnt.rmdir()
    with loop_device(raw) as dev:
        run(["partclone.ext4", "-q", "-c", "-s", dev, "-o", str(img), "-L", str(d / "partclone.log")],
            timeout=1200)
    meta = _store_meta(d, params, files=files, raw_bytes=size, image_bytes=img.stat().st_size,
                       big_file=BIG_FILE)
    log(f"built {img} ({img.stat().st_size / MiB:.0f} MiB, {files} files)")
    return Fixture(raw, img, meta)


def small_images(kinds: int = 4) -> list[Path]:
    """A few small real partclone images (8 MiB ext4 each, different contents)."""
    d = BENCH_DIR / "small"
    params = {"kinds": kinds, "v": 1}
    paths = [d / f"small{i}.img" for i in range(kinds)]
    if _cached(d, params) and all(p.exists() for p in paths):
        return paths
    d.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(paths):
        raw = d / f"small{i}.raw"
        with open(raw, "wb") as fh:
            fh.truncate(8 * MiB)
        run(["mkfs.ext4", "-q", "-F", "-b", "1024", str(raw)])
        mnt = d / "mnt"
        with loop_mount(raw, mnt, "loop,rw"):
            rng = random.Random(100 + i)
            for j in range(8 + i):
                _write_file(mnt / f"f{j}", rng.randrange(1000, 300_000), rng)
        mnt.rmdir()
        img.unlink(missing_ok=True)
        run(["partclone.ext4", "-q", "-c", "-s", str(raw), "-o", str(img), "-L", str(d / "log")])
        raw.unlink()
    _store_meta(d, params)
    return paths


def image_tree(count: int, per_dir: int = 100) -> Path:
    """A directory tree of ``count`` images, ``per_dir`` per sub-directory."""
    d = BENCH_DIR / f"tree-{count}"
    params = {"count": count, "per_dir": per_dir, "v": 1}
    if _cached(d, params):
        return d / "root"
    log(f"building a tree of {count} images (hard links)")
    imgs = small_images()
    root = d / "root"
    if root.exists():
        run(["rm", "-rf", str(root)])
    root.mkdir(parents=True)
    for i in range(count):
        sub = root / f"host{i // per_dir:04d}"
        if i % per_dir == 0:
            sub.mkdir()
        # Clonezilla-like names; hard links share the inode but imagefs sees
        # distinct paths, which is what the catalog scales with.
        os.link(imgs[i % len(imgs)], sub / f"sda{i % per_dir + 1}.ext4-ptcl-img")
    _store_meta(d, params)
    return root


# ------------------------------------------------------- synthetic partclone

def _pc_crc32(data: bytes, state: int = 0xFFFFFFFF) -> int:
    """partclone's CRC-32 (zlib's without the final XOR; docs/formats.md 1)."""
    return zlib.crc32(data, state ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _pc_crc32_zeros(n: int, state: int) -> int:
    """CRC of ``n`` zero bytes, fed in 16 MiB pieces (no huge allocation)."""
    zero = bytes(min(n, 16 * MiB))
    while n > 0:                              # bounded: n shrinks every pass
        k = min(n, len(zero))
        state = _pc_crc32(zero[:k] if k < len(zero) else zero, state)
        n -= k
    return state


def synthetic_partclone(device_bytes: int, used_fraction: float = 0.001,
                        block_size: int = 4096) -> Path:
    """A valid partclone v2 image header + bitmap for a ``device_bytes`` device.

    The first ``used_fraction`` of the blocks are marked used (one run, so
    the bitmap is a short run of 0xFF then zeros); checksums CRC32 every 256
    blocks as partclone's default; the data area is a hole (truncate), so a
    4 TB-scale image costs only its 128 MiB bitmap on disk.
    """
    d = BENCH_DIR / "synthetic"
    d.mkdir(parents=True, exist_ok=True)
    img = d / f"pc-{device_bytes // GiB}g.img"
    params = {"dev": device_bytes, "used": used_fraction, "bs": block_size, "v": 1}
    meta_path = d / (img.name + ".json")
    if img.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == params:
        return img
    total = device_bytes // block_size
    used = int(total * used_fraction) // 8 * 8       # whole 0xFF bytes
    nb = (total + 7) // 8
    bpc, csize = 256, 4
    head = bytearray(110)
    head[0:16] = b"partclone-image\0"
    head[16:30] = b"0.3.23".ljust(14, b"\0")
    head[30:34] = b"0002"
    struct.pack_into("<H", head, 34, 0xC0DE)
    head[36:52] = b"EXTFS".ljust(16, b"\0")
    struct.pack_into("<QQQQIIHHHHIBB", head, 52, device_bytes, total, used, used, block_size,
                     18, 2, 64, 0x20, csize, bpc, 1, 1)
    struct.pack_into("<I", head, 106, _pc_crc32(bytes(head[:106])))
    ones = b"\xff" * (used // 8)
    crc = _pc_crc32_zeros(nb - len(ones), _pc_crc32(ones))
    groups = -(-used // bpc)
    data_start = 110 + nb + 4
    expected = data_start + used * block_size + groups * csize
    with open(img, "wb") as fh:
        fh.write(head)
        fh.write(ones)
        fh.seek(data_start - 4)              # the zero part of the bitmap: a hole
        fh.write(struct.pack("<I", crc))
        fh.truncate(expected)                 # data area: a hole (reads as zeros)
    meta_path.write_text(json.dumps(params))
    return img


# ------------------------------------------------------------------ ntfs

def ntfs_image(size: int = 1 * GiB, fill: float = 0.8, seed: int = 7) -> Fixture | None:
    """An ntfsclone --save-image of an NTFS filled through ntfs-3g (None: tools missing)."""
    if not (have("mkntfs") and have("ntfs-3g") and have("ntfsclone")):
        return None
    name = f"ntfs-{size // MiB}m"
    d = BENCH_DIR / name
    params = {"size": size, "fill": fill, "seed": seed, "v": 1}
    raw, img = d / "fs.raw", d / "fs.ntfsclone.img"
    meta = _cached(d, params)
    if meta and raw.exists() and img.exists():
        return Fixture(raw, img, meta)
    log(f"building {name}: NTFS {size / GiB:.2f} GiB, {fill:.0%} full (once; cached)")
    d.mkdir(parents=True, exist_ok=True)
    for p in (raw, img):
        p.unlink(missing_ok=True)
    with open(raw, "wb") as fh:
        fh.truncate(size)
    run(["mkntfs", "-q", "-F", "-Q", str(raw)])
    mnt = d / "mnt"
    mnt.mkdir(exist_ok=True)
    run(["ntfs-3g", str(raw), str(mnt)])
    try:
        files = _fill(mnt, fill, seed, max_files=20_000)
    finally:
        unmount(mnt)
    mnt.rmdir()
    run(["ntfsclone", "--save-image", "-o", str(img), str(raw)], timeout=1200)
    meta = _store_meta(d, params, files=files, image_bytes=img.stat().st_size)
    return Fixture(raw, img, meta)


def bench_tmp(prefix: str) -> Path:
    """Re-export for callers that only import fixtures."""
    return bench_tempdir(prefix)
