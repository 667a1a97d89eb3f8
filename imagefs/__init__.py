"""imagefs: mount partclone, ntfsclone and partimage backups as virtual partitions."""

__version__ = "0.1.0"
