"""Fixture factory: real file systems imaged by the real tools.

Everything is built once per test session under pytest's base temp dir,
never in the source tree.  A *source* is a file system made in a zero-filled
sparse file and filled with deterministic data; an *image* is what
partclone / ntfsclone / partimage made of it; the *ground truth* is what the
real restore tool writes into a zero-filled file of the device size
(docs/design.md section 4).  Variants of one source (checksum modes, -k values,
splitting, compression) all share the ground truth restored from the
source's default image: the stored blocks are the same, and partclone
0.3.23's restore aborts on some odd -k images (after writing), so their own
restore is not a trustworthy oracle.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Filesystem kind -> (mkfs command, partclone program, how to fill it)
PARTCLONE_PROGRAM = {
    "ext4": "partclone.ext4", "ext4-1k": "partclone.ext4", "ext2": "partclone.ext2",
    "ext3": "partclone.ext3", "xfs": "partclone.xfs", "btrfs": "partclone.btrfs",
    "vfat": "partclone.fat", "exfat": "partclone.exfat", "ntfs": "partclone.ntfs",
    "raw": "partclone.imager",
}


def need(*tools: str) -> None:
    """Skip (fail under CI) unless every tool is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f"needs {', '.join(missing)} (apt-get install the package)"
        if IN_CI:
            pytest.fail("CI must have every tool: " + msg)
        pytest.skip(msg)


def need_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root; loop devices need it")
        pytest.skip("needs root for loop devices and mounts")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a tool; raise with its output if it fails."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                           f"{proc.stdout.decode(errors='replace')[-3000:]}")
    return proc


_loop_lock = threading.Lock()


@contextlib.contextmanager
def loop_device(path: Path | str, read_only: bool = False) -> Iterator[str]:
    with _loop_lock:
        args = ["losetup", "-f", "--show"] + (["-r"] if read_only else []) + [str(path)]
        dev = run(args).stdout.decode().strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@contextlib.contextmanager
