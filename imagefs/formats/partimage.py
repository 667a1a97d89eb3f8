"""partimage images (placeholder until implemented)."""

from __future__ import annotations

from imagefs.errors import UnsupportedError


def is_partimage(head: bytes) -> bool:
    return False


def probe(source):
    raise UnsupportedError(source.name, "partimage support is not implemented yet")
