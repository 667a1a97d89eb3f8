"""Filling :class:`~imagefs.config.settings.Settings` from YAML and ``-o`` options.

The file is read with ``yaml.safe_load`` and validated key by key.  Every
problem raises :class:`~imagefs.errors.ConfigError` whose message names the
file, the key path (``sources[1].include``) and what was expected; unknown
keys are errors, because a misspelt key silently ignored is a setting the
user believes in but does not get.  Command-line values (``-o
cache_size=...``) are applied afterwards with :func:`apply_overrides` and
win over the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from imagefs.config.settings import (
    LOG_LEVELS,
    Settings,
    SourceSpec,
    parse_bool,
    parse_int,
    parse_size,
    parse_umask,
)
from imagefs.errors import ConfigError


def _str_list(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of glob patterns (strings)")
    return list(value)


def _mapping(value: object, where: str, allowed: dict[str, str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(allowed)}")
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{where}{'.' if where else ''}{key}: unknown key; "
                              f"expected one of {', '.join(allowed)}")
    return value


_TOP = {"sources": "list", "cache_size": "size", "index_dir": "path", "index_max": "size",
        "mount": "mapping",
        "codecs": "mapping", "logging": "mapping", "max_open_files": "number",
        "verify": "bool"}
_SOURCE = {"path": "path", "name": "text", "include": "globs", "exclude": "globs"}
_MOUNT = {"allow_other": "bool", "uid": "number", "gid": "number", "umask": "octal",
          "files": "bool", "verify": "bool"}
_CODECS = {"threads": "number"}
_LOGGING = {"level": "text", "file": "path"}


def _source(raw: object, where: str, base_dir: str) -> SourceSpec:
    if isinstance(raw, str):
        raw = {"path": raw}
    data = _mapping(raw, where, _SOURCE)
    if "path" not in data or not isinstance(data["path"], str) or not data["path"]:
        raise ConfigError(f"{where}.path: expected the path of a directory or an image")
    path = os.path.join(base_dir, os.path.expanduser(data["path"]))
    name = data.get("name")
    if name is not None and (not isinstance(name, str) or not name or "/" in name
                             or name in (".", "..")):
        raise ConfigError(f"{where}.name: expected a file name without '/', got {name!r}")
    return SourceSpec(path=os.path.normpath(path), name=name,
                      include=_str_list(data.get("include", []), f"{where}.include"),
                      exclude=_str_list(data.get("exclude", []), f"{where}.exclude"))


def settings_from_dict(data: object, origin: str = "<config>",
                       base_dir: str = ".") -> Settings:
    """Validate a parsed YAML document into :class:`Settings`."""
    settings = Settings(config_path=origin)
    if data is None:
        return settings
    try:
        top = _mapping(data, "", _TOP)
        if "sources" in top:
            raw = top["sources"]
            if not isinstance(raw, list):
                raise ConfigError("sources: expected a list of directories or images")
            settings.sources = [_source(s, f"sources[{i}]", base_dir) for i, s in enumerate(raw)]
        if "cache_size" in top:
            settings.cache_size = parse_size(top["cache_size"], "cache_size")
        if "index_dir" in top:
            if not isinstance(top["index_dir"], str):
                raise ConfigError("index_dir: expected a directory path")
            settings.index_dir = os.path.join(base_dir, os.path.expanduser(top["index_dir"]))
        if "index_max" in top:
            settings.index_max = parse_size(top["index_max"], "index_max") or None
        if "max_open_files" in top:
            settings.max_open_files = parse_int(top["max_open_files"], "max_open_files", 16)
        mount = _mapping(top.get("mount"), "mount", _MOUNT)
        if "allow_other" in mount:
            settings.allow_other = parse_bool(mount["allow_other"], "mount.allow_other")
        if "files" in mount:
            settings.files = parse_bool(mount["files"], "mount.files")
        for key in ("uid", "gid"):
            if key in mount:
                setattr(settings, key, parse_int(mount[key], f"mount.{key}"))
        if "umask" in mount:
            settings.umask = parse_umask(mount["umask"], "mount.umask")
        if "verify" in top and "verify" in mount:
            raise ConfigError("verify: given both at the top level and under mount; keep one")
        for where, section in (("verify", top), ("mount.verify", mount)):
            if "verify" in section:
                settings.verify = parse_bool(section["verify"], where)
        codecs = _mapping(top.get("codecs"), "codecs", _CODECS)
        if "threads" in codecs:
            settings.codec_threads = parse_int(codecs["threads"], "codecs.threads")
        logging_ = _mapping(top.get("logging"), "logging", _LOGGING)
        if "level" in logging_:
            level = str(logging_["level"]).lower()
            if level not in LOG_LEVELS:
                raise ConfigError(f"logging.level: expected one of {', '.join(LOG_LEVELS)}, "
                                  f"got {logging_['level']!r}")
            settings.log_level = level
        if "file" in logging_:
            if not isinstance(logging_["file"], str):
                raise ConfigError("logging.file: expected a file path")
            settings.log_file = os.path.join(base_dir, os.path.expanduser(logging_["file"]))
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    return settings


def load_config(path: str) -> Settings:
    """Read and validate a YAML configuration file.

    Relative paths inside the file are relative to the file's directory.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return settings_from_dict(data, path, os.path.dirname(os.path.abspath(path)))


# -o keys that override settings, with their parser.
_OVERRIDES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "cache_size": ("cache_size", lambda v, w: parse_size(v, w)),
    "index_dir": ("index_dir", lambda v, w: os.path.abspath(os.path.expanduser(v))),
    "index_max": ("index_max", lambda v, w: parse_size(v, w) or None),
    "uid": ("uid", lambda v, w: parse_int(v, w)),
    "gid": ("gid", lambda v, w: parse_int(v, w)),
    "umask": ("umask", lambda v, w: parse_umask(v, w)),
    "allow_other": ("allow_other", lambda v, w: True if v == "" else parse_bool(v, w)),
    "log": ("log_file", lambda v, w: os.path.abspath(os.path.expanduser(v))),
    "log_level": ("log_level", lambda v, w: _log_level(v, w)),
    "codec_threads": ("codec_threads", lambda v, w: parse_int(v, w)),
    "max_open_files": ("max_open_files", lambda v, w: parse_int(v, w, 16)),
    "files": ("files", lambda v, w: True if v == "" else parse_bool(v, w)),
    "verify": ("verify", lambda v, w: True if v == "" else parse_bool(v, w)),
}


def _log_level(value: str, where: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise ConfigError(f"{where}: expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return value.lower()


OVERRIDE_KEYS = frozenset(_OVERRIDES)


def apply_overrides(settings: Settings, options: dict[str, str]) -> Settings:
    """Apply ``-o key=value`` settings (command line wins over the file)."""
    for key, value in options.items():
        if key not in _OVERRIDES:
            raise ConfigError(f"-o {key}: not an imagefs option")
        attr, parse = _OVERRIDES[key]
        setattr(settings, attr, parse(value, f"-o {key}"))
    return settings