def mounted(device: str, mountpoint: Path, fstype: str | None = None,
            options: str = "") -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    cmd = ["mount"]
    if fstype:
        cmd += ["-t", fstype]
    if options:
        cmd += ["-o", options]
    run(cmd + [device, str(mountpoint)])
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def fill_tree(root: Path, seed: int, megabytes: int = 6) -> None:
    """Deterministic mixed content: random data, text, small files, subdirs.

    Also writes and deletes one file so that free blocks hold old data (the
    ground truth must zero them; the raw source does not).
    """
    rng = random.Random(seed)
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "deep" / "er").mkdir(parents=True, exist_ok=True)
    (root / "random.bin").write_bytes(rng.randbytes(megabytes * 1024 * 1024 * 2 // 3))
    lines = "".join(f"line {i} {rng.random()}\n" for i in range(megabytes * 8000))
    (root / "docs" / "numbers.txt").write_text(lines)
    for i in range(40):
        (root / "docs" / "deep" / f"small-{i}.dat").write_bytes(rng.randbytes(rng.randrange(1, 9000)))
    (root / "docs" / "deep" / "er" / "name with spaces é.txt").write_text("hello\n" * 100)
    (root / "deleted.bin").write_bytes(rng.randbytes(300_000))
    os.sync()
    (root / "deleted.bin").unlink()


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (files) or 'dir' / 'link:target' (others)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for d in dirnames:
            if d in ("lost+found", "System Volume Information"):
                continue
            out[os.path.normpath(os.path.join(rel_dir, d))] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            else:
                with open(p, "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
        dirnames[:] = [d for d in dirnames if d not in ("lost+found", "System Volume Information")]
    return out


def sha256_file(path: Path | str, chunk: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@dataclass
class Source:
    """A file system made in a sparse file, with the digest of its tree."""

    kind: str
    raw: Path
    size: int
    tree: dict[str, str] = field(default_factory=dict)


@dataclass
class Image:
    """An image file (or first piece) plus the ground truth it must equal."""

    name: str
    path: Path                      # file, or first piece of a set
    ground_truth: Path
    source: Source
    tool: str
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = sha256_file(self.ground_truth)


class Factory:
    """Builds sources, images and ground truths once per session (cached by name)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._sources: dict[str, Source] = {}
        self._images: dict[str, Image] = {}

    # ----------------------------------------------------------------- sources
    def source(self, kind: str, size_mb: int = 64, seed: int = 1) -> Source:
        key = f"{kind}-{size_mb}-{seed}"
        with self._lock:
            if key not in self._sources:
                self._sources[key] = self._make_source(kind, size_mb, seed, key)
            return self._sources[key]

    def _make_source(self, kind: str, size_mb: int, seed: int, key: str) -> Source:
        need_root()
        raw = self.base / f"src-{key}.raw"
        size = size_mb * 1024 * 1024
        if kind == "ext4-odd":          # 16387 blocks: bitmap padding bits set
            size = 16387 * 4096
        if kind == "ext4-tail":         # partial tail dropped from the header size
            size = 64 * 1024 * 1024 + 2560
        raw.unlink(missing_ok=True)
        with open(raw, "wb") as f:
            f.truncate(size)
        mnt = self.base / f"mnt-{key}"
        fill_mb = max(1, min(8, size_mb // 8))
        if kind in ("ext4", "ext4-odd", "ext4-tail"):
            need("mkfs.ext4")
            run(["mkfs.ext4", "-q", "-F", "-b", "4096", str(raw)])
        elif kind == "ext4-1k":
            run(["mkfs.ext4", "-q", "-F", "-b", "1024", str(raw)])
        elif kind in ("ext2", "ext3"):
            run([f"mkfs.{kind}", "-q", "-F", "-b", "4096", str(raw)])
        elif kind == "xfs":
            need("mkfs.xfs")
            env = dict(os.environ, TEST_DIR="/tmp", TEST_DEV="/dev/null", QA_CHECK_FS="1")
            run(["mkfs.xfs", "-q", "-f", str(raw)], env=env)
        elif kind == "btrfs":
            need("mkfs.btrfs")
            run(["mkfs.btrfs", "-q", "-f", str(raw)])
        elif kind == "vfat":
            need("mkfs.vfat", "mcopy")
            run(["mkfs.vfat", "-F", "32", str(raw)])
        elif kind == "exfat":
            need("mkfs.exfat")
            run(["mkfs.exfat", str(raw)])
        elif kind == "ntfs":
            need("mkntfs", "ntfs-3g")
            run(["mkntfs", "-q", "-F", "-f", str(raw)])
        elif kind == "raw":
            rng = random.Random(seed)
            with open(raw, "r+b") as f:
                for off in range(0, size, 1 << 20):
                    if rng.random() < 0.6:
                        f.seek(off)
                        f.write(rng.randbytes(1 << 20))
            return Source(kind, raw, size)
        else:
            raise ValueError(kind)
        src = Source(kind, raw, size)
        staging = self.base / f"stage-{key}"
        staging.mkdir(exist_ok=True)
        fill_tree(staging, seed, fill_mb)
        if kind == "vfat":
            run(["mcopy", "-s", "-i", str(raw)] + [str(p) for p in staging.iterdir()] + ["::"])
            src.tree = tree_digest(staging)
        elif kind == "ntfs":
            mnt.mkdir(exist_ok=True)
            run(["ntfs-3g", str(raw), str(mnt)])
            try:
                fill_tree(mnt, seed, fill_mb)
                src.tree = tree_digest(mnt)
            finally:
                subprocess.run(["umount", str(mnt)], check=False)
        elif kind == "exfat":
            # exfat-fuse wants a block device; the kernel driver may be absent.
            need("mount.exfat-fuse")
            mnt.mkdir(exist_ok=True)
            with loop_device(raw) as dev:
                run(["mount.exfat-fuse", dev, str(mnt)])
                try:
                    fill_tree(mnt, seed, fill_mb)
                    src.tree = tree_digest(mnt)
                finally:
                    subprocess.run(["umount", str(mnt)], check=False)
        else:
            with loop_device(raw) as dev, mounted(dev, mnt):
                fill_tree(mnt, seed, fill_mb)
                src.tree = tree_digest(mnt)
        shutil.rmtree(staging, ignore_errors=True)
        return src

    # ---------------------------------------------------------------- images
    def partclone(self, kind: str, args: tuple[str, ...] = (), size_mb: int = 64,
                  seed: int = 1) -> Image:
        """A partclone image of the source ``kind`` made with extra ``args``."""
        name = f"pc-{kind}-{size_mb}-{seed}" + "".join(a.replace(" ", "") for a in args)
        with self._lock:
            if name in self._images:
                return self._images[name]
            src = self.source(kind, size_mb, seed)
            prog = PARTCLONE_PROGRAM[kind.split("-")[0] if kind not in PARTCLONE_PROGRAM else kind]
            need(prog)
            out = self.base / f"{name}.img"
            out.unlink(missing_ok=True)
            with loop_device(src.raw) as dev:
                run([prog, "-c", "-s", dev, "-o", str(out), *args])
            gt = self._partclone_ground_truth(kind, size_mb, seed, out if not args else None)
            img = Image(name, out, gt, src, "partclone")
            self._images[name] = img
            return img

    def _partclone_ground_truth(self, kind: str, size_mb: int, seed: int,
                                default_image: Path | None) -> Path:
        gt = self.base / f"gt-pc-{kind}-{size_mb}-{seed}.raw"
        if gt.exists():
            return gt
        if default_image is None:
            default_image = self.partclone(kind, (), size_mb, seed).path
            if gt.exists():
                return gt
        from imagefs.formats import probe
        from imagefs.io import FileSource
        device_size = probe(FileSource(str(default_image))).device_size
        tmp = gt.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.truncate(device_size)
        with loop_device(tmp) as dev:
            run(["partclone.restore", "-s", str(default_image), "-o", dev])
        tmp.rename(gt)
        return gt

    def ntfsclone(self, size_mb: int = 100, seed: int = 1, extra_bytes: int = 0) -> Image:
        name = f"nc-{size_mb}-{seed}-{extra_bytes}"
        with self._lock:
            if name in self._images:
                return self._images[name]
            need("ntfsclone", "mkntfs", "ntfs-3g")
            need_root()
            raw = self.base / f"src-{name}.raw"
            size = size_mb * 1024 * 1024 + extra_bytes
            with open(raw, "wb") as f:
                f.truncate(size)
            run(["mkntfs", "-q", "-F", "-f", str(raw)])
            mnt = self.base / f"mnt-{name}"
            mnt.mkdir(exist_ok=True)
            run(["ntfs-3g", str(raw), str(mnt)])
            try:
                fill_tree(mnt, seed, 4)
                tree = tree_digest(mnt)
            finally:
                subprocess.run(["umount", str(mnt)], check=False)
            src = Source("ntfs", raw, size, tree)
            out = self.base / f"{name}.img"
            run(["ntfsclone", "--save-image", "-f", "-O", str(out), str(raw)])
            gt = self.base / f"gt-{name}.raw"
            with open(gt, "wb") as f:
                f.truncate(size)
            run(["ntfsclone", "--restore-image", "-f", "-O", str(gt), str(out)])
            img = Image(name, out, gt, src, "ntfsclone")
            self._images[name] = img
            return img


    def compressed(self, image: Image, compressor: list[str], suffix: str,
                   split_bytes: int | None = None) -> Image:
        """``image`` compressed by the real ``compressor`` (and split), named the Clonezilla way.

        Returns an Image whose path is the compressed file or its ``.aa`` piece;
        the ground truth is the uncompressed image's.
        """
        name = f"{image.name}-{'_'.join(compressor).replace('-', '')}" + \
            (f"-split{split_bytes}" if split_bytes else "")

        def make(d: Path) -> Path:
            out = d / f"{image.path.name}.{suffix}"
            pipe_to_files(image.path, compressor, out, split_bytes)
            return Path(f"{out}.aa") if split_bytes else out

        return self._derived(name, image, make)

    def split(self, image: Image, piece_bytes: int, suffix_len: int = 2) -> Image:
        """``image`` cut with ``split -a N -b BYTES`` (Clonezilla's way)."""
        def make(d: Path) -> Path:
            prefix = d / (image.path.name + ".")
            run(["split", "-a", str(suffix_len), "-b", str(piece_bytes), str(image.path),
                 str(prefix)])
            return Path(str(prefix) + "a" * suffix_len)

        return self._derived(f"{image.name}-split{piece_bytes}", image, make)

    def _derived(self, name: str, image: Image, make: Callable[[Path], Path]) -> Image:
        """The same partition's bytes in another form: ``make(fresh dir)`` returns its path."""
        with self._lock:
            if name not in self._images:
                d = self.base / name
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir()
                self._images[name] = Image(name, make(d), image.ground_truth, image.source,
                                           image.tool, image.sha256)
            return self._images[name]


def pipe_to_files(src_path: Path, compressor: list[str], out: Path,
                  split_bytes: int | None = None) -> None:
    """``compressor < src_path > out`` or ``| split -a 2 -b N - out.``, as Clonezilla does."""
    need(compressor[0], "split")
    with open(src_path, "rb") as src:
        if split_bytes is None:
            with open(out, "wb") as dst:
                proc = subprocess.run(compressor, stdin=src, stdout=dst, stderr=subprocess.PIPE)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(compressor)} failed: {proc.stderr.decode()[-500:]}")
            return
        comp = subprocess.Popen(compressor, stdin=src, stdout=subprocess.PIPE)
        run(["split", "-a", "2", "-b", str(split_bytes), "-", f"{out}."], stdin=comp.stdout)
        comp.stdout.close()  # type: ignore[union-attr]
        if comp.wait(600) != 0:
            raise RuntimeError(f"{' '.join(compressor)} failed")

