"""What an image is called in the mount, and the clash rule.

An image stored as ``NAME`` (or as the pieces ``NAME.aa``, ``NAME.000`` ...)
is shown as ``VNAME``: ``NAME`` without its split suffix and then without
one compression suffix (:func:`virtual_name`), plus companions such as
``VNAME.info``.  A real file always keeps its name; an image whose
``VNAME`` or any companion name is taken keeps its full source name
instead, then ``NAME~2`` ... (:func:`assign_names`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

#: Clonezilla's compressor suffixes (docs/formats.md 5.3) plus the common ``.lz``.
COMPRESSION_SUFFIXES = (".gz", ".zst", ".lz4", ".bz2", ".xz", ".lzo", ".lzip", ".lz",
                        ".lzma", ".lrz", ".uncomp")
INFO_SUFFIX = ".info"

#: How many ``NAME~N`` alternatives are tried before an image is not shown.
MAX_ALTERNATIVES = 1000


def virtual_name(name: str, stem: str | None = None) -> str:
    """The display name of an image stored as ``name``.

    ``stem`` is ``name`` without its split suffix when the image is a piece
    set.  A trailing compression suffix is removed afterwards:
    ``sda1.ext4-ptcl-img.gz.aa`` -> ``sda1.ext4-ptcl-img``.
    """
    base = stem if stem is not None else name
    lower = base.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix) and len(base) > len(suffix):
            return base[:-len(suffix)]
    return base


class Wanted(NamedTuple):
    """One shown entry asking for a name: its display name, source name and companions."""

    vname: str                    # the preferred display name
    source_name: str              # the name it is stored under (the fallback)
    suffixes: tuple[str, ...]     # companion suffixes that must be free too


def assign_names(wanted: Sequence[Wanted], taken: Iterable[str]) -> list[str | None]:
    """A free name for each entry, in the order given (None: no free name).

    Entries whose display name is their own source name go first: they
    cannot be blamed for a clash, so they keep it.  A name is free when it
    and every ``name + suffix`` are unused.
    """
    used = set(taken)
    chosen: list[str | None] = [None] * len(wanted)
    order = sorted(range(len(wanted)),
                   key=lambda i: (wanted[i].vname != wanted[i].source_name,
                                  wanted[i].source_name))
    for i in order:
        w = wanted[i]
        candidates = itertools.chain(
            (w.vname, w.source_name),
            (f"{w.source_name}~{n}" for n in range(2, MAX_ALTERNATIVES)))
        for cand in candidates:
            names = [cand] + [cand + s for s in w.suffixes]
            if not any(n in used for n in names):
                used.update(names)
                chosen[i] = cand
                break
    return chosen
