"""From files to a virtual partition: stacking the layers, and reading the result.

* :mod:`~imagefs.blockio.opener` - the one place that stacks pieces ->
  decompression -> format (what the CLI, the catalog and the API share);
* :mod:`~imagefs.blockio.partition` - :class:`VirtualPartition`, the exact
  bytes of the backed-up partition, read through the shared block cache.
"""

from imagefs.blockio.partition import VirtualPartition

__all__ = ["VirtualPartition"]
