"""Bottom-level services that every layer may use; they import no other layer.

* :mod:`~imagefs.services.cache` - the shared byte-bounded LRU block cache
  (one instance per mount; virtual partitions and codec spans keep their
  decoded bytes in it).
* :mod:`~imagefs.services.indexstore` - where derived indexes (codec seek
  indexes, ntfsclone run lists) are persisted, keyed by their source files,
  and the one load/validate/build/save helper both index kinds use.
* :mod:`~imagefs.services.progress` - a progress bar on a terminal, periodic
  log lines otherwise.
* :mod:`~imagefs.services.memtune` - glibc allocator tuning for large
  short-lived buffers, and the heap keeper that gives freed holes back
  once a mount is quiet.
* :mod:`~imagefs.services.units` - human-readable sizes.

Everything here imports only :mod:`imagefs.errors` and the standard library.
"""
