"""ntfsclone images (placeholder until implemented)."""

from __future__ import annotations

from imagefs.errors import UnsupportedError


def is_ntfsclone(head: bytes) -> bool:
    return False


def probe(source):
    raise UnsupportedError(source.name, "ntfsclone support is not implemented yet")
