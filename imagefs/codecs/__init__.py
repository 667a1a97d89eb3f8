"""The codecs layer: a compressed stream becomes a random-access ByteSource.

``sniff`` names the compressor from the first bytes (magic, never the file
name); ``open_decompressed`` stacks the matching decoder on a source and is
lazy: reads near the start decode from the beginning, and the seek index
is built (or loaded from the index directory) only when a read goes further
or the size is asked for.  ``build_index`` forces the index now.

Per codec (formats.md section 6):

========  ===================================================================
gzip      rapidgzip checkpoints (plain, pigz, multi-member); index exported
bzip2     rapidgzip block offsets (bzip2, pbzip2, lbzip2)
zstd      frames, pzstd skippable frames, verified resume points
lz4       frame block index (independent or linked blocks)
xz        blocks from the xz index; one block = sequential slow path
lzop      block index from the block headers
lzip      member index (plzip), each member decoded as raw LZMA1
========  ===================================================================

Large single-member lzip, lzma ("alone"), lrzip and legacy lz4 raise
:class:`~imagefs.errors.UnsupportedError` naming the command that
decompresses them.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from imagefs.cache import BlockCache
from imagefs.errors import UnsupportedError
from imagefs.indexdir import IndexStore
from imagefs.io.source import ByteSource

__all__ = ["sniff", "open_decompressed", "build_index", "configure", "CODECS",
           "codec_versions"]

#: Codec name -> (module, class) of the decoder; plain data, imported lazily
#: so that sniffing thousands of files never loads a C library it needs not.
CODECS: dict[str, tuple[str, str]] = {
    "gzip": ("imagefs.codecs.rapid", "GzipSource"),
    "bzip2": ("imagefs.codecs.rapid", "Bzip2Source"),
    "zstd": ("imagefs.codecs.zstd", "ZstdSource"),
    "lz4": ("imagefs.codecs.lz4", "Lz4Source"),
    "xz": ("imagefs.codecs.xz", "XzSource"),
    "lzop": ("imagefs.codecs.lzop", "LzopSource"),
    "lzip": ("imagefs.codecs.lzip", "LzipSource"),
}

#: The command that decompresses what imagefs cannot serve (yet).
UNSUPPORTED_HINTS = {
    "lzma": "decompress it first: xz --format=lzma -dc FILE > IMAGE (or lzma -dc)",
    "lrzip": "decompress it first: lrzip -d -o IMAGE FILE (or lrzcat FILE > IMAGE)",
    "lzip": "decompress it first: lzip -dc FILE > IMAGE (recompress with plzip to mount it)",
    "lz4-legacy": "decompress it first: lz4 -dc FILE > IMAGE",
}

_LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"


def sniff(head: bytes) -> str | None:
    """The codec name for a stream starting with ``head`` (16+ bytes), or None.

    Names: gzip, zstd, lz4, bzip2, xz, lzop, lzip, lzma, lrzip.
    """
    if head[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:4] in (b"\x04\x22\x4d\x18", b"\x02\x21\x4c\x18"):
        return "lz4"
    if len(head) >= 8 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
        # A skippable frame (pzstd writes one before every frame); zstd and
        # lz4 share the magic range, so look at what follows it.
        (length,) = struct.unpack_from("<I", head, 4)
        after = head[8 + length:12 + length]
        return "lz4" if after == b"\x04\x22\x4d\x18" else "zstd"
    if (head[:3] == b"BZh" and len(head) >= 10 and 0x31 <= head[3] <= 0x39
            and head[4:10] in (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")):
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:9] == _LZOP_MAGIC:
        return "lzop"
    if head[:4] == b"LZIP":
        return "lzip"
    if head[:4] == b"LRZI":
        return "lrzip"
    if _looks_like_lzma(head):
        return "lzma"
    return None


def _looks_like_lzma(head: bytes) -> bool:
    # The "alone" header has no magic: properties byte (0x5D for every
    # preset the tools use), a dictionary size of 2^n or 2^n + 2^(n-1), and
    # the size (all ones when piped, else a plausible byte count).
    if len(head) < 13 or head[0] != 0x5D:
        return False
    (dict_size, size) = struct.unpack_from("<IQ", head, 1)
    if dict_size < 4096:
        return False
    n = dict_size.bit_length() - 1
    if dict_size not in (1 << n, (1 << n) | (1 << (n - 1))):
        return False
    return size == 0xFFFFFFFFFFFFFFFF or size < (1 << 50)


def _decoder_class(codec: str):
    import importlib

    module, name = CODECS[codec]
    return getattr(importlib.import_module(module), name)


def open_decompressed(source: ByteSource, *, index_store: IndexStore | None = None,
                      cache: BlockCache | None = None, key_paths: list[str] | None = None,
                      progress: bool | None = None, **options: Any) -> ByteSource:
    """``source`` itself when not compressed, else its decompressed stream.

    The result is lazy (reads in the first few MiB decode from the start;
    the seek index is built or loaded on first need) and has ``codec``,
    ``index_state()``, ``decoded_bytes`` and ``close()``.  ``options`` are
    codec tuning knobs (``spacing`` for zstd resume points).  Raises
    UnsupportedError for streams that cannot be served, naming the command
    that decompresses them.
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
    cls = _decoder_class(codec)
    kwargs = dict(index_store=index_store, cache=cache, key_paths=key_paths, progress=progress)
    if codec == "zstd" and "spacing" in options:
        kwargs["spacing"] = options.pop("spacing")
    if options:
        raise TypeError(f"unknown options for {codec}: {sorted(options)}")
    return cls(source, **kwargs)


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

    ``threads``: CPU threads for index passes and sequential prefetch (0 or
    None: one per CPU).  ``zstd_spacing``: output bytes between zstd resume
    points for indexes built from now on (default 32 MiB).
    """
    from imagefs.codecs import base, rapid, zstd  # noqa: PLC0415

    if threads is not None:
        n = threads if threads > 0 else (os.cpu_count() or 1)
        base.set_threads(n)
        rapid.INDEX_THREADS = n
    if zstd_spacing is not None:
        if zstd_spacing < (128 << 10):
            raise ValueError("zstd spacing below one block (128 KiB) makes no sense")
        zstd.DEFAULT_SPACING = zstd_spacing


def codec_versions() -> dict[str, str]:
    """Versions of the codec libraries (for ``imagefs version``)."""
    out: dict[str, str] = {}
    for name, attr in (("rapidgzip", "__version__"), ("pyzstd", "__version__"),
                       ("lz4", "__version__"), ("lzo", "LZO_VERSION_STRING")):
        try:
            import importlib

            module = importlib.import_module(name)
            value = getattr(module, attr, "installed")
            out[name] = value.decode() if isinstance(value, bytes) else str(value)
        except ImportError:
            out[name] = "missing"
    try:
        import pyzstd

        out["libzstd"] = pyzstd.zstd_version
    except ImportError:
        pass
    import lzma
    import zlib

    out["zlib"] = zlib.ZLIB_RUNTIME_VERSION
    out["liblzma"] = "stdlib" if lzma else "missing"
    return out
