"""The package's error types.

Every problem with user input surfaces as an :class:`ImageError` (or a
subclass) whose message names the file, what is wrong and what to do.  The
command line prints ``str(error)`` as one line; the FUSE adapter maps errors
to errno values.  Nothing below the CLI prints tracebacks to users.
"""

from __future__ import annotations

import re

#: Line breaks (and the indentation around them) inside a message: a library's
#: multi-line text embedded in a problem must not break the one-line rule.
_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class ImageError(Exception):
    """A backup image (or one of its pieces) cannot be read as claimed.

    ``path`` is the file concerned, ``problem`` a plain sentence of what is
    wrong, ``hint`` what the user can do about it.
    """

    def __init__(self, path: str, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = _BREAKS.sub(" ", problem).strip()
        self.hint = _BREAKS.sub(" ", hint).strip()
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.path}: {self.problem}"
        if self.hint:
            text += f"; {self.hint}"
        return text

    def __str__(self) -> str:
        return self.one_line()


class NotAnImageError(ImageError):
    """The file's content matches no known image format."""


class FormatError(ImageError):
    """A header, bitmap or record stream is malformed or inconsistent."""


class TruncatedError(ImageError):
    """The file ends before the data its header promises."""


class ChecksumError(ImageError):
    """A stored checksum does not match the data it covers."""

    def __init__(self, path: str, problem: str, hint: str = "", *,
                 image_offset: int | None = None, block: int | None = None,
                 logged: bool = False) -> None:
        self.image_offset = image_offset
        self.block = block
        #: The layer that raised it has logged it already (once per bad group).
        self.logged = logged
        super().__init__(path, problem, hint)


class SourceError(ImageError):
    """A piece is missing, unreadable or the piece set is incomplete."""


class SourceChangedError(SourceError):
    """A backing file changed (size, mtime or inode) after it was opened."""


class UnsupportedError(ImageError):
    """A recognised format or variant that imagefs cannot serve (yet)."""


class MissingLibraryError(UnsupportedError):
    """A library this image needs is not installed; the hint names the package."""


class ConfigError(Exception):
    """A configuration file or option is invalid; the message names the key."""


TRUNCATED_HINT = "the backup is incomplete; copy it again from its origin"
CORRUPT_HINT = "the image is damaged; restore it from another copy"
