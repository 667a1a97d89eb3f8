"""Where a gzip or bzip2 stream really ends: trailing bytes, truncation.

rapidgzip refuses a file with bytes after its last member ("Failed to parse
gzip/zlib header") although ``gzip -t`` and ``bzip2 -t`` accept it, and
returns a truncated gzip stream short without an error.  When the fast pass
fails, these helpers find the end of the valid stream so that the stream is
served and the trailing bytes are noted, or say in one line that the stream
is incomplete or damaged.

* gzip: members walked with zlib from the start (the rare slow path, about
  zlib's speed);
* bzip2: the 48-bit end-of-stream magic (sqrt(pi)) is bit-aligned; it is
  searched backwards from the end of the file, its byte-aligned middle
  found with ``rfind`` (no decoding).
"""

from __future__ import annotations

import zlib

from imagefs.codecs.problems import corrupt, truncated
from imagefs.io.source import ByteSource

#: bzip2's end-of-stream marker and a stream's header.
BZ_EOS = 0x177245385090
#: How far back from the end of the file trailing bytes are looked for.
MAX_TRAILING = 64 << 20


def gzip_end(src: ByteSource) -> int:
    """The offset just after the last complete gzip member (members from 0 on).

    Raises TruncatedError if a member is cut short, FormatError if damaged.
    """
    pos, total = 0, src.size
    dec = zlib.decompressobj(wbits=31)
    pending = b""
    while True:
        if not pending:
            if pos >= total:
                raise truncated(src, "gzip stream is incomplete: its last member ends "
                                f"before its end marker (file size {total})")
            pending = src.read_at(pos, min(4 << 20, total - pos))
            pos += len(pending)
        try:
            dec.decompress(pending)            # the output is dropped: only framing counts
        except zlib.error as exc:
            raise corrupt(src, f"gzip data is damaged before compressed byte {pos} "
                          f"({exc})") from None
        if not dec.eof:
            pending = b""
            continue
        rest = dec.unused_data
        end = pos - len(rest)
        while len(rest) < 3 and pos < total:
            more = src.read_at(pos, 3 - len(rest))
            rest += more
            pos += len(more)
        if not rest.startswith(b"\x1f\x8b\x08"):
            return end
        dec = zlib.decompressobj(wbits=31)
        pending = rest


def bzip2_end(src: ByteSource) -> int:
    """The offset just after the last bzip2 end-of-stream marker (plus CRC).

    Raises TruncatedError if the file holds no end marker near its end.
    """
    total = src.size
    lo = max(0, total - MAX_TRAILING)
    tail = src.read_at(lo, total - lo)
    best = -1
    for shift in range(8):
        # The marker starting `shift` bits into a byte: bytes 1..5 of the
        # 7-byte window are fixed by it.
        value = BZ_EOS << (8 - shift)           # 56-bit window, marker at bit `shift`
        window = value.to_bytes(7, "big")
        middle = window[1:6]
        at = len(tail)
        while best < 0 or lo + at > best:
            at = tail.rfind(middle, 0, at)
            if at < 1:
                break
            start = at - 1
            got = int.from_bytes(tail[start:start + 7].ljust(7, b"\0"), "big")
            if (got >> (8 - shift)) & ((1 << 48) - 1) == BZ_EOS:
                # marker (48 bits) + CRC (32 bits) from bit `shift` of byte
                # `start`, then padding to the next byte.
                stream_end = lo + start + (shift + 80 + 7) // 8
                if stream_end <= total:
                    best = max(best, stream_end)
                break
    if best < 0:
        raise truncated(src, "bzip2 stream is incomplete: no end-of-stream marker near the "
                        "end of the file")
    _check_bz2_tail(src, best)
    return best


def _check_bz2_tail(src: ByteSource, end: int) -> None:
    """Bytes after ``end`` must not be another bzip2 stream (that would be damage)."""
    rest = src.read_at(end, 10)
    if rest[:3] == b"BZh" and len(rest) >= 4 and 0x31 <= rest[3] <= 0x39:
        raise corrupt(src, f"bzip2 stream at compressed byte {end} is damaged")
