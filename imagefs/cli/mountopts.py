"""The ``-o`` list: imagefs's own keys, fstab keys to drop, libfuse's to pass on.

``mount -t fuse.imagefs SRC MNT -o ro,...`` and fstab lines make
``mount.fuse3`` run ``imagefs SRC MNT -o OPTS``, so the list mixes three
kinds of keys (:func:`split_options`): imagefs's own (``config=``,
``cache_size=`` ...; the settings keys of :mod:`imagefs.config`), ones only
fstab tools care about (``nofail``, ``noauto``, ``x-*`` ... dropped) and
libfuse's (passed on).  :data:`OPTION_HELP` documents every key for
``--help`` and the man page; a test checks it names each settings key.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

from imagefs.config import OVERRIDE_KEYS, Settings, apply_overrides, load_config, parse_bool
from imagefs.records import field, record

#: Options only fstab, mount(8), systemd or autofs care about.
DROPPED = frozenset({"nofail", "noauto", "auto", "user", "users", "nouser", "owner",
                     "group", "_netdev", "defaults", "ro", "rw", "loop", "bg", "fg"})
DROPPED_PREFIXES = ("x-", "comment=", "x-systemd", "helper=")
#: Boolean flags imagefs handles itself rather than libfuse (``nonempty``,
#: ``nonempty=yes`` ...; ``=no`` turns them off).
OWN_FLAGS = frozenset({"nonempty", "foreground", "debug"})

#: Every -o key with its meaning, in the order --help lists them.
OPTION_HELP: tuple[tuple[str, str], ...] = (
    ("config=FILE", "YAML configuration (same as -c FILE)"),
    ("cache_size=SIZE", "the shared block cache for all images (default 256M)"),
    ("index_dir=DIR", "where indexes are kept (default $XDG_CACHE_HOME/imagefs)"),
    ("index_max=SIZE", "size cap of the index directory: the least recently used indexes "
                       "are removed first (default: no cap)"),
    ("uid=N, gid=N, umask=OCTAL", "owner and permission bits shown (default: those of the "
                                  "backups, minus write bits)"),
    ("allow_other[=BOOL]", "let other users, root included, read the mount (ordinary users "
                           "need user_allow_other in /etc/fuse.conf)"),
    ("log=FILE, log_level=LEVEL", "where a background mount logs (default: syslog) and how "
                                  "much (debug, info, warning, error)"),
    ("max_open_files=N", "how many backup files stay open at once"),
    ("codec_threads=N", "CPU threads for index passes and decoding ahead (default: one per "
                        "CPU; 1 = no background decoding)"),
    ("verify=BOOL", "check the stored checksums of the data as it is read"),
    ("files=BOOL, nofiles", "the files view VNAME.files/ beside each image whose file "
                            "system imagefs reads (default yes)"),
    ("nonempty[=BOOL]", "mount over a non-empty directory"),
    ("foreground[=BOOL], debug[=BOOL]", "the same as -f and -d"),
    ("nofail, noauto, auto, user, users, _netdev, defaults, x-*, comment=",
     "fstab/systemd options; ignored by imagefs"),
    ("ro, rw", "ignored: the mount is always read-only"),
    ("anything else", "passed to libfuse (max_read=, fsname=, ...)"),
)

#: BOOL values: what parse_bool accepts.
BOOL_WORDS = "yes/no, true/false, on/off, 1/0"


@record
class Options:
    """The split ``-o`` list."""

    own: dict[str, str] = field(default_factory=dict)     # imagefs settings
    flags: set[str] = field(default_factory=set)          # imagefs flags that are on
    fuse: dict[str, object] = field(default_factory=dict)  # passed to libfuse
    dropped: list[str] = field(default_factory=list)
    config: str | None = None


def split_options(values: Sequence[str]) -> Options:
    """Sort ``-o`` values (each a comma list) into imagefs / dropped / libfuse keys.

    A bad value of a boolean flag raises ConfigError (one line); the values
    of settings keys are checked by :func:`imagefs.config.apply_overrides`.
    """
    out = Options()
    for value in values:
        for item in _split_commas(value):
            if not item:
                continue
            key, eq, val = item.partition("=")
            if key == "config":
                out.config = val
            elif item == "nofiles":           # the same as files=no
                out.own["files"] = "no"
            elif key in OVERRIDE_KEYS:
                out.own[key] = val
            elif item in DROPPED or key in DROPPED or item.startswith(DROPPED_PREFIXES):
                out.dropped.append(item)
            elif key in OWN_FLAGS:
                if not eq or parse_bool(val, f"-o {key}"):
                    out.flags.add(key)
                else:
                    out.flags.discard(key)
            else:
                out.fuse[key] = val if eq else True
    return out


def settings_for(config: str | None, index_dir: str | None, opts: Options) -> Settings:
    """The settings of one command: ``-c CONFIG`` (or ``-o config=``), then
    ``--index-dir``, then the ``-o`` keys of imagefs's own (the mount and the
    tree verbs build them the same way)."""
    path = config or opts.config
    settings = load_config(path) if path else Settings()
    if index_dir:
        settings.index_dir = os.path.abspath(os.path.expanduser(index_dir))
    apply_overrides(settings, opts.own)
    return settings


def _split_commas(value: str) -> list[str]:
    """Split on commas not escaped with a backslash (libfuse's own convention)."""
    items, cur, escaped = [], [], False
    for ch in value:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items]


def help_text(indent: str = "  ", width: int = 79) -> str:
    """The -o keys as aligned, wrapped text lines (for --help)."""
    key_width = 32
    pad = indent + " " * (key_width + 1)
    lines = []
    for key, meaning in OPTION_HELP:
        wrapped = textwrap.wrap(meaning, width - len(pad))
        if len(key) > key_width:
            lines.append(f"{indent}{key}")
        else:
            lines.append(f"{indent}{key:<{key_width}} {wrapped.pop(0)}")
        lines += [pad + w for w in wrapped]
    lines.append(f"{indent}BOOL is one of {BOOL_WORDS}; a flag alone means yes")
    return "\n".join(lines)
