"""The sequential-reader tracker: which spans a stream's reads decode ahead."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from imagefs.codecs import tuning
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.streaming import StreamTracker
from imagefs.services.cache import BlockCache

MiB = 1 << 20


class _Claims:
    """Stands in for a SpanDecoder: records the spans claimed for prefetch."""

    def __init__(self) -> None:
        self.claimed: list[int] = []

    def claim(self, j: int) -> bool:
        self.claimed.append(j)
        return False                       # nothing is submitted

    def key(self, i: int, k: int) -> tuple[object, ...]:
        return ("test", "sub", i, k)


def test_a_read_behind_the_front_does_not_claim_the_span_the_front_entered() -> None:
    # Spans of 4 MiB.  FUSE threads make one stream's requests overtake each
    # other: the read of [7, 8) MiB arrives after the one of [8, 9) MiB,
    # which entered span 2 (from 8 MiB) and took its first piece.
    index = SeekIndex(64 * MiB, [n * 4 * MiB for n in range(17)], [None] * 16)
    claims = _Claims()
    tracker = StreamTracker(claims, BlockCache(256 * MiB))   # type: ignore[arg-type]
    for offset in range(0, 7 * MiB, MiB):                     # the stream so far
        tracker.follow(offset, offset + MiB)
    tracker.follow(8 * MiB, 9 * MiB)                          # the front, one ahead
    streaming, _run = tracker.follow(7 * MiB, 8 * MiB)        # the late one
    assert streaming
    tracker.prefetch_after(index, 8 * MiB)
    # Span 2 holds the front's read: only the spans after it are decoded ahead
    # (claiming span 2 again decoded it twice, its first pieces being freed).
    assert claims.claimed and min(claims.claimed) == 3


class _Spans:
    """Stands in for a SpanDecoder whose spans decode only when the test says so."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.released: set[int] = set()
        self.unclaimed: list[int] = []

    def claim(self, j: int) -> bool:
        return True

    def unclaim(self, j: int) -> None:
        self.unclaimed.append(j)

    def key(self, i: int, k: int) -> tuple[object, ...]:
        return ("test", "sub", i, k)

    def prefetch_span(self, index: SeekIndex, j: int) -> None:
        with self.cond:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append(j)
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: j in self.released, timeout=30)
            self.running -= 1

    def release(self, j: int) -> None:
        with self.cond:
            self.released.add(j)
            self.cond.notify_all()

    def wait_started(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.started) >= count, timeout=30)


def _stream_of_four_spans(fast: bool) -> tuple[StreamTracker, _Spans, SeekIndex]:
    index = SeekIndex(64 * MiB, [n * 8 * MiB for n in range(9)], [None] * 8)
    spans = _Spans()
    tracker = StreamTracker(spans, BlockCache(256 * MiB), fast)   # type: ignore[arg-type]
    tracker.follow(0, MiB)
    return tracker, spans, index


@pytest.fixture
def two_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(tuning, "PREFETCH_DEPTH", 2)
    tuning._prefetch.replace()
    yield
    tuning._prefetch.replace()


def test_a_fast_decoder_stream_decodes_one_span_at_a_time_in_order(two_workers: None) -> None:
    # zstd, lz4, lzop: a second decoder of the same stream only took the
    # core the readers' replies need (tuning.prefetch_lanes).
    tracker, spans, index = _stream_of_four_spans(fast=True)
    tracker.prefetch_after(index, MiB)              # spans 1-4 (32 MiB ahead)
    assert tracker._lanes == 1
    for n, j in enumerate([1, 2, 3, 4], start=1):
        spans.wait_started(n)
        assert spans.started == [1, 2, 3, 4][:n]
        spans.release(j)
    tuning.prefetch_pool().shutdown(wait=True)
    assert spans.peak == 1 and tracker._lanes == 0


def test_a_slow_decoder_stream_uses_every_worker(two_workers: None) -> None:
    tracker, spans, index = _stream_of_four_spans(fast=False)
    tracker.prefetch_after(index, MiB)
    assert tracker._lanes == 2
    spans.wait_started(2)                           # both at once
    assert spans.running == 2
    for j in (1, 2, 3, 4):
        spans.release(j)
    tuning.prefetch_pool().shutdown(wait=True)
    assert sorted(spans.started) == [1, 2, 3, 4] and tracker._lanes == 0


def test_closing_the_stream_gives_up_the_spans_no_lane_started(two_workers: None) -> None:
    tracker, spans, index = _stream_of_four_spans(fast=True)
    tracker.prefetch_after(index, MiB)
    spans.wait_started(1)
    tracker.reset()                                 # the source is closing
    assert spans.unclaimed == [2, 3, 4]             # their readers would wait for them
    spans.release(1)
    tuning.prefetch_pool().shutdown(wait=True)
    assert spans.started == [1]
