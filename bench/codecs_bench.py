#!/usr/bin/env python3
"""Codec layer benchmark: imagefs's decompressed sources against the tools.

For each codec, on the same compressed file:
  * the tool's own decompression to /dev/null (``zstd -dc``, ``pigz -dc``...)
  * imagefs: index build time, index size as % of the compressed image,
    sequential read (1 MiB reads through ``read_at``) after indexing,
    random 4 KiB read latency p50/p99 on a fresh open with the index loaded
    (a 64 MiB cache, so most reads miss and decode one span).
Prints a markdown table.  Input: ~256 MiB of real file-system content
(``tar`` of /usr) or ``--input FILE``; everything lives in ``--workdir``.

    .venv/bin/python bench/codecs_bench.py [--size-mb 256] [--codecs zstd,gzip]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Nothing is written into the source tree: no bytecode caches from this
# script, the bench modules, imagefs or the daemons it starts.
sys.dont_write_bytecode = True
os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagefs.services.cache import BlockCache  # noqa: E402
from imagefs.codecs import build_index, open_decompressed  # noqa: E402
from imagefs.services.indexstore import IndexStore  # noqa: E402
from imagefs.io import FileSource  # noqa: E402

# name -> (compress command (stdin -> stdout), decompress command (file -> stdout))
CODECS = {
    "zstd": (["zstd", "-q", "-T0", "-3", "-c"], ["zstd", "-q", "-dc"]),
    "pzstd": (["pzstd", "-q", "-3", "-c"], ["zstd", "-q", "-dc"]),
    "gzip": (["pigz", "-c", "--fast", "-b", "1024", "--rsyncable"], ["pigz", "-dc"]),
    "lz4": (["lz4", "-q", "-1", "-c"], ["lz4", "-q", "-dc"]),
    "lzop": (["lzop", "-3", "-c"], ["lzop", "-dc"]),
    "bzip2": (["pbzip2", "-3", "-c"], ["pbzip2", "-dc"]),
    "xz": (["xz", "-T0", "-3", "-c"], ["xz", "-T0", "-dc"]),
    "lzip": (["plzip", "-3", "-c"], ["plzip", "-dc"]),
}


def make_input(path: Path, size: int) -> None:
    """Real file-system content: a tar of /usr, cut to ``size`` bytes."""
    with open(path, "wb") as out:
        tar = subprocess.Popen(["tar", "cf", "-", "--ignore-failed-read", "/usr"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        left = size
        while left > 0:
            chunk = tar.stdout.read(min(left, 1 << 20))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
        tar.kill()
        tar.wait()
        if left > 0:   # a small /usr: pad with zeros like free blocks
            out.write(bytes(left))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def tool_seconds(cmd: list[str], path: Path) -> float:
    with open(os.devnull, "wb") as null:
        start = time.perf_counter()
        subprocess.run(cmd + [str(path)], stdout=null, check=True)
        return time.perf_counter() - start


def run_codec(name: str, raw: Path, work: Path, rounds: int) -> dict:
    comp_cmd, dec_cmd = CODECS[name]
    comp = work / f"input.{name}"
    if not comp.exists():
        with open(raw, "rb") as fin, open(comp, "wb") as fout:
            subprocess.run(comp_cmd, stdin=fin, stdout=fout, check=True)
    size = raw.stat().st_size
    csize = comp.stat().st_size
    tool = min(tool_seconds(dec_cmd, comp) for _ in range(rounds))

    store_dir = Path(tempfile.mkdtemp(prefix="idx-", dir=work))
    store = IndexStore(str(store_dir))
    build_s, stream = timed(lambda: build_index(FileSource(comp), index_store=store,
                                                key_paths=[str(comp)], progress=False))
    state = stream.index_state()
    stream.close()
    index_bytes = sum(p.stat().st_size for p in store_dir.iterdir())

    seq = []
    for _ in range(rounds):
        s = open_decompressed(FileSource(comp), index_store=store, key_paths=[str(comp)],
                              cache=BlockCache(256 << 20), progress=False)
        def read_all() -> int:
            n = 0
            off = 0
            while True:
                data = s.read_at(off, 1 << 20)
                if not data:
                    return n
                n += len(data)
                off += len(data)
        t, n = timed(read_all)
        assert n == size, (n, size)
        seq.append(t)
        s.close()

    s = open_decompressed(FileSource(comp), index_store=store, key_paths=[str(comp)],
                          cache=BlockCache(64 << 20), progress=False)
    rnd = random.Random(1)
    lat = []
    decoded_before = s.decoded_bytes
    for _ in range(200):
        off = rnd.randrange(size - 4096)
        t, _ = timed(lambda: s.read_at(off, 4096))
        lat.append(t)
    per_read = (s.decoded_bytes - decoded_before) / len(lat)
    s.close()
    shutil.rmtree(store_dir, ignore_errors=True)
    lat.sort()
    best_seq = min(seq)
    return {
        "codec": name, "ratio": csize / size, "tool_mbs": size / tool / 1e6,
        "seq_mbs": size / best_seq / 1e6, "seq_vs_tool": tool / best_seq,
        "build_s": build_s, "build_mbs": size / build_s / 1e6,
        "index_pct": 100.0 * index_bytes / csize,
        "p50_ms": 1e3 * lat[len(lat) // 2], "p99_ms": 1e3 * lat[int(len(lat) * 0.99) - 1],
        "decoded_per_read": per_read, "state": state,
        "tool": " ".join(dec_cmd),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--input", type=Path, help="use this file instead of a tar of /usr")
    ap.add_argument("--codecs", default="zstd,pzstd,gzip,lz4,lzop,bzip2,xz,lzip")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/imagefs-codecs-bench"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    raw = args.input or args.workdir / f"input-{args.size_mb}M.raw"
    if not raw.exists():
        print(f"making {raw} ...", file=sys.stderr)
        make_input(raw, args.size_mb << 20)
    rows = []
    for name in args.codecs.split(","):
        print(f"{name} ...", file=sys.stderr)
        rows.append(run_codec(name, raw, args.workdir, args.rounds))
    print(f"\ninput: {raw} ({raw.stat().st_size / 1e6:.0f} MB), {os.cpu_count()} CPUs\n")
    print("| codec | ratio | tool -dc MB/s | imagefs seq MB/s | seq / tool | index build s "
          "(MB/s) | index % of image | 4 KiB p50 ms | p99 ms | decoded/read MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['codec']} | {r['ratio']:.2f} | {r['tool_mbs']:.0f} ({r['tool']}) | "
              f"{r['seq_mbs']:.0f} | {r['seq_vs_tool']:.2f} | {r['build_s']:.1f} "
              f"({r['build_mbs']:.0f}) | {r['index_pct']:.2f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['decoded_per_read'] / 2**20:.2f} |")
    print()
    for r in rows:
        print(f"- {r['codec']}: {r['state']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
