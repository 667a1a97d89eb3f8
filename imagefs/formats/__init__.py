"""Image formats: a registry of cheap magic probes and header parsers.

``probe(source)`` looks at the first bytes of an (already decompressed)
stream and returns the matching :class:`~imagefs.formats.base.ImageHeader`,
or raises :class:`~imagefs.errors.NotAnImageError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

from imagefs.errors import FormatError, NotAnImageError, TruncatedError
from imagefs.formats.base import BlockImage, ImageHeader
from imagefs.formats.magics import is_ntfsclone, is_partclone, is_partimage
from imagefs.io.source import ByteSource

#: How many leading bytes the magic checks look at.
PROBE_BYTES = 64


class FormatEntry(NamedTuple):
    """One image format: a cheap magic test and its header parser."""

    name: str
    matches: Callable[[bytes], bool]       # cheap test on the first PROBE_BYTES
    #: parse(stream, volumes): ``volumes`` are the separately stored volume
    #: streams the stream was built from (partimage volume sets), else None.
    parse: Callable[[ByteSource, Sequence[ByteSource] | None], ImageHeader]


def _parser(module: str) -> Callable[[ByteSource, Sequence[ByteSource] | None], ImageHeader]:
    """The ``probe`` of format module ``module``, imported on first use."""
    def parse(stream: ByteSource, volumes: Sequence[ByteSource] | None) -> ImageHeader:
        probe: Callable[[ByteSource, Sequence[ByteSource] | None], ImageHeader] = \
            importlib.import_module(f"imagefs.formats.{module}").probe
        return probe(stream, volumes)
    return parse


def _entries() -> list[FormatEntry]:
    # The magic tests need no parser: a format's module (each independent of
    # the others) is imported when a file of that format is met.
    return [
        FormatEntry("partclone", is_partclone, _parser("partclone")),
        FormatEntry("ntfsclone", is_ntfsclone, _parser("ntfsclone")),
        FormatEntry("partimage", is_partimage, _parser("partimage")),
    ]


_REGISTRY: list[FormatEntry] | None = None


def registry() -> list[FormatEntry]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _entries()
    return _REGISTRY


def detect(head: bytes) -> FormatEntry | None:
    """The format whose magic ``head`` starts with, if any."""
    for entry in registry():
        if entry.matches(head):
            return entry
    return None


def probe(source: ByteSource, volumes: Sequence[ByteSource] | None = None) -> ImageHeader:
    """Parse the header of the image in ``source``.

    ``volumes`` are given when the opener built ``source`` from partimage
    volumes stored separately (each volume whole, its header included).
    """
    try:
        head = source.read_at(0, PROBE_BYTES)
    except (TruncatedError, FormatError) as exc:
        # Only data problems: a missing codec library (UnsupportedError) or
        # an unreadable file (SourceError) stay what they are.
        if _decompressed(source):
            # The first bytes cannot even be decompressed: nothing shows an
            # image magic, so this is not an image (a cut-short log.gz, a
            # tar.gz cut into pieces), whatever the codec found wrong.
            raise NotAnImageError(source.name, "not a partclone, ntfsclone or partimage "
                                  f"image (its content cannot be decompressed: {exc.problem})",
                                  "check that this is the file you meant") from None
        raise
    entry = detect(head)
    if entry is None:
        if not head:
            raise NotAnImageError(source.name, "the file is empty",
                                  "it holds no image; check the backup")
        raise NotAnImageError(source.name, "not a partclone, ntfsclone or partimage image",
                              "check that this is the file you meant")
    return entry.parse(source, volumes)


def _decompressed(source: ByteSource) -> bool:
    """Whether ``source`` is a decompressed stream (it names its codec)."""
    return getattr(source, "codec", None) is not None


__all__ = ["BlockImage", "ImageHeader", "FormatEntry", "detect", "probe", "registry"]
