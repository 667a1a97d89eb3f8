#!/usr/bin/env python3
"""imagefs benchmark: one command, side by side, medians of rounds.

    sudo .venv/bin/python bench/run.py [--size-gb 2] [--rounds 3] [--quick]

Needs: root (drop_caches, loop devices, mount), /dev/fuse, mkfs.ext4,
partclone.ext4, losetup; optional: mkntfs + ntfs-3g + ntfsclone (ntfsclone
series), libfuse3-dev + pkg-config + gcc (to pip-install imagebackup 0.2.2
for the vpartclone contender).  Fixtures and the imagebackup venv are
cached under /var/tmp/imagefs-bench; nothing is written into the source
tree.  See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

# Nothing is written into the source tree: no bytecode caches from this
# script, the bench modules, imagefs or the daemons it starts.
sys.dont_write_bytecode = True
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import codecs_mount              # noqa: E402
import contenders as ct          # noqa: E402
import fixtures                  # noqa: E402
import measures as ms            # noqa: E402
from common import (BENCH_DIR, GiB, MiB, REPO, bench_tempdir, drop_caches, have,  # noqa: E402
                    is_root, log, median, run, unmount)

REQUIRED_TOOLS = ["mkfs.ext4", "partclone.ext4", "losetup", "mount", "umount"]


class Budget:
    """Wall-clock budget: optional sections are skipped when it runs out."""

    def __init__(self, seconds: float) -> None:
        self.t0 = time.monotonic()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.seconds - self.elapsed()


def check_requirements() -> list[str]:
    """What is missing for the mandatory part (empty: all there)."""
    missing = []
    if not is_root():
        missing.append("root (sudo): drop_caches, loop devices and mount need it")
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse (modprobe fuse)")
    if not (have("fusermount3") or have("fusermount")):
        missing.append("fusermount3 (apt-get install fuse3)")
    missing += [f"{t} (apt-get install e2fsprogs partclone util-linux mount)"
                for t in REQUIRED_TOOLS if not have(t)]
    return missing


def machine_info() -> dict:
    """nproc, memory, kernel, the disk under BENCH_DIR, date (for RESULTS.md)."""
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    disk = subprocess.run(["df", "-h", "--output=source,fstype,size", str(BENCH_DIR)],
                          capture_output=True, text=True).stdout.strip().splitlines()[-1:]
    cpu = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    libfuse = subprocess.run(["fusermount3", "--version"], capture_output=True,
                             text=True).stdout.strip() if have("fusermount3") else "?"
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "disk": " ".join(disk), "python": platform.python_version(),
            "libfuse": libfuse, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "loadavg_at_start": os.getloadavg()[0]}


# ------------------------------------------------------------- head to head

def prewarm_host(paths: list[Path]) -> None:
    """Read files once, untimed.

    On a VM the host caches the virtual disk: drop_caches empties only the
    guest's page cache, and a file not read for a while comes back at a
    third of the speed (measured: dd of the 1.9 GB image 520 MB/s, then
    1.5-1.9 GB/s).  Reading the backing file right before every cold test
    puts every contender and round on the same footing ("guest-cold").
    """
    for p in paths:
        run(["sh", "-c", f"cat '{p}' > /dev/null"], timeout=600)

def one_test(c: ct.Contender, test: str, work: Path, cfg: dict) -> dict:
    """Mount ``c`` afresh, run one test, unmount.

    A fresh mount per test keeps each contender's own caches (imagefs's
    block cache) from carrying data from one test into the next; the start
    is timed too, so every test also yields a time-to-first-byte sample.
    """
    mnt = work / f"mnt-{c.name}"
    backing = c.loop_backing if (test == "loopcopy" and c.loop_backing) else c.backing
    if backing is not None and test != "firstbyte":
        prewarm_host([backing])    # same host-cache state for every contender and round
    m = ct.start(c, mnt, work)
    out: dict = {"mount_s": m.seconds_to_live}
    try:
        target = c.path(mnt)
        out["first_byte_s"] = m.seconds_to_live + ms.first_byte(target)
        if cfg.get("readahead_kb"):
            ct.set_bdi_readahead_kb(mnt, cfg["readahead_kb"])
        out["readahead_kb"] = ct.bdi_readahead_kb(mnt)
        if test == "seq":
            out.update(ms.sequential(target, cfg["seq_time"]))
        elif test == "seqhot":
            out.update(ms.sequential_hot(target, cfg["seq_time"]))
        elif test == "seqdirect":
            out.update(ms.sequential_direct(target, cfg["seq_time"]))
        elif test in ("rand1", "rand8"):
            threads = 1 if test == "rand1" else 8
            out.update(ms.random_reads(target, threads, cfg["rand_reads"] // threads,
                                       cfg["rand_time"]))
        elif test == "loopcopy":
            out.update(ms.loop_copy(mnt / c.loop_target, work / "loopmnt", fixtures.BIG_FILE))
    finally:
        out["peak_rss_mib"] = (ct.stop(m) or 0) / 1024
    return out


def storage_ceiling(image: Path, cfg: dict) -> float:
    """The image file itself read cold with 1 MiB reads, no FUSE at all (MiB/s).

    What no FUSE layer can beat on this machine: it shows whether a target
    such as "6x imagebackup" lies within reach of the storage at all.
    """
    prewarm_host([image])
    return ms.sequential(image, cfg["seq_time"])["mibps"]


def head_to_head(cs: list[ct.Contender], rounds: int, cfg: dict, work: Path,
                 budget: Budget, image: Path | None = None) -> dict:
    """Every test for every contender, contenders rotating round by round."""
    tests = ["seq", "seqhot", "seqdirect", "rand1", "rand8", "loopcopy"]
    raw: dict = {c.name: {t: [] for t in tests} for c in cs}
    errors: dict = {}
    storage: list[float] = []
    for r in range(rounds):
        if r >= 3 and budget.left() < 240:
            log(f"budget: stopping after {r} rounds")
            break
        if image is not None:
            storage.append(storage_ceiling(image, cfg))
            log(f"round {r + 1} storage  image file, no FUSE {storage[-1]:8.1f} MiB/s")
        order = cs[r % len(cs):] + cs[:r % len(cs)]   # alternate who goes first
        for test in tests:
            for c in order:
                if c.name in errors and len(errors[c.name]) > 3:
                    continue
                try:
                    res = one_test(c, test, work, cfg)
                    raw[c.name][test].append(res)
                    log(f"round {r + 1} {test:8s} {c.name:12s} " + _brief(test, res))
                except Exception as exc:
                    errors.setdefault(c.name, []).append(f"{test}: {exc}")
                    log(f"round {r + 1} {test} {c.name} FAILED: {exc}")
    return {"raw": raw, "errors": errors, "summary": summarize(raw),
            "storage_mibps": median(storage) if storage else None,
            "storage_range": _range(storage)}


def _brief(test: str, res: dict) -> str:
    if test in ("seq", "seqhot", "seqdirect", "loopcopy"):
        return f"{res['mibps']:8.1f} MiB/s  ({res['bytes'] / MiB:.0f} MiB in {res['seconds']:.2f} s)"
    return f"{res['iops']:8.0f} IOPS  p99 {res['p99_ms']:.2f} ms"


def summarize(raw: dict) -> dict:
    """Medians per contender: the figures the ratios are made of."""
    out = {}
    for name, tests in raw.items():
        firsts = [r["first_byte_s"] for t in tests.values() for r in t]
        out[name] = {
            "seq_mibps": median([r["mibps"] for r in tests["seq"]]),
            "seq_range": _range([r["mibps"] for r in tests["seq"]]),
            "seqwarm_mibps": median([r.get("warm_mibps", float("nan")) for r in tests["seq"]]),
            "seqhot_mibps": median([r["mibps"] for r in tests["seqhot"]]),
            "seqhot_range": _range([r["mibps"] for r in tests["seqhot"]]),
            "seqdirect_mibps": median([r["mibps"] for r in tests["seqdirect"]]),
            "seqdirect_range": _range([r["mibps"] for r in tests["seqdirect"]]),
            "rand1_range": _range([r["iops"] for r in tests["rand1"]]),
            "rand8_range": _range([r["iops"] for r in tests["rand8"]]),
            "seq_complete": all(r.get("complete") for r in tests["seq"]) if tests["seq"] else None,
            "rand1_iops": median([r["iops"] for r in tests["rand1"]]),
            "rand1_p99_ms": median([r["p99_ms"] for r in tests["rand1"]]),
            "rand8_iops": median([r["iops"] for r in tests["rand8"]]),
            "rand8_p99_ms": median([r["p99_ms"] for r in tests["rand8"]]),
            "first_byte_s": median(firsts),
            "loopcopy_s": median([r["seconds"] for r in tests["loopcopy"]]),
            "loopcopy_mibps": median([r["mibps"] for r in tests["loopcopy"]]),
            "peak_rss_mib": max([r["peak_rss_mib"] for t in tests.values() for r in t] or [0]),
            "readahead_kb": next((r["readahead_kb"] for t in tests.values() for r in t), None),
            "rounds": len(tests["seq"]),
        }
    return out


def _range(vals: list[float]) -> str:
    """min-max over the rounds: how noisy the median is."""
    return f"{min(vals):.0f}-{max(vals):.0f}" if vals else ""


def ratios(summary: dict, a: str, b: str) -> dict:
    """How many times ``a`` is faster than ``b`` per figure (>1: a is faster)."""
    if a not in summary or b not in summary:
        return {}
    x, y = summary[a], summary[b]

    def div(p: float, q: float) -> float:
        return p / q if q and q == q and p == p else float("nan")

    return {"seq": div(x["seq_mibps"], y["seq_mibps"]),
            "seqwarm": div(x.get("seqwarm_mibps", float("nan")), y.get("seqwarm_mibps", float("nan"))),
            "seqhot": div(x.get("seqhot_mibps", float("nan")), y.get("seqhot_mibps", float("nan"))),
            "seqdirect": div(x.get("seqdirect_mibps", float("nan")),
                             y.get("seqdirect_mibps", float("nan"))),
            "rand1": div(x["rand1_iops"], y["rand1_iops"]),
            "rand8": div(x["rand8_iops"], y["rand8_iops"]),
            "first_byte": div(y["first_byte_s"], x["first_byte_s"]),
            "loopcopy": div(y["loopcopy_s"], x["loopcopy_s"])}


# -------------------------------------------------------------- scaling series

def mount_tree(source: Path, work: Path, options: str | None) -> dict:
    """imagefs on a tree: time to live, then ``ls -lR``; peak RSS of the daemon."""
    c = ct.imagefs(source, "", options)
    mnt = work / "mnt-tree"
    m = ct.start(c, mnt, work)
    try:
        t0 = time.perf_counter()
        res = subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, text=True, timeout=600)
        ls_s = time.perf_counter() - t0
        entries = sum(1 for line in res.stdout.splitlines() if line.startswith("-"))
    finally:
        rss = (ct.stop(m) or 0) / 1024
    return {"mount_s": m.seconds_to_live, "ls_s": ls_s, "total_s": m.seconds_to_live + ls_s,
            "files_listed": entries, "peak_rss_mib": rss, "ls_rc": res.returncode}


def tree_series(counts: list[int], rounds: int, work: Path, options: str | None,
                budget: Budget) -> dict:
    out = {}
    for n in counts:
        if budget.left() < 60:
            out[n] = {"skipped": "time budget"}
            continue
        root = fixtures.image_tree(n)
        samples = []
        for _ in range(rounds if n <= 1000 else 1):      # 10,000: one round (time)
            drop_caches()            # cold: the headers come from disk
            samples.append(mount_tree(root, work, options))
        out[n] = {k: median([s[k] for s in samples]) for k in samples[0]}
        log(f"tree {n:6d}: mount {out[n]['mount_s']:.2f} s + ls -lR {out[n]['ls_s']:.2f} s, "
            f"{out[n]['files_listed']:.0f} files, peak RSS {out[n]['peak_rss_mib']:.0f} MiB")
    return out


def memory_open_images(count: int, work: Path, options: str | None,
                       random_reads: int = 200) -> dict:
    """imagefs with ``count`` images open at once: peak RSS against the design bound.

    Every virtual partition of a tree of ``count`` images is opened and kept
    open, read once sequentially (1 MiB reads) and then with ``random_reads``
    random 4 KiB preads (readahead off), so that every block map is built and
    the block cache sees small reads of every image.
    """
    root = fixtures.image_tree(count)
    c = ct.imagefs(root, "", options)
    mnt = work / "mnt-mem"
    drop_caches()
    m = ct.start(c, mnt, work)
    fds: list[int] = []
    try:
        t0 = time.perf_counter()
        for dirpath, _dirs, files in os.walk(mnt):
            for name in files:
                if not name.endswith(".info"):
                    fds.append(os.open(os.path.join(dirpath, name), os.O_RDONLY))
        rng = __import__("random").Random(3)
        for fd in fds:
            while os.read(fd, MiB):
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            size = os.fstat(fd).st_size
            for _ in range(random_reads):
                os.pread(fd, 4096, rng.randrange(max(1, size // 4096 - 1)) * 4096)
        seconds = time.perf_counter() - t0
        now = _vmrss_kib(m.pid)
    finally:
        for fd in fds:
            os.close(fd)
        peak = (ct.stop(m) or 0) / 1024
    return {"images_open": len(fds), "seconds": seconds, "peak_rss_mib": peak,
            "rss_mib": (now or 0) / 1024}


def _vmrss_kib(pid: int | None) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, TypeError):
        return None
    return None


def first_open_inprocess(img: Path) -> dict:
    """probe + open (bitmap read, CRC, rank table) + first 4 KiB read, cold cache."""
    sys.path.insert(0, str(REPO))
    from imagefs.blockio import VirtualPartition
    from imagefs.formats import probe
    from imagefs.formats import registry
    from imagefs.io import FileSource
    registry()              # import the format modules before the clock starts
    drop_caches()
    t0 = time.perf_counter()
    header = probe(FileSource(str(img)))
    t1 = time.perf_counter()
    image = header.open()
    t2 = time.perf_counter()
    VirtualPartition(image, None).read(0, 4096)
    t3 = time.perf_counter()
    image.close()
    return {"probe_s": t1 - t0, "open_s": t2 - t1, "first_read_s": t3 - t2, "total_s": t3 - t0}


def first_open_mount(img: Path, work: Path, options: str | None) -> dict:
    """Through imagefs: mount a directory holding only ``img``; open + first 4 KiB."""
    src = work / "one"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir()
    os.link(img, src / img.name)
    c = ct.imagefs(src, img.name, options)
    mnt = work / "mnt-one"
    drop_caches()
    m = ct.start(c, mnt, work)
    try:
        t = ms.first_byte(mnt / find_vp(mnt, img.name))
    finally:
        ct.stop(m)
    return {"mount_s": m.seconds_to_live, "first_byte_s": t}


def find_vp(mnt: Path, hint: str) -> str:
    """The virtual partition's name in a mount: ``hint`` if shown, else the first non-.info file."""
    if (mnt / hint).exists():
        return hint
    for name in sorted(os.listdir(mnt)):
        if not name.endswith(".info"):
            return name
    raise RuntimeError(f"no virtual partition in {mnt}: {os.listdir(mnt)}")


