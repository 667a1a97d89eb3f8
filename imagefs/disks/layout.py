"""The byte layout of a disk: what fills each range, painted in order.

A layout is a sorted list of non-overlapping extents.  Metadata (boot
records, GPT sectors, swap headers) is *painted*: a later paint wins over
an earlier one, so raw sector dumps can be laid over tables derived from
other files.  Partition slots are added last and must not overlap any
painted metadata.  Everything not covered reads as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileSlice:
    """``length`` bytes of the metadata file ``path`` from ``offset`` (read lazily)."""

    path: str
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class Slot:
    """A partition's range, filled by its reader (``device`` names it)."""

    device: str
    length: int

    def __len__(self) -> int:
        return self.length


Piece = bytes | FileSlice | Slot


@dataclass(frozen=True)
class Extent:
    start: int          # byte offset on the disk
    piece: Piece
    label: str          # what it is, for the .info table

    @property
    def end(self) -> int:
        return self.start + len(self.piece)


def _cut(piece: Piece, lo: int, hi: int) -> Piece:
    if isinstance(piece, bytes):
        return piece[lo:hi]
    if isinstance(piece, FileSlice):
        return FileSlice(piece.path, piece.offset + lo, hi - lo)
    raise ValueError("partition slots are never cut")


class Painter:
    """Collects metadata extents; later paints cover earlier ones."""

    def __init__(self) -> None:
        self.extents: list[Extent] = []

    def paint(self, start: int, piece: Piece, label: str) -> None:
        end = start + len(piece)
        if end <= start:
            return
        kept: list[Extent] = []
        for e in self.extents:
            if e.end <= start or e.start >= end:
                kept.append(e)
                continue
            if e.start < start:
                kept.append(Extent(e.start, _cut(e.piece, 0, start - e.start), e.label))
            if e.end > end:
                kept.append(Extent(end, _cut(e.piece, end - e.start, len(e.piece)), e.label))
        kept.append(Extent(start, piece, label))
        self.extents = sorted(kept, key=lambda e: e.start)

    def overlapping(self, start: int, end: int) -> Extent | None:
        """The first painted extent that intersects ``[start, end)``."""
        for e in self.extents:
            if e.start < end and start < e.end:
                return e
        return None

    def layout(self, slots: list[Extent]) -> list[Extent]:
        """Painted extents and partition slots, sorted (slots never overlap paint)."""
        return sorted(self.extents + slots, key=lambda e: e.start)
