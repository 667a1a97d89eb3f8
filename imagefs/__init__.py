"""imagefs: mount partclone, ntfsclone and partimage backups as virtual partitions."""

from imagefs.version import __version__

__all__ = ["__version__"]
