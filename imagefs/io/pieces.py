"""Piece sets: one stream cut into files by ``split`` or by partimage.

Two naming schemes exist in the wild:

* GNU ``split``: ``NAME.aa NAME.ab ...``.  With an explicit ``-a N`` the
  suffix has a fixed width (``aa`` .. ``zz``, 676 pieces for N = 2).  With
  the default length split widens the suffix instead of running out:
  ``.. yz`` is followed by ``zaaa``, ``.. zyzz`` by ``zzaaaa`` and so on.
  Both orders are accepted.
* partimage volumes: ``NAME.000 NAME.001 ...`` (``%s.%03d``).

Only the *first* piece starts a set.  One rule holds wherever a set is
resolved (a directory scan, a configured single image, a path given on the
command line): a set with a hole in its sequence is an image that is
broken, and the error names the missing piece (:func:`missing_piece_error`);
the pieces past the hole are hidden with the set.  A missing *last* piece
cannot be seen from names alone: the formats notice the short stream.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import NamedTuple

from imagefs.errors import SourceError
from imagefs.records import field, record

_ALPHA = re.compile(r"^(?P<stem>.+)\.(?P<suffix>[a-z]{2,})$")
_DIGITS = re.compile(r"^(?P<stem>.+)\.(?P<suffix>\d{3})$")

SINGLE = "single"        # one file
SPLIT = "split"          # byte cut of one stream
VOLUMES = "volumes"      # partimage volumes, each its own (compressed) stream


@record
class PieceSet:
    """A detected piece set: ``names`` in stream order."""

    stem: str                  # NAME without the split suffix
    kind: str                  # SPLIT or VOLUMES
    names: list[str] = field(default_factory=list)
    missing: str | None = None  # first missing piece name, if the sequence has a hole
    #: Every name that belongs to the set and is hidden with it: ``names``
    #: plus, when a piece is missing, the pieces found past the hole.
    members: set[str] = field(default_factory=set)


def _increment(suffix: str) -> str | None:
    """The next suffix of the same width in base 26, or None after z...z."""
    chars = list(suffix)
    i = len(chars) - 1
    while i >= 0:
        if chars[i] != "z":
            chars[i] = chr(ord(chars[i]) + 1)
            return "".join(chars)
        chars[i] = "a"
        i -= 1
    return None


def next_auto_suffix(suffix: str) -> str:
    """GNU split's successor with its default, self-widening suffix length.

    At width w the suffixes run while the first w/2 letters are not all 'z';
    reaching that prefix widens by two letters: yz -> zaaa, zyzz -> zzaaaa.
    """
    width = len(suffix)
    nxt = _increment(suffix)
    half = width // 2
    if nxt is None or nxt.startswith("z" * half):
        return "z" * half + "a" * (width - half + 2)
    return nxt


def next_fixed_suffix(suffix: str) -> str | None:
    """split -a N successor; None when the suffixes are exhausted."""
    return _increment(suffix)


def split_stem(name: str) -> tuple[str, str, str] | None:
    """Return (stem, suffix, kind) if ``name`` looks like a piece name."""
    m = _ALPHA.match(name)
    if m:
        return m.group("stem"), m.group("suffix"), SPLIT
    m = _DIGITS.match(name)
    if m:
        return m.group("stem"), m.group("suffix"), VOLUMES
    return None


def is_first_piece(name: str) -> bool:
    parts = split_stem(name)
    if parts is None:
        return False
    _, suffix, kind = parts
    return suffix == ("0" * len(suffix) if kind == VOLUMES else "a" * len(suffix))


def collect_piece_set(first_name: str, siblings: set[str] | list[str]) -> PieceSet | None:
    """The piece set that ``first_name`` starts, given the directory's names.

    Returns None if ``first_name`` is not the first piece of a set of two or
    more, or of a set of one whose suffix is nonetheless a first-piece suffix
    (``x.aa`` alone is still a set: its stem is the display name).
    """
    parts = split_stem(first_name)
    if parts is None or not is_first_piece(first_name):
        return None
    stem, suffix, kind = parts
    names = set(siblings)
    result = PieceSet(stem=stem, kind=kind, names=[first_name])
    if kind == VOLUMES:
        n = 1
        while True:
            cand = f"{stem}.{n:03d}"
            if cand not in names:
                break
            result.names.append(cand)
            n += 1
        # A later volume beyond a hole means a missing middle volume.
        for other in names:
            p = split_stem(other)
            if p and p[0] == stem and p[2] == VOLUMES and int(p[1]) > n:
                result.missing = f"{stem}.{n:03d}"
                break
        result.members = _members(result, names)
        return result
    # Follow whichever successor rule the present names continue with.
    cur = suffix
    while True:
        fixed = next_fixed_suffix(cur)
        auto = next_auto_suffix(cur)
        if fixed is not None and f"{stem}.{fixed}" in names:
            cur = fixed
        elif f"{stem}.{auto}" in names:
            cur = auto
        else:
            break
        result.names.append(f"{stem}.{cur}")
    present = set(result.names)
    for other in names:
        p = split_stem(other)
        if p and p[0] == stem and p[2] == SPLIT and other not in present \
                and _could_follow(p[1], cur):
            # A piece of this set exists beyond the sequence: something between is missing.
            nxt = next_fixed_suffix(cur) or next_auto_suffix(cur)
            result.missing = f"{stem}.{nxt}"
            break
    result.members = _members(result, names)
    return result


def _could_follow(suffix: str, last: str) -> bool:
    """Whether ``suffix`` could be a later piece of a set that reached ``last``.

    Same width and later in order (split -a N), or a wider suffix of the
    self-widening sequence (``zaaa``.., ``zzaaaa``..).  Anything else, such
    as ``NAME.sha`` beside ``NAME.aa``, is an unrelated file.
    """
    if len(suffix) == len(last):
        return suffix > last
    width = len(suffix)
    return width > len(last) and width % 2 == 0 and suffix.startswith("z" * (width // 2 - 1))


def _members(pset: PieceSet, names: set[str]) -> set[str]:
    """``pset.names`` plus, for a set with a hole, the pieces lying past it.

    Only names with the same suffix width (or split's widened ``z..`` form)
    count, so ``NAME.info`` or ``NAME.sha`` next to ``NAME.aa`` stay visible.
    """
    members = set(pset.names)
    if pset.missing is None:
        return members
    first = split_stem(pset.names[0])
    assert first is not None                 # a set's first name is a piece name
    width = len(first[1])
    for other in names:
        p = split_stem(other)
        if p and p[0] == pset.stem and p[2] == pset.kind and (
                len(p[1]) == width or (len(p[1]) > width and p[1].startswith("z"))):
            members.add(other)
    return members


def missing_piece_error(directory: str, missing: str) -> SourceError:
    """The one error for a piece set with a hole (CLI, scan and configured sources)."""
    return SourceError(os.path.join(directory, missing),
                       f"piece {missing} of the split set is missing",
                       "find the missing piece; the set cannot be read without it")


class ResolvedPieces(NamedTuple):
    """The files an image at one path is stored in."""

    paths: list[str]               # absolute paths in stream order
    kind: str                      # SINGLE, SPLIT or VOLUMES
    stem: str | None = None        # the name without its split suffix (sets only)
    missing: SourceError | None = None   # the hole in the set, if any


def resolve(path: str, siblings: Iterable[str] | None = None) -> ResolvedPieces:
    """The piece set a path starts (``x.aa``, ``x.000``), or the single file.

    ``siblings`` are the names in the path's directory (listed when not
    given).  A set with a hole is returned with ``missing`` set (the caller
    decides whether to raise it or show the image as broken).
    """
    path = os.path.abspath(path)
    directory, name = os.path.split(path)
    if is_first_piece(name):
        if siblings is None:
            try:
                siblings = os.listdir(directory)
            except OSError as exc:
                raise SourceError(directory, f"cannot list: {exc.strerror}") from None
        pset = collect_piece_set(name, list(siblings))
        if pset is not None:
            missing = missing_piece_error(directory, pset.missing) if pset.missing else None
            return ResolvedPieces([os.path.join(directory, n) for n in pset.names],
                                  pset.kind, pset.stem, missing)
    return ResolvedPieces([path], SINGLE)


def piece_sets(names: Iterable[str]) -> list[PieceSet]:
    """Every piece set the first pieces among ``names`` start, in name order."""
    present = set(names)
    out = []
    for name in sorted(present):
        if is_first_piece(name):
            pset = collect_piece_set(name, present)
            if pset is not None:
                out.append(pset)
    return out


class SizeProblem(NamedTuple):
    """A split set whose piece sizes break split's rule, and how much of it is sound."""

    consistent: int            # stream bytes that are where they belong
    text: str                  # one sentence for .info and the log


def split_size_problem(paths: list[str], sizes: list[int]) -> SizeProblem | None:
    """Check split's rule: every piece but the last has the same size.

    The common size is the most frequent one among the pieces but the last
    (the larger on a tie: a piece cut short is the likelier damage).  The
    stream is sound up to the first piece that breaks the rule: to its end
    when it is short (cut or emptied), to the common size when it is long;
    every byte after that sits at the wrong offset.  A last piece of any
    size, and swapped or duplicated pieces of the right size, cannot be
    told from sizes: the image's length and checksums catch those.
    """
    if len(sizes) < 2:
        return None
    body = sizes[:-1]
    counts: dict[int, int] = {}
    for n in body:
        counts[n] = counts.get(n, 0) + 1
    common = max(counts, key=lambda n: (counts[n], n))
    pos = 0
    for i, n in enumerate(body):
        if n != common:
            keep = pos + min(n, common)
            what = "is empty" if n == 0 else f"has {n} bytes"
            return SizeProblem(keep, f"piece {os.path.basename(paths[i])} {what} where "
                               f"the set's other pieces have {common} (only the last may "
                               f"differ): the stream is read up to byte {keep} only")
        pos += n
    return None
