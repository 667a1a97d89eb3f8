"""partclone images with XXH checksums, re-encoded from real CRC32 ones.

Debian's partclone 0.3.23 cannot write the XXH modes (they exist from
0.3.39 and 0.3.46), so tests make them from an image the real partclone
wrote: same header and data, the checksum records recomputed (hand-made
bytes, the only ones).
"""

from __future__ import annotations

import struct

from imagefs.formats import probe
from imagefs.formats.checksums import pc_crc32
from imagefs.io import MemorySource

#: partclone's checksum mode -> digest size in bytes.
XXH_SIZES = {0x30: 8, 0x31: 16}


def recode_xxh(src: bytes, mode: int, reseed: bool = True, bpc: int | None = None) -> bytes:
    """``src`` (a real CRC32 partclone image) with ``mode`` checksums every ``bpc`` blocks
    (default: the image's own), reseeded per group or running."""
    import xxhash

    header = probe(MemorySource(src))
    image = header.open()
    bs = header.block_size
    used = image.stored_blocks
    data = image.layout.read_ranks(0, used)
    bpc = bpc or header.blocks_per_checksum
    size = XXH_SIZES[mode]
    algo = xxhash.xxh64 if mode == 0x30 else xxhash.xxh3_128
    head = bytearray(src[:header.data_start])
    struct.pack_into("<HHIB", head, 96, mode, size, bpc, 1 if reseed else 0)
    struct.pack_into("<I", head, 106, pc_crc32(bytes(head[:106])))
    out = [bytes(head)]
    state = algo()
    for g in range(0, used, bpc):
        chunk = data[g * bs:min(used, g + bpc) * bs]
        if reseed:
            state = algo()
        state.update(chunk)
        out += [chunk, state.intdigest().to_bytes(size, "little")]
    return b"".join(out)
