"""Helpers shared by the reader tests: read a whole virtual partition and
compare it with ground truth in several ways."""

from __future__ import annotations

import hashlib
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from imagefs.blockio import VirtualPartition
from imagefs.services.cache import BlockCache
from imagefs.blockio.opener import OpenContext, open_image_header


class CountingSource:
    """A ByteSource wrapper that counts the reads and bytes asked of it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0
        self.bytes = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.inner.size

    def cheap_size(self):
        return self.inner.cheap_size()

    def backing_files(self):
        return self.inner.backing_files()

    def read_at(self, offset: int, size: int) -> bytes:
        data = self.inner.read_at(offset, size)
        with self._lock:
            self.calls += 1
            self.bytes += len(data)
        return data

    def close(self) -> None:
        self.inner.close()


def open_vp(path: Path | str, cache: BlockCache | None = None,
            ctx: OpenContext | None = None) -> VirtualPartition:
    header, _ = open_image_header(str(path), ctx)
    return VirtualPartition(header.open(ctx.index_store if ctx else None), cache)


def vp_sha256(vp: VirtualPartition, step: int = 1 << 20) -> str:
    h = hashlib.sha256()
    for off in range(0, vp.size, step):
        h.update(vp.read(off, step))
    return h.hexdigest()


def random_spans(size: int, count: int, seed: int, boundaries: list[int] = ()) -> list[tuple[int, int]]:
    """Random (offset, length) pairs, half of them straddling given boundaries."""
    rng = random.Random(seed)
    spans = []
    for i in range(count):
        if boundaries and i % 2:
            b = rng.choice(boundaries)
            off = max(0, b - rng.randrange(1, 9000))
        else:
            off = rng.randrange(0, size)
        length = rng.choice((1, 17, 512, 4095, 4096, 4097, 65536 + 13, 300_000, 1 << 20))
        spans.append((off, length))
    return spans


def check_random_reads(vp: VirtualPartition, truth: bytes, spans: list[tuple[int, int]]) -> None:
    for off, length in spans:
        got = vp.read(off, length)
        want = truth[off:off + length]
        assert got == want, f"mismatch at offset {off} length {length}"


def check_both_readers(image, truth: bytes,
                       spans_for: Callable[[VirtualPartition], list[tuple[int, int]]]) -> None:
    """``spans_for(vp)`` read through a reader without and one with a BlockCache."""
    for vp in (VirtualPartition(image), VirtualPartition(image, BlockCache(4 << 20))):
        check_random_reads(vp, truth, spans_for(vp))


def check_threads(vp: VirtualPartition, truth: bytes, seed: int, threads: int = 8,
                  per_thread: int = 60) -> None:
    def worker(n: int) -> int:
        spans = random_spans(vp.size, per_thread, seed * 100 + n)
        check_random_reads(vp, truth, spans)
        return len(spans)

    with ThreadPoolExecutor(threads) as pool:
        assert sum(pool.map(worker, range(threads))) == threads * per_thread


def run_in_threads(work: Callable[[int], object], count: int = 8, timeout: float | None = 300,
                   while_running: Callable[[], object] | None = None) -> None:
    """Run ``work(0) .. work(count - 1)`` in threads at once.

    ``while_running`` is called over and over until they all end (to race
    them); fails if a thread hangs past ``timeout`` or any raised.
    """
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    if while_running is not None:
        while any(t.is_alive() for t in threads):
            while_running()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "reader threads hung"
    assert not errors, errors[0]
