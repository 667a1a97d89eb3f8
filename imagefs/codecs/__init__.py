"""The codecs layer: a compressed stream becomes a random-access ByteSource.

``sniff`` names the compressor from the first bytes (magic, never the file
name); ``open_decompressed`` stacks the matching decoder on a source and is
lazy: reads near the start decode from the beginning, and the seek index
is loaded from the index directory, or built by one background pass shared
by every reader, only when a read goes further or the size is asked for.
``build_index`` builds (or loads) the index now and waits for it.

What lives where:

==================  ========================================================
``registry``        magic sniffing, codec name -> decoder class
``tuning``          process-wide knobs (threads, prefetch pool, default cache),
                    demand decodes before prefetch
``source``          ``CodecSource``: reads, the index's lifecycle, codec hooks
``building``        the one background index build of a stream, partial index
``seekindex``       the span table, piece sums and the persisted payload
``sequential``      decoding from the start (header probes, slow path)
``spans``           span pieces decoded into the shared cache, sums checked
``cursors``         paused span decoders, continued by sequential readers
``streaming``       sequential-reader detection and prefetch
``adapters``        file objects over sources; the index passes' chunk reader
``problems``        the damaged / truncated errors
``streamend``       where a gzip/bzip2 stream ends (trailing bytes, truncation)
``rapidpool``       rapidgzip decoders and the threads every rapidgzip call uses
one per codec       ``rapid`` (gzip, bzip2 via rapidgzip), ``zstd`` (with
                    ``zstdframe``, the pass ``zstdindex``, its trials
                    ``zstdtrial``, spans ``zstdspan``), ``lz4``,
                    ``xz``, ``lzop``, ``lzip``
==================  ========================================================

Per codec (docs/formats.md section 6):

========  ===================================================================
gzip      rapidgzip checkpoints (plain, pigz, multi-member); index exported
bzip2     rapidgzip block offsets (bzip2, pbzip2, lbzip2)
zstd      frames, pzstd skippable frames, resume points; piece sums
lz4       frame block index (independent or linked blocks); piece sums
xz        blocks from the xz index; one block = sequential slow path
lzop      block index from the block headers
lzip      member index (plzip), each member decoded as raw LZMA1
========  ===================================================================

Large single-member lzip, lzma ("alone"), lrzip and legacy lz4 raise
:class:`~imagefs.errors.UnsupportedError` naming the command that
decompresses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagefs.codecs.registry import CODECS, UNSUPPORTED_HINTS, decoder_class, sniff
from imagefs.errors import UnsupportedError

if TYPE_CHECKING:   # a mount imports this package at start-up: keep it light
    from imagefs.io.source import ByteSource
    from imagefs.services.cache import BlockCache
    from imagefs.services.indexstore import IndexStore

__all__ = ["CODECS", "build_index", "codec_versions", "configure", "open_decompressed",
           "sniff"]


def open_decompressed(source: ByteSource, *, index_store: IndexStore | None = None,
                      cache: BlockCache | None = None, key_paths: list[str] | None = None,
                      progress: bool | None = None, **options: Any) -> ByteSource:
    """``source`` itself when not compressed, else its decompressed stream.

    The result is lazy (reads in the first few MiB decode from the start;
    the seek index is built or loaded on first need) and has ``codec``,
    ``index``, ``index_state()``, ``decoded_bytes`` and ``close()``.
    ``options`` are codec tuning knobs (``spacing`` for zstd resume points).
    Raises UnsupportedError for streams that cannot be served, naming the
    command that decompresses them.
    """
    codec = sniff(source.read_at(0, 64))
    if codec is None:
        return source
    if codec == "lz4" and source.read_at(0, 4) == b"\x02\x21\x4c\x18":
        raise UnsupportedError(source.name, "legacy lz4 format (lz4 -l) cannot be mounted yet",
                               UNSUPPORTED_HINTS["lz4-legacy"])
    if codec in ("lzma", "lrzip"):
        raise UnsupportedError(source.name, f"{codec} streams have no restart points and "
                               "cannot be mounted yet", UNSUPPORTED_HINTS[codec])
    cls = decoder_class(codec)
    kwargs: dict[str, Any] = dict(index_store=index_store, cache=cache, key_paths=key_paths,
                                  progress=progress)
    if codec == "zstd" and "spacing" in options:
        kwargs["spacing"] = options.pop("spacing")
    if options:
        raise TypeError(f"unknown options for {codec}: {sorted(options)}")
    stream: ByteSource = cls(source, **kwargs)
    return stream


def build_index(source: ByteSource, *, index_store: IndexStore | None = None,
                cache: BlockCache | None = None, key_paths: list[str] | None = None,
                progress: bool | None = None, **options: Any) -> ByteSource:
    """Like :func:`open_decompressed`, then build (or load) the index now."""
    stream = open_decompressed(source, index_store=index_store, cache=cache,
                               key_paths=key_paths, progress=progress, **options)
    build = getattr(stream, "build", None)
    if build is not None:
        build()
    return stream


def configure(*, threads: int | None = None, zstd_spacing: int | None = None) -> None:
    """Process-wide tuning (the ``codecs`` section of the configuration).

    ``threads``: CPU threads for index passes and sequential prefetch (0:
    one per CPU).  ``zstd_spacing``: output bytes between zstd resume
    points for indexes built from now on (default 32 MiB).
    """
    from imagefs.codecs import tuning, zstd

    if threads is not None:
        tuning.set_threads(threads)
    if zstd_spacing is not None:
        if zstd_spacing < (128 << 10):
            raise ValueError("zstd spacing below one block (128 KiB) makes no sense")
        zstd.DEFAULT_SPACING = zstd_spacing


def codec_versions() -> dict[str, str]:
    """Versions of the codec libraries and of the C libraries that really decode.

    zstd is decoded by the system libzstd (the index pass and spans,
    codecs/zstdstream.py; python-zstandard and pyzstd where it cannot be
    loaded) and by pyzstd (reads from a stream's start); each brings its own
    libzstd, so all are named.
    """
    import lzma  # here, not at import: a mount imports this package at start-up
    import zlib
    from importlib.metadata import PackageNotFoundError, version

    from imagefs.codecs.lzop import library_version

    out: dict[str, str] = {}
    for dist in ("rapidgzip", "lz4"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    try:
        import zstandard

        libzstd = ".".join(map(str, zstandard.ZSTD_VERSION))
        out["zstandard"] = (f"{version('zstandard')} (libzstd {libzstd}, {zstandard.backend}; "
                            "decodes the index pass where the system libzstd cannot be loaded)")
    except (ImportError, PackageNotFoundError):
        out["zstandard"] = "missing"
    try:
        import pyzstd

        out["pyzstd"] = (f"{version('pyzstd')} (libzstd {pyzstd.zstd_version}; decodes reads "
                         "from a stream's start, and spans without the system libzstd; "
                         "compresses the index's windows)")
    except (ImportError, PackageNotFoundError):
        out["pyzstd"] = "missing"
    from imagefs.codecs.zstdstream import system_version
    system = system_version()
    out["libzstd"] = (f"{system} (the system's; decodes the index pass and spans)"
                      if system else "missing (the index pass uses python-zstandard)")
    out["lzo"] = library_version()
    out["zlib"] = zlib.ZLIB_RUNTIME_VERSION
    out["liblzma"] = "stdlib lzma module" if lzma else "missing"
    return out
