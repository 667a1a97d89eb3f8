"""The exit status of every ``imagefs`` command, and which error gets which.

One table for all verbs and the mount (also in ``--help``, the man page and
the README), so scripts can tell a typo from a damaged backup from a
machine without FUSE:

====  =====================================================================
0     success
1     usage: a wrong command line, option, -o value or configuration file
2     an image is damaged or unreadable (bad checksum, truncated, missing
      piece, not an image, no such file); ``ls``/``index``: one of the tree
3     the environment: FUSE missing or unusable, allow_other refused by
      /etc/fuse.conf, permission denied, a codec library not installed
130   interrupted (Ctrl-C)
====  =====================================================================
"""

from __future__ import annotations

import errno
import textwrap

from imagefs.errors import ConfigError, ImageError, MissingLibraryError

OK = 0
USAGE = 1
IMAGE = 2
ENVIRONMENT = 3
INTERRUPTED = 130

#: (status, meaning) for help texts and the man page.
TABLE: tuple[tuple[int, str], ...] = (
    (OK, "success"),
    (USAGE, "usage: a wrong command line, option, -o value or configuration file"),
    (IMAGE, "an image is damaged or unreadable (bad checksum, truncated, missing piece, not an "
            "image, no such file); for ls and index: at least one image of the tree"),
    (ENVIRONMENT, "the environment: FUSE missing or unusable, allow_other refused by "
                  "/etc/fuse.conf, permission denied, a codec library not installed"),
    (INTERRUPTED, "interrupted (Ctrl-C)"),
)

_PERMISSION = (errno.EACCES, errno.EPERM)


def code_for(exc: BaseException) -> int:
    """The exit status an error stands for."""
    if isinstance(exc, MissingLibraryError):
        return ENVIRONMENT
    if isinstance(exc, ImageError):
        return IMAGE
    if isinstance(exc, ConfigError):
        return USAGE
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, OSError):
        return ENVIRONMENT if exc.errno in _PERMISSION else IMAGE
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else USAGE


def table_text(indent: str = "  ", width: int = 79) -> str:
    """The table as plain, wrapped text lines."""
    pad = indent + " " * 5
    lines = []
    for status, meaning in TABLE:
        wrapped = textwrap.wrap(meaning, width - len(pad))
        lines.append(f"{indent}{status:<4} {wrapped[0]}")
        lines += [pad + w for w in wrapped[1:]]
    return "\n".join(lines)
