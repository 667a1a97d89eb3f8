"""lzop: a block index from the block headers (docs/formats.md 6.3).

Every lzop block is independent (LZO1X, 256 KiB of output) and its header
gives both lengths, so the index needs no decompression: one walk over the
headers.  Spans group blocks to about 1 MiB; each block's stored checksum
of its output (Adler-32 or CRC-32) is checked whenever it is decoded.

LZO1X itself comes from lzallright (wheels, no compiler needed) or, where
that is missing (Python 3.10), python-lzo; without either an lzop image is
shown broken with the package to install (:class:`_Lzo1x`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator, Iterator
from typing import Any

from imagefs.codecs.adapters import StreamCursor
from imagefs.codecs.building import IndexBuild
from imagefs.codecs.problems import corrupt
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.source import CodecSource
from imagefs.errors import MissingLibraryError, UnsupportedError
from imagefs.io.source import ByteSource
from imagefs.services.fastzlib import adler32, crc32
from imagefs.services.units import human

MAGIC = b"\x89LZO\x00\r\n\x1a\n"
F_ADLER32_D, F_ADLER32_C, F_H_EXTRA, F_CRC32_D, F_CRC32_C = 0x1, 0x2, 0x40, 0x100, 0x200
F_H_FILTER, F_H_CRC32 = 0x800, 0x1000
SPAN_TARGET = 1 << 20
#: lzop never writes blocks above 64 MiB; a larger length is damage.
MAX_BLOCK = 64 << 20


class _Lzo1x:
    """LZO1X block decompression from whichever library is installed.

    lzallright (Rust, ships wheels for CPython >= 3.11: ``pip install``
    needs no compiler) is preferred; python-lzo (C, an sdist needing gcc and
    liblzo2-dev, the only choice on Python 3.10) is the fallback.
    """

    def __init__(self) -> None:
        self.name = ""
        self._decompress: Callable[[bytes, int], bytes] | None = None

    def load(self, src: ByteSource) -> Callable[[bytes, int], bytes]:
        if self._decompress is not None:
            return self._decompress
        try:
            from lzallright import LZOCompressor

            def lzallright_decompress(data: bytes, ulen: int) -> bytes:
                out: bytes = LZOCompressor.decompress(data, output_size_hint=ulen)
                return out

            self._decompress, self.name = lzallright_decompress, "lzallright"
        except ImportError:
            try:
                import lzo

                def python_lzo_decompress(data: bytes, ulen: int) -> bytes:
                    out: bytes = lzo.decompress(data, False, ulen)
                    return out

                self._decompress, self.name = python_lzo_decompress, "python-lzo"
            except ImportError:
                raise MissingLibraryError(
                    src.name, "lzop images need an LZO library, and none is installed",
                    "pip install lzallright (Python 3.11 and later; python-lzo on 3.10, "
                    "which needs gcc and liblzo2-dev), or decompress with lzop -dc") from None
        return self._decompress


#: The one LZO1X decoder of the process (chosen on first use).
LZO1X = _Lzo1x()


def library_version() -> str:
    """Which LZO library decodes, and its version (for ``imagefs version``)."""
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("lzallright", "python-lzo"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "missing (pip install lzallright)"


class LzopSource(CodecSource):
    """An lzop file (single member)."""

    codec = "lzop"
    FAST_DECODER = True

    def _header(self, cur: StreamCursor) -> int:
        """Parse the file header; return the flags."""
        src = self.source
        if cur.need(9, "the header") != MAGIC:
            raise corrupt(src, "not an lzop file")
        version, _lib = struct.unpack(">HH", cur.need(4, "the header"))
        if version >= 0x0940:
            cur.need(2, "the header")       # version needed to extract
        method = cur.need(1, "the header")[0]
        if version >= 0x0940:
            cur.need(1, "the header")       # level
        (flags,) = struct.unpack(">I", cur.need(4, "the header"))
        if flags & F_H_FILTER:
            raise UnsupportedError(src.name, "lzop file uses a filter",
                                   "decompress it with lzop -dc")
        if method not in (1, 2, 3):
            raise UnsupportedError(src.name, f"lzop method {method} is not LZO1X",
                                   "decompress it with lzop -dc")
        cur.need(8, "the header")           # mode, mtime low
        if version >= 0x0940:
            cur.need(4, "the header")       # mtime high
        name_len = cur.need(1, "the header")[0]
        cur.need(name_len + 4, "the header")  # name, header checksum
        if flags & F_H_EXTRA:
            (extra,) = struct.unpack(">I", cur.need(4, "the header"))
            cur.need(extra + 4, "the header")
        return flags

    def _blocks(self, update: Callable[[int], None] | None = None, read_data: bool = False
                ) -> Iterator[tuple[int, int, int, list[Any] | None, bytes | None]]:
        """Yield (data_off, ulen, clen, dsum, data or None) for every block."""
        src = self.source
        cur = StreamCursor(src, 0, update)
        flags = self._header(cur)
        while True:
            (ulen,) = struct.unpack(">I", cur.need(4, "a block header"))
            if ulen == 0:
                return
            (clen,) = struct.unpack(">I", cur.need(4, "a block header"))
            if ulen > MAX_BLOCK or clen > ulen:
                raise corrupt(src, f"lzop block header at byte {cur.pos - 8} is implausible")
            dsum = None
            if flags & (F_ADLER32_D | F_CRC32_D):
                (dsum,) = struct.unpack(">I", cur.need(4, "a block header"))
                dsum = [("crc32" if flags & F_CRC32_D else "adler32"), dsum]
            if clen < ulen and flags & (F_ADLER32_C | F_CRC32_C):
                cur.need(4, "a block header")
            data_off = cur.pos
            data = cur.need(clen, "a block")
            yield data_off, ulen, clen, dsum, (data if read_data else None)

    def _iter_decoded(self) -> Generator[bytes, None, None]:
        for data_off, ulen, clen, dsum, data in self._blocks(read_data=True):
            assert data is not None           # read_data=True
            yield _decode(self.source, data, ulen, clen, dsum, data_off)

    def _build_index(self, build: IndexBuild) -> SeekIndex:
        update = build.update
        starts, meta = [0], []
        out_pos = span_u = 0
        span: list | None = None
        blocks = 0
        for data_off, ulen, clen, dsum, _ in self._blocks(update):
            if span is None or out_pos - span_u >= SPAN_TARGET:
                if span is not None:
                    meta.append(span)
                    starts.append(out_pos)
                span, span_u = [], out_pos
            span.append([data_off, ulen, clen, dsum])
            out_pos += ulen
            blocks += 1
        if span is not None:
            meta.append(span)
            starts.append(out_pos)
        return SeekIndex(out_pos, starts, meta, [], {"blocks": blocks})

    def _check_loaded(self, index: SeekIndex) -> None:
        if any(not span for span in index.meta):
            raise ValueError("empty lzop span")

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        return b"".join(self._iter_span(index, i))

    def _iter_span(self, index: SeekIndex, i: int) -> Iterator[bytes]:
        # Block by block: each block is checked on its own before it is
        # served, and no join copy is needed.
        blocks = index.meta[i]
        first, last = blocks[0], blocks[-1]
        base = first[0]
        raw = self.source.read_at(base, last[0] + last[2] - base)
        for data_off, ulen, clen, dsum in blocks:
            data = raw[data_off - base:data_off - base + clen]
            if len(data) != clen:
                raise corrupt(self.source, f"lzop block at byte {data_off} is cut short")
            yield _decode(self.source, data, ulen, clen, dsum, data_off)

    def _describe(self, index: SeekIndex) -> str:
        return (f"{index.info.get('blocks', 0)} blocks in {index.spans} spans "
                f"(about {human(index.size / max(index.spans, 1))} each)")


def _decode(src: ByteSource, data: bytes, ulen: int, clen: int, dsum: list[Any] | None,
            data_off: int) -> bytes:
    if clen == ulen:
        out = bytes(data)                   # stored block
    else:
        decompress = LZO1X.load(src)
        try:
            out = decompress(data, ulen)
        except Exception as exc:  # noqa: BLE001 - lzo.error, lzallright.LZOError ...: damage
            raise corrupt(src, f"lzop block at byte {data_off} is damaged ({exc})") from None
    if len(out) != ulen:
        raise corrupt(src, f"lzop block at byte {data_off} decoded to {len(out)} bytes "
                      f"instead of {ulen}")
    if dsum is not None:
        kind, want = dsum
        got = crc32(out) if kind == "crc32" else adler32(out)
        if got != want:
            raise corrupt(src, f"lzop block at byte {data_off} fails its {kind} checksum")
    return out
