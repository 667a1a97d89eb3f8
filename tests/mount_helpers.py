"""Helpers for the mount tests: crafted images, the Clonezilla-style tree, mounting.

No tests live here (hence no test_ prefix); the module is imported by
test_mount*.py and test_catalog.py (the tests directory is on sys.path,
see conftest.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from imagefs.formats.checksums import pc_crc32
from realimages import IN_CI, Factory, pipe_to_files

IMAGEFS = [sys.executable, "-m", "imagefs"]
VENV_BIN = str(Path(sys.executable).parent)


# --------------------------------------------------------------------- crafted

def partclone_v2(total_blocks: int, block_size: int, stored: dict[int, bytes],
                 device_size: int | None = None, fs: str = "EXTFS") -> tuple[bytes, bytes]:
    """A partclone format-2 image (no checksums) and the partition it restores to.

    ``stored`` maps block numbers to their bytes (padded to ``block_size``).
    Returns (image bytes, ground truth bytes).
    """
    device_size = device_size or total_blocks * block_size
    bitmap = bytearray((total_blocks + 7) // 8)
    for b in stored:
        bitmap[b // 8] |= 1 << (b % 8)
    used = len(stored)
    head = bytearray(110)
    head[0:15] = b"partclone-image"
    head[16:30] = b"0.3.23".ljust(14, b"\0")
    head[30:34] = b"0002"
    head[34:36] = b"\xc0\xde"[::-1]           # little-endian marker bytes de c0
    head[36:52] = fs.encode().ljust(16, b"\0")
    struct.pack_into("<QQQQIIHHHHIBB", head, 52, device_size, total_blocks, used, used,
                     block_size, 0, 2, 64, 0, 0, 0, 1, 1)
    struct.pack_into("<I", head, 106, pc_crc32(bytes(head[:106])))
    data = b"".join(stored[b].ljust(block_size, b"\0") for b in sorted(stored))
    image = bytes(head) + bytes(bitmap) + struct.pack("<I", pc_crc32(bytes(bitmap))) + data
    truth = bytearray(device_size)
    for b, payload in stored.items():
        truth[b * block_size:b * block_size + len(payload)] = payload
    return image, bytes(truth)


def write_partclone(path: Path, seed: int, total_blocks: int = 16,
                    block_size: int = 4096) -> bytes:
    """Write a small crafted image at ``path``; returns its ground truth."""
    stored = {b: hashlib.sha256(f"{seed}-{b}".encode()).digest() * (block_size // 32)
              for b in range(total_blocks) if (b * 7 + seed) % 3 != 0}
    image, truth = partclone_v2(total_blocks, block_size, stored)
    path.write_bytes(image)
    return truth


def data_start(total_blocks: int) -> int:
    """Where the data area of a :func:`partclone_v2` image begins."""
    return 110 + (total_blocks + 7) // 8 + 4


# --------------------------------------------------------------------- mounting

def fuse_skip_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (FUSE unavailable)"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None \
            and os.geteuid() != 0:
        return "fusermount3 is missing"
    return None


def need_fuse() -> None:
    reason = fuse_skip_reason()
    if reason:
        if IN_CI:
            pytest.fail("CI must be able to mount FUSE: " + reason)
        pytest.skip(reason)


def wait_until(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    """Bounded polling of a condition (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def in_mount_table(mnt: Path | str) -> bool:
    """Mounted, even when dead (os.path.ismount says False on ENOTCONN)."""
    target = os.path.abspath(str(mnt))
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and fields[1].encode().decode("unicode_escape") == target:
                return True
    return False


def unmount(mnt: Path | str) -> None:
    """Unmount if mounted (alive or dead), and wait until the kernel says it is gone."""
    mnt = str(mnt)
    if not os.path.ismount(mnt) and not in_mount_table(mnt):
        return
    for cmd in (["fusermount3", "-u", mnt], ["umount", mnt], ["umount", "-l", mnt]):
        if shutil.which(cmd[0]) is None:
            continue
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if done.returncode == 0:
            break
    wait_until(lambda: not in_mount_table(mnt), what=f"{mnt} to be unmounted")


def pids_serving(mnt: Path | str) -> list[int]:
    """imagefs processes whose command line names ``mnt``."""
    mnt = os.path.abspath(str(mnt)).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"imagefs" in a for a in args[:3]) and mnt in args:
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if f.read().split(b")")[-1].split()[0] == b"Z":
                        continue            # a zombie has ended already
            except OSError:
                continue
            found.append(int(entry))
    return found


