"""Compressed images through the mount, against the codec's own tool.

bench/codecs_bench.py measures the codec layer in process; what a user gets
is the virtual partition read through FUSE.  For each codec the bench's
partclone image is compressed the way Clonezilla does (``tool -c``, cached
under BENCH_DIR/compressed), indexed once by an untimed mount, and then,
round by round with the compressed file in the page cache:

* the tool decompresses it to /dev/null (image bytes per second);
* a fresh imagefs mount reads its virtual partition in 1 MiB reads
  (partition bytes per second; about 10% of them are unstored blocks,
  zeros that cost no decoding);
* another fresh mount reads it with O_DIRECT 1 MiB reads: the daemon's
  own speed, without the kernel filling new page-cache pages (on a VM
  with free page reporting that fill alone swings from run to run; see
  measures.sequential_direct).

docs/design.md's target: imagefs >= 0.8 x the slower of the tool and the
passthrough ceiling (the head-to-head's hot-source passthrough figure).

Also per codec (issue 12): a fresh mount of the unindexed image, timed
from the mount command to the first byte of the virtual partition and to
its last 4 KiB (which waits for the background index build), against the
tool's time to /dev/null (the last stored block: the partition's tail is
free space); and, once every image is indexed, one mount of the zstd,
pzstd, gzip, lz4 and lzop images read by 16 threads of random 4 KiB preads
at once (p50/p99 per codec), then the same over every codec's image when
slower ones (xz, lzip, bzip2) were built too.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import contenders as ct
import measures as ms
from common import (BENCH_DIR, MiB, cpu_ticks, have, log, median, rss_anon_mib, steal_share,
                    wait_until)

#: name -> (compress argv, decompress argv, suffix): Clonezilla's usual ones.
CODECS = {
    "zstd": (["zstd", "-q", "-T0", "-3", "-c"], ["zstd", "-q", "-dc"], ".zst"),
    "pzstd": (["pzstd", "-q", "-3", "-c"], ["zstd", "-q", "-dc"], ".zst"),
    "gzip": (["pigz", "-c", "--fast"], ["pigz", "-dc"], ".gz"),
    "lz4": (["lz4", "-q", "-1", "-c"], ["lz4", "-q", "-dc"], ".lz4"),
    "lzop": (["lzop", "-c"], ["lzop", "-dc"], ".lzo"),
    "bzip2": (["pbzip2", "-c"], ["pbzip2", "-dc"], ".bz2"),
    "xz": (["xz", "-T0", "-3", "-c"], ["xz", "-T0", "-dc"], ".xz"),
    "lzip": (["plzip", "-c"], ["plzip", "-dc"], ".lz"),
}
#: Codecs whose index build is timed every round (the others once: their
#: builds take tens of seconds, or none at all).
TIMED_BUILDS = {"zstd", "pzstd", "gzip", "lz4"}
#: Issue 12's p99 target (< 100 ms) names these codecs; a random read of
#: xz or lzip decodes megabytes of LZMA and, in the same mount, sets every
#: codec's p99 (0.5-2 s on 2 CPUs): so the stage runs over these first, then
#: over every codec when slower ones are present.
FAST_RANDOM = ("zstd", "pzstd", "gzip", "lz4", "lzop")
#: The random-read stage: threads and seconds.
RANDOM_THREADS = 16
RANDOM_SECONDS = 10.0
#: Seconds the mount is left alone after the stage before its memory is read
#: again: the heap keeper looks once a second and trims on a quiet look.
QUIET_SECONDS = 3.0


def compressed_copy(image: Path, name: str) -> Path:
    """``image`` compressed with codec ``name``, built once and reused."""
    comp, _, suffix = CODECS[name]
    folder = BENCH_DIR / "compressed" / name
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (image.name + suffix)
    if out.exists() and out.stat().st_mtime >= image.stat().st_mtime:
        return out
    tmp = out.with_name(out.name + ".part")
    with open(image, "rb") as fin, open(tmp, "wb") as fout:
        subprocess.run(comp, stdin=fin, stdout=fout, check=True, timeout=900)
    tmp.rename(out)
    return out


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def _tool_mibps(cmd: list[str], path: Path, out_bytes: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd + [str(path)], stdout=subprocess.DEVNULL, check=True, timeout=900)
    return out_bytes / (time.perf_counter() - t0) / MiB


def series(image: Path, work: Path, options: str | None, rounds: int, time_limit: float,
           budget_left, ceiling_mibps: float | None,
           direct_ceiling_mibps: float | None = None) -> dict:
    """Tool vs mount for every codec in CODECS whose tools are installed.

    ``ceiling_mibps``/``direct_ceiling_mibps``: the passthrough's buffered
    and O_DIRECT figures of the same run (see measures.sequential_direct).
    """
    out: dict = {"ceiling_mibps": ceiling_mibps, "direct_ceiling_mibps": direct_ceiling_mibps}
    last_offset = last_stored_offset(image)
    for name, (comp, dec, _) in CODECS.items():
        if not (have(comp[0]) and have(dec[0])):
            out[name] = {"skipped": f"{comp[0]} not installed"}
            continue
        if budget_left() < 120:
            out[name] = {"skipped": "time budget used up"}
            continue
        try:
            path = compressed_copy(image, name)
            idx = work / "codec-index" / name
            opts = ",".join(filter(None, [options, f"index_dir={idx}"]))
            c = ct.imagefs(path.parent, image.name, opts)
            mnt = work / f"mnt-codec-{name}"
            tool, mount, direct, first, last = [], [], [], [], []
            for r in range(rounds):
                _warm(path)
                tool.append(_tool_mibps(dec, path, image.stat().st_size))
                if r == 0 or name in TIMED_BUILDS:
                    shutil.rmtree(idx, ignore_errors=True)   # the next mount builds it
                    _warm(path)
                    f_s, l_s = _fresh_mount_times(c, mnt, work, last_offset)
                    first.append(f_s)
                    last.append(l_s)
                _warm(path)
                # A fresh mount each: no pieces left in its cache from the other.
                mount.append(_on_fresh_mount(c, mnt, work, ms.sequential_hot, time_limit))
                direct.append(_on_fresh_mount(c, mnt, work, ms.sequential_direct, time_limit))
            tool_s = image.stat().st_size / MiB / median(tool)
            entry = {"tool": " ".join(dec), "tool_mibps": median(tool),
                     "mount_mibps": median(mount), "mount_range": f"{min(mount):.0f}-{max(mount):.0f}",
                     "direct_mibps": median(direct),
                     "direct_range": f"{min(direct):.0f}-{max(direct):.0f}",
                     "compressed_mib": path.stat().st_size / MiB,
                     "first_byte_s": median(first), "last_byte_s": median(last),
                     "tool_s": tool_s, "last_vs_tool": median(last) / tool_s,
                     "path": str(path)}
            bound = min(x for x in (entry["tool_mibps"], ceiling_mibps) if x)
            entry["ratio"] = entry["mount_mibps"] / bound
            dbound = min(x for x in (entry["tool_mibps"], direct_ceiling_mibps) if x)
            entry["direct_ratio"] = entry["direct_mibps"] / dbound
            out[name] = entry
            log(f"codec through the mount {name}: {entry}")
        except Exception as exc:  # noqa: BLE001 - one codec failing must not stop the bench
            out[name] = {"error": str(exc)}
            log(f"codec through the mount {name} FAILED: {exc}")
    indexed = [n for n in CODECS if isinstance(out.get(n), dict) and "path" in out[n]]
    stages = [("random", [n for n in indexed if n in FAST_RANDOM])]
    if any(n not in FAST_RANDOM for n in indexed):
        stages.append(("random_all", indexed))
    for key, names in stages:
        if budget_left() <= 60 or not names:
            continue
        try:
            out[key] = random_stage(image, work, options, out, names)
        except Exception as exc:  # noqa: BLE001 - reported, the rest stands
            out[key] = {"error": str(exc)}
            log(f"random stage ({key}) FAILED: {exc}")
    return out


def _on_fresh_mount(c: ct.Contender, mnt: Path, work: Path,
                    measure: Callable[[Path, float], dict], time_limit: float) -> float:
    """MiB/s of ``measure`` over ``c``'s file on a mount made for it alone."""
    m = ct.start(c, mnt, work)
    try:
        return measure(c.path(mnt), time_limit)["mibps"]
    finally:
        ct.stop(m)


