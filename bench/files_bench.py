"""The files layer, in process, against a loop mount of the same partition bytes.

Issue 10's targets (through the mount later): copying a 100 MB file out of
``VNAME.files`` at >= 0.8x a loop mount of the virtual partition, cold, and
``ls -lR`` of 100,000 files no worse than 2x.  This measures the layer
itself, in process, side by side in one run:

* copy: a 100 MB file read with ``FileTree.read_into`` (1 MiB buffer) out of
  the partclone image through VirtualPartition, against ``read(2)`` of the
  same file in a read-only loop mount of the virtual partition written to a
  file; page cache dropped before every round;
* walk: every directory listed and every entry stat'ed (what ``ls -lR``
  does) through the FileTree, against ``os.scandir`` + ``lstat`` of the
  loop mount, cold; ``ls -lR`` itself on the loop mount as a second figure;
* library: the same copy and a 20,000-entry listing through the dissect
  library's own objects (the reason the backends decode inodes themselves);
* memory: RSS of this process with 20 trees open and walked.

Run as root (drop_caches, loop mounts), from the repository root:

    sudo .venv/bin/python bench/files_bench.py                # ext4; ~6 min with fixtures cached
    sudo .venv/bin/python bench/files_bench.py --ntfs         # also NTFS (ntfsclone), builds 20k files
    sudo .venv/bin/python bench/files_bench.py --rounds 5 --files 100000

Fixtures are built once under $IMAGEFS_BENCH_DIR (default /var/tmp/imagefs-bench).
"""

from __future__ import annotations

import argparse
import os
import platform
import stat as st
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (BENCH_DIR, MiB, drop_caches, have, is_root, log, loop_device, loop_mount,  # noqa: E402
                    median, read_file_seq, run, unmount)

from imagefs.blockio import VirtualPartition  # noqa: E402
from imagefs.services.cache import BlockCache  # noqa: E402
from imagefs.files import FileTree, image_partition, open_tree  # noqa: E402
from imagefs.blockio.opener import open_image_header  # noqa: E402

BIG = "big100.bin"
BIG_SIZE = 100 * 1000 * 1000


def _materialise(vp: VirtualPartition, out: Path) -> None:
    """The virtual partition's bytes in a sparse file (what the loop mount reads)."""
    buf = memoryview(bytearray(8 * MiB))
    zero = bytes(len(buf))
    with open(out, "wb") as f:
        f.truncate(vp.size)
        pos = 0
        while pos < vp.size:
            n = vp.read_into(pos, buf[:min(len(buf), vp.size - pos)])
            chunk = buf[:n]
            if chunk != zero[:n]:
                f.seek(pos)
                f.write(chunk)
            pos += n


