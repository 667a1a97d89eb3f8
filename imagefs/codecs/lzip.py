"""lzip as plzip writes it: a member index, members decoded as raw LZMA1.

Each member ends with a trailer holding its own size, so the members are
found by walking trailers backwards from the end of the file — no
decompression.  A member is decoded with the standard library's lzma
(FORMAT_RAW, LZMA1 lc=3 lp=0 pb=2, the dictionary size from the member
header) and checked against the trailer's CRC-32 and data size.

A large single-member file (real lzip) has no restart point and raises
UnsupportedError with the command that decompresses it; a small one (plzip
on small input) is served as one span.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections.abc import Generator
from typing import Any

from imagefs.codecs.building import IndexBuild
from imagefs.codecs.problems import corrupt, truncated
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.source import CodecSource
from imagefs.errors import ImageError, UnsupportedError
from imagefs.io.source import ByteSource
from imagefs.services.units import human

MAGIC = b"LZIP"
HEADER = 6
TRAILER = 20
#: A member whose output exceeds this is not served as one span (memory).
MAX_MEMBER = 512 << 20

#: A single-member file holding up to this much is served as one span (a
#: miss decodes it whole, well under a second); a larger one is refused.
SMALL_SINGLE_MEMBER = 64 << 20
#: How far before the end of the file a last member is looked for when
#: trailing bytes follow it.
MAX_TRAILING = 64 << 20


def dict_size(byte: int) -> int:
    base = 1 << (byte & 31)
    return base - (base // 16) * (byte >> 5)


def _raw_decoder(dsize: int) -> lzma.LZMADecompressor:
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{
        "id": lzma.FILTER_LZMA1, "dict_size": dsize, "lc": 3, "lp": 0, "pb": 2}])


def _trailer(src: ByteSource, end: int) -> tuple[int, int, int]:
    if end < HEADER + TRAILER:
        raise truncated(src, "lzip file is shorter than one member")
    return struct.unpack("<IQQ", src.read_at(end - TRAILER, TRAILER))


class LzipSource(CodecSource):
    """A multi-member lzip file."""

    codec = "lzip"

    def __init__(self, source: ByteSource, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self._trailing = 0
        # One read at the end tells whether the file is one member; refuse
        # that now so the .info can say what to do (docs/formats.md 6.2).
        _crc, dsize, msize = _trailer(source, source.size)
        if msize == source.size and dsize > SMALL_SINGLE_MEMBER:
            raise UnsupportedError(source.name, "single-member lzip has no restart points "
                                   "and cannot be mounted yet",
                                   "decompress it first: lzip -dc FILE > IMAGE "
                                   "(or recompress with plzip, which writes many members)")

    def _members(self) -> list[tuple[int, int, int, int, int]]:
        """(offset, member size, data size, crc, dict size), first to last."""
        try:
            return self._members_before(self.source.size)
        except ImageError:
            end = self._last_member_end()
            if end is None:
                raise
            self._trailing = self.source.size - end
            return self._members_before(end)

    def _last_member_end(self) -> int | None:
        """Where the last member ends when trailing bytes follow it (lzip -t
        accepts them): found by decoding the last member, None if none."""
        src = self.source
        lo = max(0, src.size - MAX_TRAILING)
        tail = src.read_at(lo, src.size - lo)
        at = len(tail)
        while True:
            at = tail.rfind(MAGIC + b"\x01", 0, at)
            if at < 0:
                return None
            start = lo + at
            dec = _raw_decoder(dict_size(tail[at + 5]))
            pos = start + HEADER
            try:
                while not dec.eof and pos < src.size:
                    chunk = src.read_at(pos, min(1 << 20, src.size - pos))
                    pos += len(chunk)
                    dec.decompress(chunk)
            except lzma.LZMAError:
                continue
            if not dec.eof:
                continue
            end = pos - len(dec.unused_data) + TRAILER
            if end <= src.size and _trailer(src, end)[2] == end - start:
                return end

    def _members_before(self, end: int) -> list[tuple[int, int, int, int, int]]:
        src = self.source
        out = []
        while end > 0:
            crc, dsize, msize = _trailer(src, end)
            start = end - msize
            if msize < HEADER + TRAILER or start < 0:
                raise corrupt(src, f"lzip trailer before byte {end} has an impossible "
                              "member size (the file may be truncated or have trailing data)")
            head = src.read_at(start, HEADER)
            if head[:4] != MAGIC or head[4] != 1:
                raise corrupt(src, f"no lzip member header at byte {start}")
            out.append((start, msize, dsize, crc, dict_size(head[5])))
            end = start
        out.reverse()
        return out

    def _iter_decoded(self) -> Generator[bytes, None, None]:
        src = self.source
        total = src.size
        pos = 0
        while pos < total:
            head = src.read_at(pos, HEADER)
            if len(head) < HEADER or head[:4] != MAGIC:
                if pos:
                    return                    # trailing bytes after the last member
                raise corrupt(src, f"no lzip member header at byte {pos}")
            dec = _raw_decoder(dict_size(head[5]))
            crc = 0
            size = 0
            at = pos + HEADER
            rest = b""
            while not dec.eof:
                chunk = src.read_at(at, 1 << 20)
                if not chunk:
                    raise truncated(src, "lzip member ends before its end marker")
                at += len(chunk)
                try:
                    out = dec.decompress(chunk)
                except lzma.LZMAError as exc:
                    raise corrupt(src, f"lzip data is damaged ({exc})") from None
                crc = zlib.crc32(out, crc)
                size += len(out)
                if out:
                    yield out
            rest = dec.unused_data
            trailer = rest[:TRAILER]
            if len(trailer) < TRAILER:
                trailer += src.read_at(at, TRAILER - len(trailer))
            want_crc, want_size, msize = struct.unpack("<IQQ", trailer)
            if (want_crc, want_size) != (crc, size):
                raise corrupt(src, f"lzip member at byte {pos} fails its CRC or size check")
            pos += msize

    def _build_index(self, build: IndexBuild) -> SeekIndex:
        update = build.update
        members = self._members()
        update(self.source.size)
        starts, meta = [0], []
        out_pos = 0
        for start, msize, dsize, crc, dsz in members:
            if dsize == 0:
                continue
            meta.append([start, msize, dsize, crc, dsz])
            out_pos += dsize
            starts.append(out_pos)
        slow = any(m[2] > MAX_MEMBER for m in meta)
        info: dict[str, Any] = {"members": len(members), "slow": slow}
        if self._trailing:
            info["trailing"] = self._trailing
        return SeekIndex(out_pos, starts, meta, [], info)

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        start, msize, dsize, crc, dsz = index.meta[i]
        src = self.source
        data = src.read_at(start + HEADER, msize - HEADER - TRAILER)
        if len(data) != msize - HEADER - TRAILER:
            raise truncated(src, f"lzip member at byte {start} is cut short")
        dec = _raw_decoder(dsz)
        try:
            out = dec.decompress(data)
        except lzma.LZMAError as exc:
            raise corrupt(src, f"lzip member at byte {start} is damaged ({exc})") from None
        if not dec.eof or len(out) != dsize or zlib.crc32(out) != crc:
            raise corrupt(src, f"lzip member at byte {start} fails its CRC or size check")
        return out

    def _describe(self, index: SeekIndex) -> str:
        n = index.info.get("members", index.spans)
        text = f"{n} members (about {human(index.size / max(n, 1))} each)"
        return text + self._trailing_note(index, "the last member")
