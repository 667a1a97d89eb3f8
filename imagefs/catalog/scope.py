"""Which part of a source tree is shown: its root and the include/exclude globs."""

from __future__ import annotations

import fnmatch
import os
from typing import NamedTuple


class Scope(NamedTuple):
    """Where a subtree comes from: its source root and the globs that filter it.

    Patterns (fnmatch) match the path relative to the root and the bare
    file name.  ``include`` limits which files are shown (directories are
    always entered); ``exclude`` hides files and whole directories.
    """

    root: str                             # real path of the source root
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def _matches(self, rel: str, patterns: tuple[str, ...]) -> bool:
        base = os.path.basename(rel)
        return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(base, p) for p in patterns)

    def shows_file(self, rel: str) -> bool:
        """Whether the file at ``rel`` (relative to the root) is shown."""
        if self.exclude and self._matches(rel, self.exclude):
            return False
        return not self.include or self._matches(rel, self.include)

    def shows_dir(self, rel: str) -> bool:
        """Whether the directory at ``rel`` is shown (and entered)."""
        return not (self.exclude and self._matches(rel, self.exclude))