def _fill_many(mnt: Path, count: int, big: bool) -> None:
    if big:
        with open(mnt / BIG, "wb") as f:
            for _ in range(BIG_SIZE // MiB):
                f.write(os.urandom(MiB))
            f.write(os.urandom(BIG_SIZE % MiB))
    per_dir = 100
    payload = b"x" * 300
    for d in range(-(-count // per_dir)):
        sub = mnt / f"d{d // 100:03d}" / f"d{d % 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(min(per_dir, count - d * per_dir)):
            fd = os.open(sub / f"file-{i:03d}.txt", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, payload[:i * 3])
            os.close(fd)


def fixture(kind: str, files: int) -> tuple[Path, Path]:
    """(partclone/ntfsclone image, the virtual partition's bytes as a file), built once."""
    d = BENCH_DIR / f"files-{kind}-{files}"
    img, vpfile, done = d / "fs.img", d / "vp.raw", d / "done"
    if done.exists():
        return img, vpfile
    log(f"building {d.name} (once; cached)")
    d.mkdir(parents=True, exist_ok=True)
    raw = d / "fs.raw"
    size = 1536 * MiB
    with open(raw, "wb") as f:
        f.truncate(size)
    mnt = d / "mnt"
    mnt.mkdir(exist_ok=True)
    if kind == "ext4":
        run(["mkfs.ext4", "-q", "-F", "-N", str(files + 20000), "-E",
             "lazy_itable_init=0,lazy_journal_init=0", str(raw)])
        with loop_mount(raw, mnt, "loop,rw"):
            _fill_many(mnt, files, True)
        with loop_device(raw) as dev:
            run(["partclone.ext4", "-q", "-c", "-s", dev, "-o", str(img)], timeout=1800)
    else:
        run(["mkntfs", "-q", "-F", "-Q", str(raw)])
        run(["ntfs-3g", str(raw), str(mnt)])
        try:
            _fill_many(mnt, files, True)
        finally:
            unmount(mnt)
        run(["ntfsclone", "--save-image", "-f", "-o", str(img), str(raw)], timeout=1800)
    raw.unlink()
    header, _ = open_image_header(str(img))
    vp = VirtualPartition(header.open())
    _materialise(vp, vpfile)
    vp.close()
    done.write_text("ok\n")
    return img, vpfile


class Opened:
    """A tree over an image, the way the catalog will open it."""

    def __init__(self, img: Path, cache_mib: int = 256) -> None:
        header, _ = open_image_header(str(img))
        self.vp = VirtualPartition(header.open(), BlockCache(cache_mib * MiB))
        self.tree: FileTree = open_tree(image_partition(self.vp), header.fs_type, name=img.name)

    def close(self) -> None:
        self.tree.close()
        self.vp.close()


def tree_copy(img: Path) -> float:
    o = Opened(img)
    try:
        t0 = time.perf_counter()
        ino = o.tree.lookup(o.tree.root, BIG.encode())
        buf = memoryview(bytearray(MiB))
        pos = 0
        while True:
            n = o.tree.read_into(ino, pos, buf)
            if not n:
                break
            pos += n
        dt = time.perf_counter() - t0
        assert pos == BIG_SIZE, pos
        return dt
    finally:
        o.close()


def tree_walk(img: Path) -> tuple[float, int]:
    o = Opened(img)
    try:
        t0 = time.perf_counter()
        n = 0
        stack = [o.tree.root]
        while stack:
            ino = stack.pop()
            for _name, child in o.tree.listdir(ino):
                s = o.tree.stat(child)
                n += 1
                if st.S_ISDIR(s.mode):
                    stack.append(child)
        return time.perf_counter() - t0, n
    finally:
        o.close()


def mount_walk(root: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    stack = [str(root)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                s = os.lstat(e.path)
                n += 1
                if st.S_ISDIR(s.st_mode) and e.name != "lost+found":
                    stack.append(e.path)
    return time.perf_counter() - t0, n


def ls_lr(root: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["ls", "-lR", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.perf_counter() - t0


def library_figures(kind: str, img: Path) -> dict[str, float]:
    """The dissect library's own stream and objects over the same VirtualPartition (warm)."""
    from imagefs.files import PartitionFile
    o = Opened(img)
    out: dict[str, float] = {}
    try:
        fh = PartitionFile(o.tree.partition)
        if kind == "ext4":
            from dissect.extfs import ExtFS
            fs = ExtFS(fh)
            t0 = time.perf_counter()
            f = fs.get("/" + BIG).open()
            while f.read(MiB):
                pass
            out["library copy (s)"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            n = 0
            for e in fs.get("/d000").iterdir():
                for e2 in (e.iterdir() if e.filename not in (".", "..") and e.filetype == st.S_IFDIR else ()):
                    _ = e2.inode.i_mode, e2.size, e2.mtime_ns
                    n += 1
            out["library list+stat (s)"] = time.perf_counter() - t0
            out["library entries"] = n
        t0 = time.perf_counter()
        ino = o.tree.lookup(o.tree.root, BIG.encode())
        buf = memoryview(bytearray(MiB))
        pos = 0
        while n2 := o.tree.read_into(ino, pos, buf):
            pos += n2
        out["imagefs copy (s)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = 0
        d0 = o.tree.lookup(o.tree.root, b"d000")
        for _nm, sub in o.tree.listdir(d0):
            for _nm2, child in o.tree.listdir(sub):
                o.tree.stat(child)
                n += 1
        out["imagefs list+stat (s)"] = time.perf_counter() - t0
        out["imagefs entries"] = n
    finally:
        o.close()
    return out


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_figure(img: Path, trees: int) -> dict[str, float]:
    before = rss_mib()
    opened = []
    try:
        for _ in range(trees):
            o = Opened(img, cache_mib=1)
            stack = [o.tree.root]
            while stack:
                ino = stack.pop()
                for _n, child in o.tree.listdir(ino)[:2000]:
                    if st.S_ISDIR(o.tree.stat(child).mode):
                        stack.append(child)
            opened.append(o)
        after = rss_mib()
    finally:
        for o in opened:
            o.close()
    return {"rss before (MiB)": before, "rss with trees (MiB)": after,
            "per tree (MiB)": (after - before) / trees}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--ntfs", action="store_true", help="also an NTFS with 20,000 files (ntfsclone)")
    ap.add_argument("--trees", type=int, default=20)
    args = ap.parse_args()
    if not is_root():
        print("files_bench: run as root (drop_caches, loop mounts)", file=sys.stderr)
        return 2
    for tool in ("mkfs.ext4", "partclone.ext4"):
        if not have(tool):
            print(f"files_bench: {tool} is missing", file=sys.stderr)
            return 2
    kinds = [("ext4", args.files)] + ([("ntfs", 20_000)] if args.ntfs else [])
    print(f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}; "
          f"load {os.getloadavg()[0]:.2f}")
    print()
    for kind, count in kinds:
        img, vpfile = fixture(kind, count)
        print(f"## {kind}: {count:,} files + a 100 MB file; image {img.stat().st_size / MiB:.0f} MiB\n")
        copies: dict[str, list[float]] = {"tree": [], "loop": [], "mount": []}
        walks: dict[str, list[float]] = {"tree": [], "loop": [], "ls": [], "mount": [],
                                         "mount-ls": []}
        entries = {}
        mnt = BENCH_DIR / f"files-{kind}-mnt"
        opts = "loop,ro,noload" if kind == "ext4" else "ro"
        for r in range(args.rounds):
            log(f"{kind} round {r + 1}/{args.rounds}")
            drop_caches()
            copies["tree"].append(tree_copy(img))
            with (loop_mount(vpfile, mnt, opts) if kind == "ext4" else _ntfs3g(vpfile, mnt)) as m:
                drop_caches()
                n, dt = read_file_seq(m / BIG, MiB)
                copies["loop"].append(dt)
                drop_caches()
                dt, entries["loop"] = mount_walk(m)
                walks["loop"].append(dt)
                drop_caches()
                walks["ls"].append(ls_lr(m))
            drop_caches()
            dt, entries["tree"] = tree_walk(img)
            walks["tree"].append(dt)
            # Through a fresh imagefs mount of the image's directory (cold
            # kernel caches; persisted indexes are reused as by a user).
            with _imagefs(img.parent, BENCH_DIR / f"files-{kind}-imagefs") as m:
                root = m / (img.name + ".files")
                drop_caches()
                n, dt = read_file_seq(root / BIG, MiB)
                copies["mount"].append(dt)
            with _imagefs(img.parent, BENCH_DIR / f"files-{kind}-imagefs") as m:
                drop_caches()
                dt, entries["mount"] = mount_walk(m / (img.name + ".files"))
                walks["mount"].append(dt)
            with _imagefs(img.parent, BENCH_DIR / f"files-{kind}-imagefs") as m:
                drop_caches()
                walks["mount-ls"].append(ls_lr(m / (img.name + ".files")))
        ct, cl = median(copies["tree"]), median(copies["loop"])
        wt, wl, wls = median(walks["tree"]), median(walks["loop"]), median(walks["ls"])
        print("| figure (cold, medians of %d) | FileTree | loop mount | ratio |" % args.rounds)
        print("|---|---|---|---|")
        print(f"| copy 100 MB (s) | {ct:.2f} ({min(copies['tree']):.2f}-{max(copies['tree']):.2f}) | "
              f"{cl:.2f} ({min(copies['loop']):.2f}-{max(copies['loop']):.2f}) | "
              f"{cl / ct:.2f}x speed (target >= 0.8x) |")
        print(f"| stat every entry, {entries['tree']:,} / {entries['loop']:,} entries (s) | {wt:.2f} "
              f"({min(walks['tree']):.2f}-{max(walks['tree']):.2f}) | {wl:.2f} "
              f"({min(walks['loop']):.2f}-{max(walks['loop']):.2f}) | {wt / wl:.2f}x time (target <= 2x) |")
        print(f"| `ls -lR` of the loop mount (s) | | {wls:.2f} | FileTree walk {wt / wls:.2f}x its time |")
        print()
        cm, wm, lm = median(copies["mount"]), median(walks["mount"]), median(walks["mount-ls"])
        print("Through the mount (`VNAME.files`, a fresh imagefs mount per figure, cold):\n")
        print("| figure (cold, medians of %d) | VNAME.files | loop mount | ratio |" % args.rounds)
        print("|---|---|---|---|")
        print(f"| copy 100 MB (s) | {cm:.2f} ({min(copies['mount']):.2f}-{max(copies['mount']):.2f})"
              f" | {cl:.2f} | {cl / cm:.2f}x speed (target >= 0.8x) |")
        print(f"| stat every entry, {entries['mount']:,} entries (s) | {wm:.2f} "
              f"({min(walks['mount']):.2f}-{max(walks['mount']):.2f}) | {wl:.2f} | "
              f"{wm / wl:.2f}x time |")
        print(f"| `ls -lR` (s) | {lm:.2f} ({min(walks['mount-ls']):.2f}-{max(walks['mount-ls']):.2f})"
              f" | {wls:.2f} | {lm / wls:.2f}x time (target <= 2x) |")
        print()
        lib = library_figures(kind, img)
        if lib:
            print("Library against imagefs's own paths (warm, one round): " +
                  ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in lib.items()))
            print()
        mem = memory_figure(img, args.trees)
        print(f"Memory, {args.trees} trees of this image open and walked (2,000 entries a directory at "
              f"most), 1 MiB block cache each: " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items()))
        print()
    return 0


class _imagefs:
    """``imagefs SRC MNT`` (background mount) as a context manager."""

    def __init__(self, src: Path, mnt: Path) -> None:
        self.src, self.mnt = src, mnt

    def __enter__(self) -> Path:
        self.mnt.mkdir(parents=True, exist_ok=True)
        run([sys.executable, "-m", "imagefs", str(self.src), str(self.mnt)])
        return self.mnt

    def __exit__(self, *exc: object) -> None:
        unmount(self.mnt)


class _ntfs3g:
    """ntfs-3g -o ro as a context manager (NTFS has no kernel driver here)."""

    def __init__(self, raw: Path, mnt: Path) -> None:
        self.raw, self.mnt = raw, mnt

    def __enter__(self) -> Path:
        self.mnt.mkdir(parents=True, exist_ok=True)
        run(["ntfs-3g", "-o", "ro", str(self.raw), str(self.mnt)])
        return self.mnt

    def __exit__(self, *exc: object) -> None:
        unmount(self.mnt)


if __name__ == "__main__":
    sys.exit(main())
