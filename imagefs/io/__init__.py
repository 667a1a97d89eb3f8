"""Random-access byte sources: the bottom layer every other layer stacks on.

* :mod:`~imagefs.io.source` - the ``ByteSource`` protocol and its plain
  implementations (file, memory, slice, concatenation);
* :mod:`~imagefs.io.scatter` - ``read_into``: filling caller buffers, one
  ``preadv`` for files;
* :mod:`~imagefs.io.fdpool` - the bounded pool of open descriptors;
* :mod:`~imagefs.io.pieces` - piece sets (``split`` pieces, partimage
  volumes): naming and the one rule for grouping them.
"""

from imagefs.io.fdpool import FdPool, default_fd_pool
from imagefs.io.scatter import read_into
from imagefs.io.source import ByteSource, ConcatSource, FileSource, MemorySource, SliceSource

__all__ = [
    "ByteSource", "ConcatSource", "FdPool", "FileSource", "MemorySource",
    "SliceSource", "default_fd_pool", "read_into",
]