@contextlib.contextmanager
def imagefs_mounted(source: Path | str | None, mnt: Path, *args: str,
                    env: dict[str, str] | None = None) -> Iterator[Path]:
    """Mount with the real command (background mode) and always unmount."""
    need_fuse()
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = IMAGEFS + ([str(source)] if source is not None else []) + [str(mnt), *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                          env=env)
    try:
        assert proc.returncode == 0, f"mount failed: {proc.stderr.decode()}"
        assert os.path.ismount(mnt), "imagefs returned before the mount was live"
        yield mnt
    finally:
        unmount(mnt)


def sha256_of(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def source_digest(root: Path) -> dict[str, str]:
    """Names, sizes, mtimes and content hashes of everything under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            elif os.path.isfile(p):
                out[rel] = f"{st.st_size}:{st.st_mtime_ns}:{sha256_of(p)}"
            else:
                out[rel] = f"dir:{st.st_mtime_ns}"
    return out


# --------------------------------------------------------------------- the tree

@dataclass
class Expected:
    """What the mount of the Clonezilla-style tree must show."""

    good: dict[str, object] = field(default_factory=dict)       # vpath -> realimages.Image
    fs_kind: dict[str, str] = field(default_factory=dict)       # vpath -> ext4/xfs/...
    plain: dict[str, Path] = field(default_factory=dict)        # vpath -> real file
    broken: dict[str, str] = field(default_factory=dict)        # vpath -> words in .info
    truncated: dict[str, object] = field(default_factory=dict)  # vpath -> Image
    hidden: list[str] = field(default_factory=list)             # vpaths that must not exist


def _place(image_path: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(image_path, dest)            # same file system: free and immutable
    except OSError:
        shutil.copyfile(image_path, dest)


def _place_split(split_image, dest_dir: Path, dest_stem: str) -> list[Path]:
    """Copy the pieces of a factory split set under a new stem."""
    src_dir = split_image.path.parent
    src_stem = split_image.path.name[:-3]             # strip ".aa"
    out = []
    for piece in sorted(src_dir.iterdir()):
        if piece.name.startswith(src_stem + "."):
            dest = dest_dir / (dest_stem + piece.name[len(src_stem):])
            _place(piece, dest)
            out.append(dest)
    return out


def _compress_split(image_path: Path, dest_dir: Path, prefix: str, compressor: list[str],
                    piece_bytes: int) -> list[Path]:
    """``compressor < image | split -a 2 -b N - PREFIX.``: Clonezilla's own pipeline."""
    pipe_to_files(image_path, compressor, dest_dir / prefix, piece_bytes)
    return sorted(dest_dir.glob(prefix + ".*"))


def build_clonezilla_tree(factory: Factory, root: Path) -> Expected:
    """Clonezilla image dir + loose images + every kind of awkward file."""
    exp = Expected()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)

    ext4 = factory.partclone("ext4")
    ntfs_pc = factory.partclone("ntfs")
    xfs = factory.partclone("xfs")
    btrfs = factory.partclone("btrfs", size_mb=128)
    vfat = factory.partclone("vfat")
    ext2 = factory.partclone("ext2")
    nclone = factory.ntfsclone()

    # A Clonezilla savedisk directory: split partclone images + metadata.
    cz = root / "2026-11-27-10-img_laptop"
    cz.mkdir()
    (cz / "disk").write_text("sda\n")
    (cz / "parts").write_text("sda1 sda2\n")
    (cz / "sda-pt.sf").write_text(
        "label: dos\nlabel-id: 0x12345678\ndevice: /dev/sda\nunit: sectors\n"
        "sector-size: 512\n\n/dev/sda1 : start= 2048, size= 131072, type=83\n"
        "/dev/sda2 : start= 133120, size= 131072, type=7\n")
    (cz / "clonezilla-img").write_text("This image was saved by Clonezilla at 2026-11-27\n")
    (cz / "Info-saved-by-cmd.txt").write_text(
        "ocs-sr -q2 -z0 savedisk 2026-11-27-10-img_laptop sda\n")
    split_ext4 = factory.split(ext4, 4_000_000)
    pieces = _place_split(split_ext4, cz, "sda1.ext4-ptcl-img.uncomp")
    assert len(pieces) >= 2, "the ext4 image must split into several pieces"
    exp.good["/2026-11-27-10-img_laptop/sda1.ext4-ptcl-img"] = ext4
    exp.fs_kind["/2026-11-27-10-img_laptop/sda1.ext4-ptcl-img"] = "ext4"
    exp.hidden += [f"/2026-11-27-10-img_laptop/{p.name}" for p in pieces]
    split_ntfs = factory.split(ntfs_pc, 3_000_000)
    pieces = _place_split(split_ntfs, cz, "sda2.ntfs-ptcl-img.uncomp")
    exp.good["/2026-11-27-10-img_laptop/sda2.ntfs-ptcl-img"] = ntfs_pc
    exp.fs_kind["/2026-11-27-10-img_laptop/sda2.ntfs-ptcl-img"] = "ntfs"
    exp.hidden += [f"/2026-11-27-10-img_laptop/{p.name}" for p in pieces]
    # Compressed the Clonezilla way: partclone | zstd | split (suffix in the
    # name), ntfsclone | gzip | split (no suffix: known by content only).
    pieces = _compress_split(ext2.path, cz, "sda3.ext2-ptcl-img.zst",
                             ["zstd", "-q", "-c", "-T0", "-3"], 2_000_000)
    assert len(pieces) >= 2
    exp.good["/2026-11-27-10-img_laptop/sda3.ext2-ptcl-img"] = ext2
    exp.fs_kind["/2026-11-27-10-img_laptop/sda3.ext2-ptcl-img"] = "ext2"
    exp.hidden += [f"/2026-11-27-10-img_laptop/{p.name}" for p in pieces]
    pieces = _compress_split(nclone.path, cz, "sda5.ntfs-img", ["gzip", "-c", "--fast"], 3_000_000)
    assert len(pieces) >= 2
    exp.good["/2026-11-27-10-img_laptop/sda5.ntfs-img"] = nclone
    exp.fs_kind["/2026-11-27-10-img_laptop/sda5.ntfs-img"] = "ntfs"
    exp.hidden += [f"/2026-11-27-10-img_laptop/{p.name}" for p in pieces]
    for meta in ("disk", "parts", "sda-pt.sf", "clonezilla-img", "Info-saved-by-cmd.txt"):
        exp.plain[f"/2026-11-27-10-img_laptop/{meta}"] = cz / meta

    # Loose images in nested directories.
    nested = root / "loose" / "deep" / "nested"
    _place(xfs.path, nested / "server-root.xfs.img")
    exp.good["/loose/deep/nested/server-root.xfs.img"] = xfs
    exp.fs_kind["/loose/deep/nested/server-root.xfs.img"] = "xfs"
    _place(btrfs.path, root / "loose" / "data.btrfs-ptcl-img")
    exp.good["/loose/data.btrfs-ptcl-img"] = btrfs
    exp.fs_kind["/loose/data.btrfs-ptcl-img"] = "btrfs"
    _place(vfat.path, root / "loose" / "deep" / "efi.vfat-ptcl-img")
    exp.good["/loose/deep/efi.vfat-ptcl-img"] = vfat
    exp.fs_kind["/loose/deep/efi.vfat-ptcl-img"] = "vfat"
    _place(nclone.path, root / "loose" / "windows" / "sda3.ntfs-img")
    exp.good["/loose/windows/sda3.ntfs-img"] = nclone
    exp.fs_kind["/loose/windows/sda3.ntfs-img"] = "ntfs"
    # A name with spaces and non-ASCII letters.
    odd = "Mein Bäckup – Ωmega système.img"
    _place(ext2.path, root / "loose" / odd)
    exp.good[f"/loose/{odd}"] = ext2
    exp.fs_kind[f"/loose/{odd}"] = "ext2"

    # partimage: one stream (Clonezilla names it by the device alone) and a
    # volume set NAME.000, .001 ... written by partimage itself.
    from realimages_partimage import partimage_image
    pi_ext3 = partimage_image(factory, "ext3")
    _place(pi_ext3.path, root / "loose" / "old-server" / "hda1")
    exp.good["/loose/old-server/hda1"] = pi_ext3
    exp.fs_kind["/loose/old-server/hda1"] = "ext3"
    pi_vfat = partimage_image(factory, "vfat", split=True)
    volumes = sorted(pi_vfat.path.parent.glob(pi_vfat.path.name[:-4] + ".[0-9][0-9][0-9]"))
    assert len(volumes) >= 2
    for v in volumes:
        _place(v, root / "loose" / "old-server" / ("hda2" + v.name[-4:]))
    exp.good["/loose/old-server/hda2"] = pi_vfat
    exp.fs_kind["/loose/old-server/hda2"] = "vfat"
    exp.hidden += ["/loose/old-server/hda2" + v.name[-4:] for v in volumes]

    # Files that are not images.
    (root / "notes.txt").write_text("backups of the laptop\n")
    exp.plain["/notes.txt"] = root / "notes.txt"
    (root / "empty.img").write_bytes(b"")
    exp.plain["/empty.img"] = root / "empty.img"

    # Broken images.
    broken = root / "broken"
    broken.mkdir()
    data = ext4.path.read_bytes()
    (broken / "half.img").write_bytes(data[:len(data) // 2])
    exp.truncated["/broken/half.img"] = ext4
    bad = bytearray(data[:1 << 20])
    bad[40] ^= 0xFF                          # inside the fs-type field: header CRC fails
    (broken / "badcrc.img").write_bytes(bytes(bad))
    exp.broken["/broken/badcrc.img"] = "checksum"

    # Symlinks: one to an image inside the tree, one leading out, one loop.
    (root / "latest.img").symlink_to("loose/deep/nested/server-root.xfs.img")
    exp.good["/latest.img"] = xfs
    (root / "passwd-link").symlink_to("/etc/passwd")
    exp.hidden.append("/passwd-link")
    (root / "loose" / "again").symlink_to("..")
    exp.hidden.append("/loose/again")
    return exp


def user_python(tmp_path_factory) -> str:
    """A Python an ordinary user can run, with this checkout's imagefs and libraries.

    The test venv's interpreter may live under /root (pyenv), which other
    users cannot enter; Debian's /usr/bin/python3 (the same 3.11 ABI) gets a
    venv whose .pth adds the test venv's site-packages.
    """
    import site
    system = "/usr/bin/python3"
    if not os.path.exists(system):
        pytest.skip("needs Debian's /usr/bin/python3 for an ordinary user's venv")
    venv = tmp_path_factory.mktemp("user-venv") / "venv"
    subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True)
    packages = [p for p in site.getsitepackages() if p.startswith(sys.prefix)]
    for sp in (venv / "lib").glob("python3*/site-packages"):
        (sp / "imagefs-test.pth").write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in packages))
    for parent in [venv, *venv.parents]:
        if str(parent) in ("/", "/tmp"):
            break
        os.chmod(parent, 0o755)
    return str(venv / "bin" / "python")
