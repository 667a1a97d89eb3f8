"""Decoding the first block after a resume point (the zstd pass's trials).

A resume point is kept only if a decoder started there, with the window
before it as a raw-content prefix and a synthesized frame header, gives
that block's bytes.  libzstd's ``ZSTD_DCtx_refPrefix`` references the
snapshot where python-zstandard copied it twice (into a dictionary, then
a digested dictionary) and made a new decoder for each trial; one libzstd
context serves every trial of a pass.
"""

from __future__ import annotations

from typing import Protocol

from imagefs.codecs.zstdframe import BLOCK_MAX
from imagefs.codecs.zstdstream import StreamDecoder, ZstdStreamError, stream_decoder
from imagefs.io.scatter import buffer_address


class PrefixDecoder(Protocol):
    """Decodes single blocks as the first block of a frame resumed mid-stream."""

    def decode_block(self, prefix: bytes, head: bytes,
                     block: memoryview) -> memoryview | bytes | None:
        """What ``block`` decodes to after frame header ``head``, with ``prefix``
        (a window snapshot) as the history before it; None where the decoder
        refuses it (an offset reaching before the prefix, missing tables).

        The result may be a view of a reused buffer: valid until the next call.
        """

    def close(self) -> None:
        """Free the decoder's memory."""


class _LibzstdPrefixDecoder:
    """One libzstd context reused for every trial of a pass."""

    def __init__(self, dec: StreamDecoder) -> None:
        self._dec = dec
        # One block's output at most; a byte more would show a block that
        # decodes to more than a block can.
        self._out = memoryview(bytearray(BLOCK_MAX + 1))
        self._out_at = buffer_address(self._out)

    def decode_block(self, prefix: bytes, head: bytes,
                     block: memoryview) -> memoryview | bytes | None:
        dec = self._dec
        if not len(block):
            return self._out[:0]           # nothing in, nothing out (no address to give)
        at = buffer_address(block)         # ``block`` and ``prefix`` live through the call
        room = len(self._out)
        try:
            dec.begin(head, prefix)
            used = written = 0
            while True:
                dec.set_input(at + used, len(block) - used)
                dec.set_output(self._out_at + written, room - written)
                ended = dec.step()
                took, wrote = dec.in_pos, dec.out_pos
                used += took
                written += wrote
                if written > BLOCK_MAX:
                    return None
                if used >= len(block) and written < room:
                    return self._out[:written]
                if ended or not (took or wrote):
                    return None            # the frame ended inside the block
        except ZstdStreamError:
            return None

    def close(self) -> None:
        self._dec.close()


class _CopyingPrefixDecoder:
    """python-zstandard with the prefix as a raw-content dictionary (the fallback)."""

    def __init__(self, max_window: int) -> None:
        # Imported here: the fallback's alone (see zstdstream).
        import zstandard
        self._zstandard = zstandard
        self._max_window = max_window

    def decode_block(self, prefix: bytes, head: bytes,
                     block: memoryview) -> memoryview | bytes | None:
        zstandard = self._zstandard
        try:
            if prefix:
                zdict = zstandard.ZstdCompressionDict(prefix,
                                                      dict_type=zstandard.DICT_TYPE_RAWCONTENT)
                dec = zstandard.ZstdDecompressor(dict_data=zdict,
                                                 max_window_size=self._max_window)
            else:
                dec = zstandard.ZstdDecompressor(max_window_size=self._max_window)
            obj = dec.decompressobj()
            obj.decompress(head)
            return obj.decompress(block)
        except zstandard.ZstdError:
            return None

    def close(self) -> None:
        pass


def prefix_decoder(max_window: int) -> PrefixDecoder:
    """A decoder of single resumed blocks, for frames with windows up to ``max_window``."""
    dec = stream_decoder(max_window)
    if dec is not None:
        return _LibzstdPrefixDecoder(dec)
    return _CopyingPrefixDecoder(max_window)
