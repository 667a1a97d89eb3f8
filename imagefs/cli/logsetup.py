"""Logging for the mount: stderr in the foreground, syslog or a file in the background.

Modules log through their own ``logging.getLogger(__name__)``; this module
only decides where records go.  A background mount has no terminal, so it
logs to the configured file, else to syslog (``/dev/log``), else nowhere
but errors are still counted by the catalog's ``.info`` files.
"""

from __future__ import annotations

import logging
import os
import sys

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def level_for(verbose: int, quiet: bool, configured: str = "warning") -> int:
    """-v/-vv/-q win over the configured level."""
    if verbose > 1:
        return logging.DEBUG
    if verbose == 1:
        return logging.INFO
    if quiet:
        return logging.ERROR
    return _LEVELS.get(configured, logging.WARNING)


def setup(level: int, *, foreground: bool, log_file: str | None = None) -> None:
    """Route the ``imagefs`` loggers (replaces handlers set up earlier)."""
    root = logging.getLogger("imagefs")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.setLevel(level)
    root.propagate = False
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s imagefs[%(process)d] "
                                               "%(levelname)s %(name)s: %(message)s"))
    elif foreground:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("imagefs: %(message)s"))
    elif os.path.exists("/dev/log"):
        # Imported only here: it costs a foreground mount 7 ms of start-up.
        from logging.handlers import SysLogHandler

        handler = SysLogHandler(address="/dev/log", facility=SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("imagefs[%(process)d]: %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    # Long passes (index builds) always say that they run, how far they are
    # and when they end, unless only errors are wanted (services/progress.py).
    progress = logging.getLogger("imagefs.progress")
    progress.setLevel(logging.INFO if level <= logging.WARNING else level)
    # mfusepy logs through its own logger ("fuse"); keep its noise at our level.
    fuse_log = logging.getLogger("fuse")
    fuse_log.handlers = [handler]
    fuse_log.setLevel(max(level, logging.WARNING) if level > logging.DEBUG else level)
    fuse_log.propagate = False
