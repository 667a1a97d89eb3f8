"""xz: blocks from the xz Index, decoded one at a time.

Every xz stream ends with an Index listing each block's unpadded and
uncompressed size, so the seek index costs a few reads at the end of the
file (per concatenated stream), no decompression.  ``xz -T0`` and pixz
write many blocks; each is one span, decoded by wrapping it into a
one-block xz stream (the original stream header, the block, a synthesized
Index and footer) so liblzma checks the block's own integrity check.

A large stream of one block (plain ``xz`` before 5.6) has no restart
point: it takes the sequential slow path, reported in ``index_state``.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections.abc import Generator
from typing import Any

from imagefs.codecs.adapters import drain
from imagefs.codecs.building import IndexBuild
from imagefs.codecs.problems import corrupt, truncated
from imagefs.codecs.seekindex import SeekIndex
from imagefs.codecs.source import CodecSource
from imagefs.services.units import human

HEADER_MAGIC = b"\xfd7zXZ\x00"
FOOTER_MAGIC = b"YZ"
#: A block whose output exceeds this is not decoded as one span (memory);
#: the stream takes the slow path instead.
MAX_SPAN = 256 << 20

#: A single-block stream up to this size is simply one span (decoding it
#: whole on a miss costs well under a second); a larger one is the slow path.
SMALL_SINGLE_BLOCK = 64 << 20
#: How far before the end of the file the last stream footer is looked for.
MAX_TRAILING = 64 << 20


def _vli(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(9):  # a VLI has at most 9 bytes
        if pos >= len(buf):
            raise ValueError("truncated number")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("number too long")


def _enc_vli(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


class XzSource(CodecSource):
    """One or more concatenated xz streams."""

    codec = "xz"

    def _iter_decoded(self) -> Generator[bytes, None, None]:
        src = self.source
        total = src.size
        pos = 0
        dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        pending = b""
        while True:
            if not pending:
                if pos >= total:
                    break
                pending = src.read_at(pos, min(1 << 20, total - pos))
                pos += len(pending)
            if dec.eof:
                # Between streams: padding of zero bytes, then the next one.
                pending = pending.lstrip(b"\x00")
                if not pending:
                    continue
                if not pending.startswith(HEADER_MAGIC[:len(pending)]):
                    return                    # trailing bytes after the last stream
                dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
            try:
                yield from drain(dec, pending)
            except lzma.LZMAError as exc:
                raise corrupt(src, f"xz data is damaged ({exc})") from None
            pending = dec.unused_data if dec.eof else b""
        if not dec.eof:
            raise truncated(src, "xz stream ends before its footer")

    def _build_index(self, build: IndexBuild) -> SeekIndex:
        update = build.update
        src = self.source
        streams = []
        end = src.size
        trailing = 0
        tail = src.read_at(max(0, end - 12), 12)
        if tail[10:12] != FOOTER_MAGIC and tail.strip(b"\x00"):
            # Garbage after the last stream (xz -t refuses it, but the stream
            # is whole): the last footer before it marks the end.
            found = self._last_footer()
            if found is not None:
                trailing, end = end - found, found
        while end > 0:
            # Stream padding: multiples of four zero bytes.
            while end >= 4 and src.read_at(end - 4, 4) == b"\x00\x00\x00\x00":
                end -= 4
            if end == 0:
                break
            streams.append(self._stream_blocks(end))
            end = streams[-1][0]
        update(src.size)
        streams.reverse()
        starts, meta = [0], []
        out_pos = 0
        blocks = 0
        largest = 0
        for stream_start, block_list in streams:
            for block_c, unpadded, ulen in block_list:
                blocks += 1
                largest = max(largest, ulen)
                if ulen == 0:
                    continue
                meta.append([stream_start, block_c, unpadded, ulen])
                out_pos += ulen
                starts.append(out_pos)
        slow = (blocks == 1 and largest > SMALL_SINGLE_BLOCK) or largest > MAX_SPAN
        info: dict[str, Any] = {"streams": len(streams), "blocks": blocks, "slow": slow}
        if trailing:
            info["trailing"] = trailing
        return SeekIndex(out_pos, starts, meta, [], info)

    def _last_footer(self) -> int | None:
        """The end of the last stream footer (magic and CRC right) near the end."""
        src = self.source
        lo = max(0, src.size - MAX_TRAILING)
        tail = src.read_at(lo, src.size - lo)
        at = len(tail)
        while True:
            at = tail.rfind(FOOTER_MAGIC, 0, at)
            if at < 10:
                return None
            footer = tail[at - 10:at + 2]
            crc = struct.unpack_from("<I", footer)[0]
            if zlib.crc32(footer[4:10]) == crc:
                return lo + at + 2

    def _stream_blocks(self, end: int) -> tuple[int, list]:
        """Parse the stream ending at ``end``: (start, [(block offset, unpadded, size)])."""
        src = self.source
        if end < 24:
            raise truncated(src, "xz stream is shorter than its header and footer")
        footer = src.read_at(end - 12, 12)
        if footer[10:12] != FOOTER_MAGIC:
            raise corrupt(src, f"no xz stream footer before byte {end}"
                          " (the file may be truncated)")
        crc, backward, flags = struct.unpack("<IIH", footer[:10])
        if zlib.crc32(footer[4:10]) != crc:
            raise corrupt(src, "xz stream footer fails its CRC")
        index_size = (backward + 1) * 4
        index_start = end - 12 - index_size
        if index_start < 12:
            raise corrupt(src, "xz index size is larger than the stream")
        index = src.read_at(index_start, index_size)
        if index[0] != 0 or zlib.crc32(index[:-4]) != struct.unpack("<I", index[-4:])[0]:
            raise corrupt(src, "xz index is damaged")
        try:
            count, pos = _vli(index, 1)
            records = []
            for _ in range(count):
                unpadded, pos = _vli(index, pos)
                ulen, pos = _vli(index, pos)
                records.append((unpadded, ulen))
        except ValueError as exc:
            raise corrupt(src, f"xz index is damaged ({exc})") from None
        blocks_size = sum(_pad4(u) for u, _ in records)
        start = index_start - blocks_size - 12
        if start < 0:
            raise corrupt(src, "xz index lists more data than the stream holds")
        header = src.read_at(start, 12)
        if header[:6] != HEADER_MAGIC or struct.unpack("<H", header[6:8])[0] != flags:
            raise corrupt(src, f"xz stream header not found at byte {start}")
        out = []
        pos = start + 12
        for unpadded, ulen in records:
            out.append((pos, unpadded, ulen))
            pos += _pad4(unpadded)
        return start, out

    def _decode_span(self, index: SeekIndex, i: int) -> bytes:
        stream_start, block_c, unpadded, ulen = index.meta[i]
        src = self.source
        header = src.read_at(stream_start, 12)
        block = src.read_at(block_c, _pad4(unpadded))
        if len(block) != _pad4(unpadded):
            raise truncated(src, f"xz block at byte {block_c} is cut short")
        body = b"\x00" + _enc_vli(1) + _enc_vli(unpadded) + _enc_vli(ulen)
        body += b"\x00" * (_pad4(len(body)) - len(body))
        body += struct.pack("<I", zlib.crc32(body))
        tail = struct.pack("<I", len(body) // 4 - 1) + header[6:8]
        footer = struct.pack("<I", zlib.crc32(tail)) + tail + FOOTER_MAGIC
        try:
            return lzma.decompress(header + block + body + footer, lzma.FORMAT_XZ)
        except lzma.LZMAError as exc:
            raise corrupt(src, f"xz block at byte {block_c} is damaged ({exc})") from None

    def _describe(self, index: SeekIndex) -> str:
        info = index.info
        text = f"{info.get('streams', 1)} stream(s), {info.get('blocks', 0)} blocks"
        if info.get("slow"):
            text += (": no restart points, reads decode from the start (slow path; "
                     "recompress with xz -T0 or pixz for random access)")
        else:
            text += f" (about {human(index.size / max(index.spans, 1))} each)"
        return text + self._trailing_note(index, "the last stream")
