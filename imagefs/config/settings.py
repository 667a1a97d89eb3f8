"""The settings of a mount and the parsers of their values.

:class:`Settings` is everything a mount needs besides SOURCE and MOUNTPOINT;
:mod:`~imagefs.config.loading` fills it from a YAML file and ``-o``
options.  Every problem raises :class:`~imagefs.errors.ConfigError` whose
message names the key and what was expected.
"""

from __future__ import annotations

import re

from imagefs.errors import ConfigError
from imagefs.records import field, record

#: 256 MiB: a few seconds of sequential reading, enough to keep the hot
#: chunks of several images while staying small beside the page cache.
DEFAULT_CACHE_SIZE = 256 << 20

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
LOG_LEVELS = ("debug", "info", "warning", "error")


@record
class SourceSpec:
    """One entry of ``sources``: a directory tree or a single image."""

    path: str
    name: str | None = None                 # entry name at the mount root
    include: list[str] = field(default_factory=list)   # globs; empty = everything
    exclude: list[str] = field(default_factory=list)


@record
class Settings:
    """Everything a mount needs besides SOURCE and MOUNTPOINT."""

    sources: list[SourceSpec] = field(default_factory=list)
    cache_size: int = DEFAULT_CACHE_SIZE
    index_dir: str | None = None
    index_max: int | None = None            # size cap of the index directory; None: none
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    codec_threads: int = 0                  # 0: let each codec choose
    files: bool = True                      # VNAME.files/ views (-o nofiles turns them off)
    max_open_files: int | None = None       # descriptor pool bound; None: from RLIMIT_NOFILE
    #: Check each checksum group of an image on its first read (EIO if bad).
    verify: bool = True
    log_level: str = "warning"
    log_file: str | None = None             # background logging target; None: syslog
    config_path: str | None = None          # where these settings came from


def parse_size(value: object, where: str = "size") -> int:
    """``"256M"``, ``"1GiB"``, ``"4096"`` or an int -> bytes (binary units)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size such as 256M or 1G, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: expected a size >= 0, got {value}")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"{where}: expected a size such as 256M or 1G, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_umask(value: object, where: str = "umask") -> int:
    """A umask: octal text (``"022"``) or an int as YAML produced it.

    YAML 1.1 reads an unquoted ``022`` as octal already (18), so an int is
    taken as the value itself; text is always read as octal.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"(0o)?[0-7]{1,4}", value.strip()):
        number = int(value.strip().replace("0o", ""), 8)
    else:
        raise ConfigError(f"{where}: expected an octal umask such as '022', got {value!r}")
    if not 0 <= number <= 0o7777:
        raise ConfigError(f"{where}: expected an octal umask such as '022', got {value!r}")
    return number


def parse_bool(value: object, where: str) -> bool:
    """yes/no, true/false, on/off, 1/0 (any case) or a YAML bool; anything else is refused."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"{where}: expected yes or no (also true/false, on/off, 1/0), "
                      f"got {value!r}")


def parse_int(value: object, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{where}: expected a number >= {minimum}, got {number}")
    return number
