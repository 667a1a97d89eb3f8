"""The command line: the verbs and the mount command.

* :mod:`~imagefs.cli.main` - the entry point: a verb or the mount form;
* :mod:`~imagefs.cli.mount` - ``imagefs SOURCE MOUNTPOINT``: options, the
  background mount, the mount-helper form;
* :mod:`~imagefs.cli.imageverbs` - ``info``, ``verify``, ``version``;
* :mod:`~imagefs.cli.treeverbs` - ``ls`` and ``index`` over a whole tree;
* :mod:`~imagefs.cli.logsetup` - where log records go.
"""

from imagefs.cli.main import main

__all__ = ["main"]
