"""Configuration: :class:`Settings` and how they are read from YAML and ``-o``.

A leaf package like :mod:`imagefs.errors`: the catalog and the command line
import it; it imports no other layer.
"""

from imagefs.config.loading import OVERRIDE_KEYS, apply_overrides, load_config, settings_from_dict
from imagefs.config.settings import (
                                     DEFAULT_CACHE_SIZE,
                                     Settings,
                                     SourceSpec,
                                     parse_bool,
                                     parse_size,
                                     parse_umask,
)

__all__ = ["DEFAULT_CACHE_SIZE", "OVERRIDE_KEYS", "Settings", "SourceSpec", "apply_overrides",
           "parse_bool", "parse_size", "parse_umask",
           "load_config", "settings_from_dict"]
