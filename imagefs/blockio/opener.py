"""From files on disk to a probed image: pieces -> decompression -> format.

This is the one place that knows how the lower layers stack, so the CLI
verbs, the catalog and the Python API open images the same way:

* a single file, or a ``split`` piece set (one byte stream cut into files):
  concatenate, then decompress if the stream's magic says so;
* partimage volumes (``NAME.000``, ``NAME.001`` ...): each volume is its own
  (possibly compressed) stream whose first bytes are a volume header; the
  logical stream is volume 0 whole plus every later volume minus its header
  (docs/formats.md 4.1).  The volumes are handed to the format probe, which
  checks that they belong together;
* a stream no format recognises is raw partition data when its name is a
  Clonezilla dd name (``DEV.dd-ptcl-img*``, ``DEV.dd-img*``), sized from
  the partition table saved beside it (:mod:`~imagefs.blockio.rawsize`).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from imagefs import codecs
from imagefs.errors import NotAnImageError
from imagefs.formats import probe
from imagefs.formats.base import ImageHeader
from imagefs.formats.magics import PARTIMAGE_VOLUME_HEADER as VOLUME_HEADER
from imagefs.io.fdpool import FdPool
from imagefs.io.pieces import SINGLE, SPLIT, VOLUMES, resolve, split_size_problem
from imagefs.io.source import ByteSource, ConcatSource, FileSource, SliceSource
from imagefs.records import field, record
from imagefs.services.cache import BlockCache
from imagefs.services.indexstore import IndexStore


@record
class OpenContext:
    """Shared resources for opening many images."""

    pool: FdPool | None = None
    index_store: IndexStore | None = None
    cache: BlockCache | None = None
    progress: bool | None = None


@record
class StreamInfo:
    """What the opener learned about how an image is stored."""

    pieces: list[str] = field(default_factory=list)
    piece_kind: str = SINGLE              # SINGLE, SPLIT or VOLUMES (imagefs.io.pieces)
    codec: str | None = None              # compression, None if plain
    #: Problems of the storage itself (a piece of the wrong size), one sentence each.
    notes: list[str] = field(default_factory=list)


class OpenedStream(NamedTuple):
    """The logical image stream of some pieces, ready to be probed."""

    stream: ByteSource
    info: StreamInfo
    #: For partimage volume sets: each volume's whole (decompressed) stream.
    volumes: list[ByteSource] | None = None

    def probe(self) -> ImageHeader:
        """Parse the image header of the stream (NotAnImageError if it is none)."""
        try:
            return probe(self.stream, self.volumes)
        except NotAnImageError:
            # Raw partition data is the rare case: its modules load only here,
            # not in every mount's start.
            from imagefs.blockio.rawsize import sidecar_text, table_size
            from imagefs.formats.raw import probe_raw, raw_name
            first = self.info.pieces[0] if self.info.pieces else ""
            name = raw_name(os.path.basename(first))
            if name is None or self.volumes is not None or not self.stream.read_at(0, 1):
                raise
        directory = os.path.dirname(first)
        found = table_size(directory, name.device)
        size, where = found if found else (None, "")
        header = probe_raw(self.stream, name, size, where)
        noted = sidecar_text(directory, name.device)
        if noted:
            header.add_note(f"Clonezilla noted the partition size as {noted} "
                            f"({name.device}-size)")
        return header


def decompress(source: ByteSource, ctx: OpenContext) -> ByteSource:
    """``source`` itself, or its decompressed stream when a codec's magic matches."""
    return codecs.open_decompressed(source, index_store=ctx.index_store, cache=ctx.cache,
                                    progress=ctx.progress)


def open_pieces(pieces: list[str], kind: str, ctx: OpenContext | None = None,
                sizes: list[int] | None = None) -> OpenedStream:
    """The logical image stream stored in ``pieces`` (in order)."""
    ctx = ctx or OpenContext()
    info = StreamInfo(pieces=list(pieces), piece_kind=kind)
    files = [FileSource(p, ctx.pool, None if sizes is None else sizes[i])
             for i, p in enumerate(pieces)]
    if kind == VOLUMES:
        volumes = [decompress(f, ctx) for f in files]
        info.codec = getattr(volumes[0], "codec", None)
        parts: list[ByteSource] = [volumes[0]]
        parts += [SliceSource(v, VOLUME_HEADER) for v in volumes[1:]]
        stream: ByteSource = parts[0] if len(parts) == 1 else ConcatSource(parts, name=pieces[0])
        return OpenedStream(stream, info, volumes)
    raw: ByteSource = files[0] if len(files) == 1 else ConcatSource(files, name=pieces[0])
    if kind == SPLIT:
        problem = split_size_problem(info.pieces, [f.size for f in files])
        if problem is not None:
            # Serve the sound part only: past it every byte sits at the wrong offset.
            raw = SliceSource(raw, 0, problem.consistent, name=pieces[0])
            info.notes.append(problem.text)
    stream = decompress(raw, ctx)
    info.codec = getattr(stream, "codec", None)
    return OpenedStream(stream, info)


def open_stream(pieces: list[str], kind: str, ctx: OpenContext | None = None,
                sizes: list[int] | None = None) -> tuple[ByteSource, StreamInfo]:
    """The logical stream and what is known about its storage (no volumes)."""
    opened = open_pieces(pieces, kind, ctx, sizes)
    return opened.stream, opened.info


def open_path(path: str, ctx: OpenContext | None = None) -> OpenedStream:
    """The stream of the image at ``path`` (a file or the first piece of a set).

    A set with a missing piece raises the one missing-piece SourceError.
    """
    resolved = resolve(path)
    if resolved.missing is not None:
        raise resolved.missing
    return open_pieces(resolved.paths, resolved.kind, ctx)


def open_image_header(path: str, ctx: OpenContext | None = None
                      ) -> tuple[ImageHeader, StreamInfo]:
    """Probe the image at ``path`` (a file or the first piece of a set)."""
    opened = open_path(path, ctx)
    return opened.probe(), opened.info
