"""Random-access byte sources: the bottom layer every other layer stacks on."""

from imagefs.io.source import (
    ByteSource,
    ConcatSource,
    FdPool,
    FileSource,
    MemorySource,
    SliceSource,
    default_fd_pool,
)

__all__ = [
    "ByteSource", "ConcatSource", "FdPool", "FileSource", "MemorySource",
    "SliceSource", "default_fd_pool",
]
