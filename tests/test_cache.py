"""The shared block cache: one load per key, bounded in bytes, failures not remembered."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from imagefs.services.cache import BlockCache


def test_cache_loads_once_per_key_under_contention():
    cache = BlockCache(1 << 20)
    calls = []
    gate = threading.Event()

    def loader():
        calls.append(1)
        gate.wait(10)
        return b"v" * 100

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get_or_load, "k", loader) for _ in range(8)]
        # Wait (bounded) until all eight threads are inside get_or_load.
        for _ in range(10_000):
            if cache.misses >= 8:
                break
            threading.Event().wait(0.001)
        assert cache.misses == 8
        gate.set()
        assert all(f.result() == b"v" * 100 for f in futures)
    assert len(calls) == 1


def test_cache_is_bounded_in_bytes_and_lru():
    cache = BlockCache(1000)
    for i in range(20):
        cache.get_or_load(i, lambda i=i: bytes([i]) * 100)
        assert cache.size <= 1000
    assert cache.get(19) is not None and cache.get(0) is None


def test_cache_does_not_remember_failures():
    cache = BlockCache(1000)
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("transient")
        return b"ok"

    with pytest.raises(OSError):
        cache.get_or_load("k", flaky)
    assert cache.get_or_load("k", flaky) == b"ok"


def test_add_never_replaces_and_never_waits_for_a_load():
    cache = BlockCache(100)
    assert cache.add("a", b"first")
    assert not cache.add("a", b"other") and cache.get("a") == b"first"
    loading, release = threading.Event(), threading.Event()

    def slow() -> bytes:
        loading.set()
        release.wait(30)
        return b"loaded"

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(cache.get_or_load, "b", slow)
        assert loading.wait(30)
        assert not cache.add("b", b"offered")   # returns at once: the load owns the key
        release.set()
        assert future.result() == b"loaded"
    assert cache.get("b") == b"loaded"
    assert not cache.add("big", bytes(101))    # larger than the cache: not kept


def test_views_are_charged_by_the_object_they_keep_alive():
    """A cached view pins its whole segment: the cache counts the segment,
    once for all its views, so hot pieces of many segments stay in budget."""
    segments = [bytes(4096) for _ in range(8)]
    cache = BlockCache(3 * 4096)
    for n, seg in enumerate(segments[:2]):
        for i in range(4):
            cache.add((n, i), memoryview(seg)[i * 1024:(i + 1) * 1024])
    assert cache.size == 2 * 4096               # two segments, eight views
    # One hot view out of each of many segments: bounded by what they pin.
    for n, seg in enumerate(segments[2:], start=2):
        cache.add((n, 0), memoryview(seg)[:1024])
        assert cache.size <= 3 * 4096
    kept = {id(v.obj) for k in [(n, i) for n in range(8) for i in range(4)]
            if (v := cache.get(k)) is not None}
    assert len(kept) <= 3
    for n in range(8):
        for i in range(4):
            cache.discard((n, i))
    assert cache.size == 0


def test_a_view_bigger_than_the_budget_through_its_object_is_not_kept():
    cache = BlockCache(2048)
    assert not cache.add("k", memoryview(bytes(4096))[:100])
    assert cache.size == 0 and cache.get("k") is None
    assert cache.add("b", b"x" * 100) and cache.size == 100