def last_stored_offset(image: Path) -> int:
    """The partition offset of the image's last stored block: reading it needs
    the stream decoded to its end (the partition's tail is often free space,
    zeros that need no decoding at all)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from imagefs.formats import probe
    from imagefs.io import FileSource

    header = probe(FileSource(image))
    bitmap = header.open(None).bitmap
    return int(bitmap.select(bitmap.count - 1)) * header.block_size


def _fresh_mount_times(c: ct.Contender, mnt: Path, work: Path,
                       last_offset: int) -> tuple[float, float]:
    """(mount command to first byte, to the last stored block) of an unindexed image.

    The mount then stays until its index is saved (the next mounts load it).
    """
    t0 = time.perf_counter()
    m = ct.start(c, mnt, work)
    try:
        fd = os.open(c.path(mnt), os.O_RDONLY)
        try:
            os.pread(fd, 1, 0)
            first = time.perf_counter() - t0
            os.pread(fd, 4096, last_offset)
            last = time.perf_counter() - t0
            info = c.path(mnt).with_name(c.path(mnt).name + ".info")
            wait_until(lambda: "index built" in info.read_text(), 600, 0.2)
        finally:
            os.close(fd)
    finally:
        ct.stop(m)
    return first, last


def random_stage(image: Path, work: Path, options: str | None, res: dict,
                 names: list[str]) -> dict:
    """One mount of the indexed images of ``names``; 16 threads of random 4 KiB reads."""
    tree = BENCH_DIR / "compressed"           # the same paths: the same index keys
    both = work / "codec-index" / "all"
    both.mkdir(parents=True, exist_ok=True)
    for n in names:
        for f in (work / "codec-index" / n).glob("*.idx"):
            shutil.copy(f, both / f.name)
        _warm(Path(res[n]["path"]))
    opts = ",".join(filter(None, [options, f"index_dir={both}"]))
    c = ct.imagefs(tree, "", opts)
    mnt = work / "mnt-codec-all"
    m = ct.start(c, mnt, work)
    lat: dict[str, list[float]] = {n: [] for n in names}
    lock = threading.Lock()
    try:
        fds = {}
        for n in names:
            vname = Path(res[n]["path"]).name.rsplit(".", 1)[0]
            fds[n] = os.open(mnt / n / vname, os.O_RDONLY)
            os.posix_fadvise(fds[n], 0, 0, os.POSIX_FADV_RANDOM)
        pages = image.stat().st_size // 4096 - 1
        # One read of each image's middle first: it loads the saved index
        # (0.05-1 s, timed by the fresh-mount figures above), which would
        # otherwise be the first reads' latency, not that of reads after
        # indexing.
        t_load = time.perf_counter()
        for fd in fds.values():
            os.pread(fd, 4096, pages // 2 * 4096)
        log(f"random stage: indexes of {len(fds)} images loaded in "
            f"{time.perf_counter() - t_load:.2f} s")
        rss_start = rss_anon_mib(m.pid) if m.pid else None
        ticks = cpu_ticks()
        deadline = time.perf_counter() + RANDOM_SECONDS

        def worker(i: int) -> None:
            rng = random.Random(1000 + i)
            mine: list[tuple[str, float]] = []
            while time.perf_counter() < deadline:
                n = rng.choice(names)
                off = rng.randrange(pages) * 4096
                t = time.perf_counter()
                os.pread(fds[n], 4096, off)
                mine.append((n, time.perf_counter() - t))
            with lock:
                for n, x in mine:
                    lat[n].append(x)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(RANDOM_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        steal = steal_share(ticks, cpu_ticks())
        memory = _daemon_memory(m.pid, rss_start)
        for fd in fds.values():
            os.close(fd)
    finally:
        ct.stop(m)
    codecs: dict = {}
    for n, xs in lat.items():
        xs.sort()
        if xs:
            codecs[n] = {"reads": len(xs), "p50_ms": 1000 * xs[len(xs) // 2],
                         "p99_ms": 1000 * xs[min(len(xs) - 1, int(len(xs) * 0.99))]}
    out = {"codecs": codecs, "steal": steal, "memory": memory}
    log(f"random 4 KiB over all codec images, {RANDOM_THREADS} threads: {out}")
    return out


def _daemon_memory(pid: int | None, start: int | None) -> dict:
    """The daemon's RssAnon (MiB) when the stage began (indexes loaded), as
    it ended, and once it has been quiet for QUIET_SECONDS (the mount gives
    freed heap holes back when quiet: imagefs.services.memtune.HeapKeeper)."""
    if pid is None:
        return {}
    end = rss_anon_mib(pid)
    time.sleep(QUIET_SECONDS)                # the quiet itself is what is measured
    return {"start": start, "end": end, "quiet": rss_anon_mib(pid)}


def table(res: dict) -> str:
    """Markdown for the report."""
    ceiling = res.get("ceiling_mibps")
    dceiling = res.get("direct_ceiling_mibps")
    lines = ["Compressed images through the mount (image in the page cache, fresh mount, "
             "1 MiB reads; target ≥ 0.8 × the slower of the tool and the passthrough ceiling"
             + (f", {ceiling:.0f} MiB/s in this run" if ceiling else "")
             + (f"; O_DIRECT reads, the daemon alone: ceiling {dceiling:.0f} MiB/s" if dceiling
                else "") + "):\n",
             "| codec | compressed (MiB) | tool to /dev/null (MiB/s) | imagefs mount (MiB/s) "
             "| imagefs / min(tool, ceiling) | O_DIRECT (MiB/s) | O_DIRECT / min(tool, ceiling) "
             "| unindexed: first byte (s) | unindexed: last stored block (s) "
             "| tool (s) | last / tool | 16-thread random 4 KiB p50 / p99 (ms), "
             f"{'/'.join(FAST_RANDOM)} | the same, all codecs in one mount |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    stages = {key: res[key] if isinstance(res.get(key), dict) else {}
              for key in ("random", "random_all")}
    rnd, rnd_all = (stages[key].get("codecs", {}) for key in ("random", "random_all"))
    for name in CODECS:
        e = res.get(name)
        if not isinstance(e, dict):
            continue
        if "tool_mibps" not in e:
            lines.append(f"| {name} | {e.get('skipped') or e.get('error')} | | | | | | | | | | | |")
            continue
        rtext = " | ".join(f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}" if r else ""
                           for r in (rnd.get(name, {}), rnd_all.get(name, {})))
        lines.append(f"| {name} | {e['compressed_mib']:.0f} | {e['tool_mibps']:.0f} (`{e['tool']}`) | "
                     f"{e['mount_mibps']:.0f} ({e['mount_range']}) | {e['ratio']:.2f}× | "
                     f"{e['direct_mibps']:.0f} ({e['direct_range']}) | {e['direct_ratio']:.2f}× | "
                     f"{e['first_byte_s']:.3f} | {e['last_byte_s']:.2f} | {e['tool_s']:.2f} | "
                     f"{e['last_vs_tool']:.2f}× | {rtext} |")
    for key, stage in (("", stages["random"]), (" (all codecs)", stages["random_all"])):
        if stage.get("error"):
            lines.append(f"\nrandom stage{key} failed: {stage['error']}")
            continue
        if stage.get("steal") is not None:
            lines.append(f"\nrandom stage{key}: the hypervisor took {100 * stage['steal']:.0f} % "
                         "of the CPUs' time while it ran (steal, /proc/stat)")
        mem = stage.get("memory") or {}
        if mem.get("end") is not None:
            lines.append(f"\nrandom stage{key}: the daemon's RssAnon {mem['start']} MiB with the "
                         f"indexes loaded, {mem['end']} MiB at the end, {mem['quiet']} MiB after "
                         f"{QUIET_SECONDS:.0f} s quiet")
    return "\n".join(lines)
