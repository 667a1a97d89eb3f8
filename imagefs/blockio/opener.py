"""From files on disk to a probed image: pieces -> decompression -> format.

This is the one place that knows how the lower layers stack, so the CLI
verbs and the catalog open images the same way:

* a single file, or a ``split`` piece set (one byte stream cut into files):
  concatenate, then decompress if the stream's magic says so;
* partimage volumes (``NAME.000``, ``NAME.001`` ...): each volume is its own
  (possibly compressed) stream whose first 512 bytes are a volume header;
  the logical stream is volume 0 whole plus every later volume minus its
  header (formats.md 4.1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from imagefs.cache import BlockCache
from imagefs.formats import probe
from imagefs.formats.base import ImageHeader
from imagefs.indexdir import IndexStore
from imagefs.io.pieces import VOLUMES, collect_piece_set, is_first_piece
from imagefs.io.source import ByteSource, ConcatSource, FdPool, FileSource, SliceSource

PARTIMAGE_VOLUME_HEADER = 512

try:  # The codecs layer is optional at import time (it pulls in C libraries).
    from imagefs import codecs as _codecs
except ImportError:  # pragma: no cover - only while the layer is absent
    _codecs = None


@dataclass
class OpenContext:
    """Shared resources for opening many images."""

    pool: FdPool | None = None
    index_store: IndexStore | None = None
    cache: BlockCache | None = None
    progress: bool | None = None


@dataclass
class StreamInfo:
    """What the opener learned about how an image is stored."""

    pieces: list[str] = field(default_factory=list)
    piece_kind: str = "single"            # "single", "split" or "volumes"
    codec: str | None = None              # compression, None if plain


def sniff_codec(source: ByteSource) -> str | None:
    if _codecs is None:
        return None
    return _codecs.sniff(source.read_at(0, 64))


def decompress(source: ByteSource, key_paths: list[str], ctx: OpenContext) -> ByteSource:
    """``source`` itself, or its decompressed stream when a codec's magic matches."""
    if _codecs is None:
        return source
    return _codecs.open_decompressed(source, index_store=ctx.index_store, cache=ctx.cache,
                                     key_paths=key_paths, progress=ctx.progress)


def open_stream(pieces: list[str], kind: str, ctx: OpenContext | None = None,
                sizes: list[int] | None = None) -> tuple[ByteSource, StreamInfo]:
    """The logical image stream stored in ``pieces`` (in order)."""
    ctx = ctx or OpenContext()
    info = StreamInfo(pieces=list(pieces), piece_kind=kind)
    files = [FileSource(p, ctx.pool, None if sizes is None else sizes[i])
             for i, p in enumerate(pieces)]
    if kind == VOLUMES:
        volumes = [decompress(f, [f.path], ctx) for f in files]
        info.codec = getattr(volumes[0], "codec", None)
        parts: list[ByteSource] = [volumes[0]]
        parts += [SliceSource(v, PARTIMAGE_VOLUME_HEADER) for v in volumes[1:]]
        stream: ByteSource = parts[0] if len(parts) == 1 else ConcatSource(parts, name=pieces[0])
        return stream, info
    raw: ByteSource = files[0] if len(files) == 1 else ConcatSource(files, name=pieces[0])
    stream = decompress(raw, list(pieces), ctx)
    info.codec = getattr(stream, "codec", None)
    return stream, info


def pieces_for(path: str) -> tuple[list[str], str]:
    """The piece list and kind for a path given on the command line.

    ``sda1.img.aa`` (or ``.000``) expands to its whole set; any other path is
    a single file.  A set with a hole raises SourceError naming the gap.
    """
    from imagefs.errors import SourceError

    directory, name = os.path.split(os.path.abspath(path))
    if is_first_piece(name):
        try:
            siblings = os.listdir(directory)
        except OSError as exc:
            raise SourceError(directory, f"cannot list: {exc.strerror}") from None
        pset = collect_piece_set(name, siblings)
        if pset is not None:
            if pset.missing:
                raise SourceError(os.path.join(directory, pset.missing),
                                  "this piece of the split set is missing",
                                  "find the missing piece; the set cannot be read without it")
            names = [os.path.join(directory, n) for n in pset.names]
            return names, (VOLUMES if pset.kind == VOLUMES else "split")
    return [os.path.abspath(path)], "single"


def open_image_header(path: str, ctx: OpenContext | None = None) -> tuple[ImageHeader, StreamInfo]:
    """Probe the image at ``path`` (a file or the first piece of a set)."""
    pieces, kind = pieces_for(path)
    stream, info = open_stream(pieces, kind, ctx)
    return probe(stream), info
