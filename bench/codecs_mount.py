"""Compressed images through the mount, against the codec's own tool.

bench/codecs_bench.py measures the codec layer in process; what a user gets
is the virtual partition read through FUSE.  For each codec the bench's
partclone image is compressed the way Clonezilla does (``tool -c``, cached
under BENCH_DIR/compressed), indexed once by an untimed mount, and then,
round by round with the compressed file in the page cache:

* the tool decompresses it to /dev/null (image bytes per second);
* a fresh imagefs mount reads its virtual partition in 1 MiB reads
  (partition bytes per second; about 10% of them are unstored blocks,
  zeros that cost no decoding).

docs/design.md's target: imagefs >= 0.8 x the slower of the tool and the
passthrough ceiling (the head-to-head's hot-source passthrough figure).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import contenders as ct
import measures as ms
from common import BENCH_DIR, MiB, have, log, median

#: name -> (compress argv, decompress argv, suffix): Clonezilla's usual ones.
CODECS = {
    "zstd": (["zstd", "-q", "-T0", "-3", "-c"], ["zstd", "-q", "-dc"], ".zst"),
    "gzip": (["pigz", "-c", "--fast"], ["pigz", "-dc"], ".gz"),
    "lz4": (["lz4", "-q", "-1", "-c"], ["lz4", "-q", "-dc"], ".lz4"),
}


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
           budget_left, ceiling_mibps: float | None) -> dict:
    """Tool vs mount for every codec in CODECS whose tools are installed."""
    out: dict = {"ceiling_mibps": ceiling_mibps}
    for name, (comp, dec, _) in CODECS.items():
        if not (have(comp[0]) and have(dec[0])):
            out[name] = {"skipped": f"{comp[0]} not installed"}
            continue
        if budget_left() < 120:
            out[name] = {"skipped": "time budget used up"}
            continue
        try:
            path = compressed_copy(image, name)
            idx = work / f"codec-index-{name}"
            opts = ",".join(filter(None, [options, f"index_dir={idx}"]))
            c = ct.imagefs(path.parent, image.name, opts)
            mnt = work / f"mnt-codec-{name}"
            m = ct.start(c, mnt, work)            # untimed: builds and saves the index
            try:
                with open(c.path(mnt), "rb") as f:
                    f.seek(1 << 30)
                    f.read(4096)
            finally:
                ct.stop(m)
            tool, mount = [], []
            for _ in range(rounds):
                _warm(path)
                tool.append(_tool_mibps(dec, path, image.stat().st_size))
                _warm(path)
                m = ct.start(c, mnt, work)
                try:
                    mount.append(ms.sequential_hot(c.path(mnt), time_limit)["mibps"])
                finally:
                    ct.stop(m)
            entry = {"tool": " ".join(dec), "tool_mibps": median(tool),
                     "mount_mibps": median(mount), "mount_range": f"{min(mount):.0f}-{max(mount):.0f}",
                     "compressed_mib": path.stat().st_size / MiB}
            bound = min(x for x in (entry["tool_mibps"], ceiling_mibps) if x)
            entry["ratio"] = entry["mount_mibps"] / bound
            out[name] = entry
            log(f"codec through the mount {name}: {entry}")
        except Exception as exc:  # noqa: BLE001 - one codec failing must not stop the bench
            out[name] = {"error": str(exc)}
            log(f"codec through the mount {name} FAILED: {exc}")
    return out


def table(res: dict) -> str:
    """Markdown for the report."""
    ceiling = res.get("ceiling_mibps")
    lines = ["Compressed images through the mount (image in the page cache, fresh mount, "
             "1 MiB reads; target ≥ 0.8 × the slower of the tool and the passthrough ceiling"
             + (f", {ceiling:.0f} MiB/s in this run" if ceiling else "") + "):\n",
             "| codec | compressed (MiB) | tool to /dev/null (MiB/s) | imagefs mount (MiB/s) "
             "| imagefs / min(tool, ceiling) |", "|---|---|---|---|---|"]
    for name in CODECS:
        e = res.get(name)
        if not isinstance(e, dict):
            continue
        if "tool_mibps" not in e:
            lines.append(f"| {name} | {e.get('skipped') or e.get('error')} | | | |")
            continue
        lines.append(f"| {name} | {e['compressed_mib']:.0f} | {e['tool_mibps']:.0f} (`{e['tool']}`) | "
                     f"{e['mount_mibps']:.0f} ({e['mount_range']}) | {e['ratio']:.2f}× |")
    return "\n".join(lines)
