"""The two errors a codec raises: damaged data and a stream that ends early."""

from __future__ import annotations

from imagefs.errors import CORRUPT_HINT, TRUNCATED_HINT, FormatError, ImageError, TruncatedError
from imagefs.io.source import ByteSource


def corrupt(source: ByteSource, problem: str) -> ImageError:
    """The error for a stream that decodes to something inconsistent."""
    return FormatError(source.name, problem, CORRUPT_HINT)


def truncated(source: ByteSource, problem: str) -> ImageError:
    """The error for a stream that ends before its framing says it should."""
    return TruncatedError(source.name, problem, TRUNCATED_HINT)
