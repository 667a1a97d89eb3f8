"""imagefs: mount partclone, ntfsclone and partimage backups as virtual partitions.

The Python API (:mod:`imagefs.api`)::

    import imagefs
    with imagefs.open("sda1.ext4-ptcl-img.zst.aa") as image:
        print(image.info)
        data = image.pread(0, 4096)

``imagefs.open`` and ``imagefs.Image`` load on first use, so importing a
submodule (the command line, the mount) pays nothing for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imagefs.errors import (
    ChecksumError,
    FormatError,
    ImageError,
    MissingLibraryError,
    NotAnImageError,
    SourceError,
    TruncatedError,
    UnsupportedError,
)
from imagefs.version import __version__

if TYPE_CHECKING:
    from imagefs.api import Image, open

__all__ = ["ChecksumError", "FormatError", "Image", "ImageError", "MissingLibraryError",
           "NotAnImageError", "SourceError", "TruncatedError", "UnsupportedError",
           "__version__", "open"]


def __getattr__(name: str) -> Any:
    if name in ("open", "Image"):
        from imagefs import api
        return getattr(api, name)
    raise AttributeError(f"module 'imagefs' has no attribute {name!r}")
