"""The codec registry: which compressor wrote a stream, and which class decodes it.

``sniff`` names the compressor from the first bytes (magic, never the file
name).  :data:`CODECS` maps each name to its decoder class as plain data,
imported lazily so that sniffing thousands of files never loads a C
library it need not.
"""

from __future__ import annotations

import importlib
import struct

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


def decoder_class(codec: str) -> type:
    """The CodecSource subclass that decodes ``codec`` (imported on first use)."""
    module, name = CODECS[codec]
    cls: type = getattr(importlib.import_module(module), name)
    return cls
