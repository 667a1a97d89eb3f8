"""The FUSE boundary: the only package that imports mfusepy.

* :mod:`~imagefs.fuse.library` - which libfuse to load (chosen before mfusepy
  is imported, so ``imagefs version`` can report without mounting);
* :mod:`~imagefs.fuse.adapter` - the mfusepy operations over the catalog and
  the errno mapping.
"""