def bitmap_series(sizes_gb: list[int], work: Path, with_mount: bool, options: str | None,
                  budget: Budget) -> dict:
    out = {}
    for gb in sizes_gb:
        if budget.left() < 30:
            out[gb] = {"skipped": "time budget"}
            continue
        img = fixtures.synthetic_partclone(gb * GiB)
        entry: dict = {"bitmap_mib": ((gb * GiB // 4096) + 7) // 8 / MiB}
        try:
            entry["inprocess"] = first_open_inprocess(img)
        except Exception as exc:
            entry["inprocess"] = {"error": str(exc)}
        if with_mount:
            try:
                entry["mount"] = first_open_mount(img, work, options)
            except Exception as exc:
                entry["mount"] = {"error": str(exc)}
        out[gb] = entry
        log(f"bitmap {gb} GB: {json.dumps(entry)}")
    return out


def _time_cat(img: Path) -> float:
    drop_caches()
    t0 = time.perf_counter()
    run(["sh", "-c", f"cat '{img}' > /dev/null"])
    return time.perf_counter() - t0


def _time_ntfs_open(img: Path, idx: Path) -> float:
    """Cold in-process open (probe + index build or load) with index dir ``idx``."""
    from imagefs.formats import probe
    from imagefs.services.indexstore import IndexStore
    from imagefs.io import FileSource
    drop_caches()
    t0 = time.perf_counter()
    probe(FileSource(str(img))).open(index_store=IndexStore(str(idx))).close()
    return time.perf_counter() - t0


def ntfs_series(quick: bool, work: Path, with_mount: bool, options: str | None,
                rounds: int = 3) -> dict:
    """ntfsclone: index build (first open) and reload vs ``cat image > /dev/null``.

    cat and build alternate for ``rounds`` rounds (medians): single cold
    reads on this VM vary by 2-4x with the host's cache.
    """
    fx = fixtures.ntfs_image(size=(512 if quick else 1024) * MiB)
    if fx is None:
        return {"unavailable": "mkntfs, ntfs-3g or ntfsclone missing (apt-get install ntfs-3g)"}
    img = fx.image
    out: dict = {"image_mib": img.stat().st_size / MiB}
    prewarm_host([img])
    sys.path.insert(0, str(REPO))
    cats, builds, reloads = [], [], []
    try:
        for _ in range(rounds):
            cats.append(_time_cat(img))
            idx = bench_tempdir("ntfsidx-")
            try:
                builds.append(_time_ntfs_open(img, idx))     # empty index dir: build
                reloads.append(_time_ntfs_open(img, idx))    # index saved: load
            finally:
                shutil.rmtree(idx, ignore_errors=True)
        out.update(cat_s=median(cats), build_s=median(builds), reload_s=median(reloads),
                   build_vs_cat=median(cats) / median(builds))
    except Exception as exc:
        out["inprocess_error"] = f"{type(exc).__name__}: {exc}"
        if cats:
            out["cat_s"] = median(cats)
    if with_mount and "inprocess_error" not in out:
        idx = bench_tempdir("ntfsidx-")
        opts = ",".join(filter(None, [options, f"index_dir={idx}"]))
        try:
            for label in ("mount_build", "mount_reload"):
                out[label] = first_open_mount(img, work, opts)
        except Exception as exc:
            out["mount_error"] = str(exc)
        finally:
            shutil.rmtree(idx, ignore_errors=True)
    log(f"ntfsclone: {json.dumps(out)}")
    return out


def inprocess_series(image: Path, rounds: int) -> dict:
    """The in-process figure (VirtualPartition.read, warm page cache) on the same image."""
    sys.path.insert(0, str(REPO))
    import inprocess
    inprocess.warm(image)
    return inprocess.measure(image, rounds)


def codecs_series(quick: bool, budget: Budget) -> dict:
    """Delegate the compressed variants to bench/codecs_bench.py when it exists."""
    script = REPO / "bench" / "codecs_bench.py"
    if not script.exists():
        return {"unavailable": "bench/codecs_bench.py not present yet"}
    cmd = [sys.executable, str(script)]
    helptext = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(REPO))).stdout
    if quick and "--quick" in helptext:
        cmd.append("--quick")
    elif quick and "--size-mb" in helptext:
        cmd += ["--size-mb", "64", "--rounds", "1"] if "--rounds" in helptext else ["--size-mb", "64"]
        if "--workdir" in helptext:
            # Its own work dir: codecs_bench.py reuses compressed files by
            # codec name, so a 64 MB run beside a 256 MB one mixes them up.
            cmd += ["--workdir", str(BENCH_DIR / "codecs-quick")]
    timeout = max(60.0, budget.left() - 30)
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
        return {"cmd": " ".join(cmd), "rc": res.returncode, "seconds": time.perf_counter() - t0,
                "stdout": res.stdout[-8000:], "stderr": res.stderr[-2000:]}
    except subprocess.TimeoutExpired:
        return {"cmd": " ".join(cmd), "error": f"timed out after {timeout:.0f} s"}


# ------------------------------------------------------------------- report

def fmt(x: object, spec: str = ".2f") -> str:
    if isinstance(x, (int, float)) and x == x:
        return format(x, spec)
    return "n/a"


def report(res: dict) -> str:
    """The results as Markdown (printed, and saved next to the JSON)."""
    L: list[str] = []
    m = res["machine"]
    L.append(f"Run {m['date']}: `{res['command']}` ({res['elapsed_s']:.0f} s)\n")
    L.append(f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB RAM, kernel {m['kernel']}, "
             f"disk {m['disk']}, Python {m['python']}, {m['libfuse']}; 1-min load average "
             f"{m.get('loadavg_at_start', float('nan')):.2f} at start, "
             f"{res.get('loadavg_at_end', float('nan')):.2f} at end (other work on the machine adds noise)\n")
    fx = res.get("fixture", {})
    L.append(f"Fixture: ext4 {fx.get('size_gib', 0):.2f} GiB, 90% full ({fx.get('files')} files), "
             f"partclone image {fx.get('image_mib', 0):.0f} MiB (CRC32 every 256 blocks)\n")
    h = res.get("head_to_head", {})
    summ = h.get("summary", {})
    if summ:
        L.append("| figure | " + " | ".join(summ) + " | imagefs / passthrough | imagefs / imagebackup |")
        L.append("|---|" + "---|" * (len(summ) + 2))
        rp, ri = res.get("ratio_passthrough", {}), res.get("ratio_imagebackup", {})
        rows = [("sequential 1 MiB, cold (MiB/s)", "seq_mibps", "seq", ".0f"),
                ("second read of the same bytes, warm (MiB/s)", "seqwarm_mibps", "seqwarm", ".0f"),
                ("sequential 1 MiB, image in page cache, fresh mount (MiB/s)", "seqhot_mibps",
                 "seqhot", ".0f"),
                ("the same with O_DIRECT reads: the daemon alone, no page-cache fill (MiB/s)",
                 "seqdirect_mibps", "seqdirect", ".0f"),
                ("random 4 KiB, 1 thread, cold (IOPS)", "rand1_iops", "rand1", ".0f"),
                ("random 4 KiB, 8 threads, cold (IOPS)", "rand8_iops", "rand8", ".0f"),
                ("random 4 KiB p99, 1 thread (ms)", "rand1_p99_ms", None, ".2f"),
                ("start to first byte (s)", "first_byte_s", "first_byte", ".3f"),
                ("copy 100 MB out of loop mount, cold (s)", "loopcopy_s", "loopcopy", ".2f"),
                ("peak RSS of the daemon (MiB)", "peak_rss_mib", None, ".0f"),
                ("kernel readahead of the mount (KiB)", "readahead_kb", None, "")]
        for label, key, rk, spec in rows:
            cells = [(fmt(s.get(key), spec) if spec else str(s.get(key)))
                     + (f" ({s[rng]})" if (rng := key.split("_")[0] + "_range") in s
                        and key.endswith(("mibps", "iops")) and not key.startswith("loop") else "")
                     for s in summ.values()]
            r1 = fmt(rp.get(rk), ".2f") + "×" if rk and rp else ""
            r2 = fmt(ri.get(rk), ".2f") + "×" if rk and ri else ""
            L.append(f"| {label} | " + " | ".join(cells) + f" | {r1} | {r2} |")
        if h.get("storage_mibps"):
            ib = summ.get("imagebackup", {}).get("seq_mibps")
            six = f"; 6 × imagebackup would be {6 * ib:.0f} MiB/s" if ib else ""
            L.append(f"| (storage ceiling) the image file itself, cold, no FUSE (MiB/s) | "
                     f"{h['storage_mibps']:.0f} ({h['storage_range']}){six} |")
        L.append("\nRatios are speed ratios (>1: imagefs faster; times are inverted). "
                 f"Medians of {max(s['rounds'] for s in summ.values())} rounds "
                 "(min-max over the rounds in brackets).\n")
    for name, why in res.get("unavailable", {}).items():
        L.append(f"- **{name}** unavailable: {why}")
    for name, errs in h.get("errors", {}).items():
        L.append(f"- {name} errors: {'; '.join(errs[:3])}")
    ip = res.get("inprocess")
    if ip:
        L.append("\nIn-process `VirtualPartition.read`, 1 MiB reads, warm page cache (target ≥ 1.5 GB/s): "
                 + ", ".join(f"{k} {v['gbps'] * 1000:.0f} reads/s" if k.startswith("rand4k")
                             else f"{k} {v['gbps']:.2f} GB/s" for k, v in ip.items()))
    tr = res.get("trees")
    if isinstance(tr, dict) and tr:
        L.append("\n| images in tree | mount (s) | ls -lR (s) | total (s) | files listed | peak RSS (MiB) |")
        L.append("|---|---|---|---|---|---|")
        for n, e in tr.items():
            if "skipped" in e or "error" in e:
                L.append(f"| {n} | {e.get('skipped') or e.get('error')} | | | | |")
            else:
                L.append(f"| {n} | {e['mount_s']:.2f} | {e['ls_s']:.2f} | {e['total_s']:.2f} | "
                         f"{e['files_listed']:.0f} | {e['peak_rss_mib']:.0f} |")
    elif tr:
        L.append(f"\nTree series: {tr}")
    mem = res.get("memory")
    if mem:
        if "error" in mem:
            L.append(f"\nMemory with 100 images open: error: {mem['error']}")
        else:
            L.append(f"\nMemory with {mem['images_open']} images open at once (each read through, "
                     f"then 200 random 4 KiB reads): peak RSS {mem['peak_rss_mib']:.0f} MiB, "
                     f"RSS at the end {mem['rss_mib']:.0f} MiB (bound: cache size + 50 MB + "
                     f"indexes; default cache 256 MiB), {mem['seconds']:.1f} s")
    bm = res.get("bitmaps")
    if bm:
        L.append("\n| device (GB) | bitmap (MiB) | in-process probe+open+read (s) | via mount: open + first byte (s) |")
        L.append("|---|---|---|---|")
        for gb, e in bm.items():
            if "skipped" in e:
                L.append(f"| {gb} | skipped | | |")
                continue
            ip_e, mt = e.get("inprocess", {}), e.get("mount", {})
            L.append(f"| {gb} | {e['bitmap_mib']:.2f} | {fmt(ip_e.get('total_s'), '.3f') if 'error' not in ip_e else ip_e['error']} | "
                     f"{fmt(mt.get('first_byte_s'), '.3f') if mt and 'error' not in mt else (mt.get('error', 'n/a') if mt else 'n/a')} |")
    nt = res.get("ntfs")
    if nt:
        L.append("\n" + ntfs_table(nt))
    cd = res.get("codecs")
    if cd:
        L.append("\nCompressed variants (bench/codecs_bench.py):\n")
        if cd.get("rc"):
            L.append(f"`{cd['cmd']}` failed (exit {cd['rc']}):\n\n```\n"
                     + cd.get("stderr", "").strip()[-1500:] + "\n```")
        elif "stdout" in cd:
            L.append("```\n" + cd["stdout"].strip() + "\n```")
        else:
            L.append(str(cd))
    if res.get("codecs_mount"):
        L.append("\n" + codecs_mount.table(res["codecs_mount"]))
    return "\n".join(L) + "\n"


def ntfs_table(nt: dict) -> str:
    """The ntfsclone figures as a small Markdown table (or the reason they are missing)."""
    if "unavailable" in nt:
        return f"ntfsclone: unavailable: {nt['unavailable']}"
    rows = [f"ntfsclone image {nt.get('image_mib', 0):.0f} MiB "
            "(target: first build ≥ 0.8 × the speed of cat, reload < 0.1 s)\n",
            "| step | seconds | vs `cat image > /dev/null` |", "|---|---|---|",
            f"| cat image > /dev/null (cold) | {fmt(nt.get('cat_s'), '.3f')} | 1.00× |"]
    cat = nt.get("cat_s")
    for key, label in (("build_s", "in-process open, index build (cold)"),
                       ("reload_s", "in-process open, index reload (cold)")):
        if key in nt:
            rows.append(f"| {label} | {fmt(nt[key], '.3f')} | "
                        f"{fmt(cat / nt[key] if cat and nt[key] else None, '.2f')}× |")
    for key, label in (("mount_build", "mount + first byte, index build"),
                       ("mount_reload", "mount + first byte, index reload")):
        e = nt.get(key)
        if isinstance(e, dict):
            rows.append(f"| {label} | {fmt(e.get('first_byte_s'), '.3f')} (+ mount {fmt(e.get('mount_s'), '.2f')}) | |")
    for key in ("inprocess_error", "mount_error"):
        if key in nt:
            rows.append(f"\n{key}: {nt[key]}")
    return "\n".join(rows)


# --------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="imagefs vs passthrough vs imagebackup, side by side")
    ap.add_argument("--size-gb", type=float, default=2.0, help="file system size (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per figure (>= 3 for medians)")
    ap.add_argument("--quick", action="store_true",
                    help="1.1 GiB fixture, shorter limits, trees up to 1,000, bitmaps up to 1 TB")
    ap.add_argument("--only", default="",
                    help="comma list of sections: h2h,inprocess,trees,memory,bitmaps,ntfs,codecs,"
                         "codecs-mount")
    ap.add_argument("--no-imagebackup", action="store_true", help="skip the vpartclone contender")
    ap.add_argument("--no-core", action="store_true",
                    help="skip the core-fuse contenders (imagefs's reader behind passthrough.py)")
    ap.add_argument("--imagefs-options", default=None, help="extra -o options for imagefs")
    ap.add_argument("--contenders", default="",
                    help="comma list to keep: passthrough,core-fuse,core-fuse-nocache,imagefs,"
                         "imagebackup (default: all available)")
    ap.add_argument("--readahead-kb", type=int, default=0,
                    help="set every mount's bdi read_ahead_kb to this (all contenders alike)")
    ap.add_argument("--budget-min", type=float, default=14.0, help="wall-clock budget")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = check_requirements()
    if missing:
        print("bench/run.py needs:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    budget = Budget(args.budget_min * 60)
    sections = set(filter(None, args.only.split(","))) or {
        "h2h", "inprocess", "trees", "memory", "bitmaps", "ntfs", "codecs", "codecs-mount"}
    quick = args.quick
    rounds = max(1, args.rounds)
    cmd = "sudo " + " ".join([sys.executable, "bench/run.py"] + (argv if argv is not None else sys.argv[1:]))
    res: dict = {"command": cmd, "machine": machine_info(), "unavailable": {}}
    work = bench_tempdir("run-")
    ct.compile_bytecode()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = BENCH_DIR / "results"
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        if quick:
            fx = fixtures.ext4_image(int(1.1 * GiB) // MiB * MiB, name="ext4-inproc")
        else:
            size = int(args.size_gb * GiB) // MiB * MiB
            fx = fixtures.ext4_image(size, name=f"ext4-{size // MiB}m")
        res["fixture"] = {"size_gib": fx.meta["raw_bytes"] / GiB, "files": fx.meta["files"],
                          "image_mib": fx.image.stat().st_size / MiB, "image": str(fx.image)}
        prewarm_host([fx.image, fx.raw])
        ok_fs, why_fs = ct.imagefs_available()
        if not ok_fs:
            res["unavailable"]["imagefs"] = why_fs
        # imagefs reads a directory holding a hard link of the image: the
        # mount form users run, with the name the catalog derives from it.
        src = work / "src"
        src.mkdir()
        os.link(fx.image, src / fx.image.name)
        cs = [ct.passthrough(fx.image, fx.raw)]
        if not args.no_core:
            cs += [ct.core_fuse(fx.image), ct.core_fuse(fx.image, 0)]
        if ok_fs:
            cs.append(ct.imagefs(src, fx.image.name, args.imagefs_options))
        if not args.no_imagebackup:
            ok_ib, why_ib = ct.ensure_imagebackup()
            if ok_ib:
                cs.append(ct.vpartclone(fx.image))
            else:
                res["unavailable"]["imagebackup"] = why_ib
        cfg = {"seq_time": 8.0 if quick else 20.0, "rand_reads": 2000 if quick else 4000,
               "rand_time": 3.0 if quick else 5.0, "readahead_kb": args.readahead_kb}
        if args.contenders:
            keep = set(args.contenders.split(","))
            cs = [c for c in cs if c.name in keep]
        if "h2h" in sections:
            res["head_to_head"] = head_to_head(cs, rounds, cfg, work, budget, fx.image)
            res["ratio_passthrough"] = ratios(res["head_to_head"]["summary"], "imagefs", "passthrough")
            res["ratio_imagebackup"] = ratios(res["head_to_head"]["summary"], "imagefs", "imagebackup")
        if "inprocess" in sections:
            res["inprocess"] = inprocess_series(fx.image, rounds)
        opts = args.imagefs_options
        if "trees" in sections:
            res["trees"] = (tree_series([10, 100, 1000] if quick else [10, 100, 1000, 10000],
                                        rounds, work, opts, budget)
                            if ok_fs else {"unavailable": why_fs})
        if "memory" in sections and ok_fs and budget.left() > 60:
            try:
                res["memory"] = memory_open_images(100, work, opts)
            except Exception as exc:
                res["memory"] = {"error": str(exc)}
            log(f"memory: {res['memory']}")
        if "bitmaps" in sections:
            res["bitmaps"] = bitmap_series([1, 16, 256, 1024] if quick else [1, 16, 256, 1024, 4096],
                                           work, ok_fs, opts, budget)
        if "ntfs" in sections and budget.left() > 60:
            res["ntfs"] = ntfs_series(quick, work, ok_fs, opts, rounds)
        if "codecs" in sections and budget.left() > 60:
            res["codecs"] = codecs_series(quick, budget)
        if "codecs-mount" in sections and ok_fs and budget.left() > 120:
            hot = res.get("head_to_head", {}).get("summary", {}).get("passthrough", {})
            res["codecs_mount"] = codecs_mount.series(
                fx.image, work, opts, rounds, cfg["seq_time"], budget.left,
                hot.get("seqhot_mibps"), hot.get("seqdirect_mibps"))
    except Exception:
        res["fatal"] = traceback.format_exc()
        log(res["fatal"])
    finally:
        for d in work.glob("mnt-*"):
            unmount(d)
        unmount(work / "loopmnt", fuse=False)
        from common import is_mounted
        if not any(is_mounted(d) for d in work.iterdir() if d.is_dir()):
            shutil.rmtree(work, ignore_errors=True)   # never recurse into a live mount
        else:
            log(f"left {work} in place: something is still mounted under it")
        res["elapsed_s"] = budget.elapsed()
        res["loadavg_at_end"] = os.getloadavg()[0]
        (outdir / f"{stamp}.json").write_text(json.dumps(res, indent=1, default=str))
        text = report(res)
        (outdir / f"{stamp}.md").write_text(text)
        print(text)
        log(f"results: {outdir / stamp}.json / .md")
    return 1 if "fatal" in res else 0


if __name__ == "__main__":
    sys.exit(main())
