"""The sequential-reader tracker: which spans a stream's reads decode ahead."""

from __future__ import annotations

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
