"""The magic numbers that tell the image formats apart (docs/formats.md 2-4).

Kept apart from the parsers so that recognising a format (done for every
file of a scanned tree) does not import every parser: a mount imports the
parsers of the formats it meets only.
"""

from __future__ import annotations

#: partclone's image header starts with this (format 1 and 2 alike).
PARTCLONE_MAGIC = b"partclone-image"
#: ntfsclone's image header: a NUL, then the name.
NTFSCLONE_MAGIC = b"\0ntfsclone-image"
#: partimage's volume header (every volume of a set starts with one).
PARTIMAGE_VOLUME_MAGIC = b"PaRtImAgE-VoLuMe"
#: The size of that volume header: a volume's data follows it.
PARTIMAGE_VOLUME_HEADER = 512


def is_partclone(head: bytes) -> bool:
    """True if ``head`` (the stream's first bytes) starts with the partclone magic."""
    return head.startswith(PARTCLONE_MAGIC)


def is_ntfsclone(head: bytes) -> bool:
    """True if ``head`` (the stream's first bytes) starts with the ntfsclone magic."""
    return head.startswith(NTFSCLONE_MAGIC)


def is_partimage(head: bytes) -> bool:
    """True if ``head`` starts with a partimage volume header's magic (NUL-padded to 32)."""
    return (head.startswith(PARTIMAGE_VOLUME_MAGIC)
            and not head[len(PARTIMAGE_VOLUME_MAGIC):32].strip(b"\0"))
