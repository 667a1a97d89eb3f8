"""Which libfuse the FUSE adapter uses, chosen before mfusepy is imported.

mfusepy looks for ``libfuse.so.2`` first.  imagefs prefers libfuse 3: its
``init`` hands over ``fuse_config`` (kernel cache, timeouts) and the
connection's ``max_read``/``max_readahead``, and Debian-style systems ship
``fuse3`` as the default.  ``FUSE_LIBRARY_PATH`` set by the user wins.
Nothing here imports mfusepy until :func:`load_mfusepy` is called, so
``imagefs version`` can report without mounting anything.
"""

from __future__ import annotations

import ctypes
import functools
import os
from types import ModuleType

#: The libraries tried, best first, by the names the dynamic loader knows
#: them by: loading one is a lookup in the loader's cache, where
#: ``ctypes.util.find_library`` runs ``ldconfig -p`` (8 ms a call, measured,
#: and a mount's start-up asked twice).
_SONAMES = ("libfuse3.so.3", "libfuse.so.2")
_PREFERRED = ("fuse3", "fuse")


def choose_library() -> str | None:
    """The libfuse shared object to load: $FUSE_LIBRARY_PATH, else fuse3, else fuse 2."""
    explicit = os.environ.get("FUSE_LIBRARY_PATH")
    if explicit:
        return explicit
    return _find()


@functools.cache
def _find() -> str | None:
    """The first of the preferred libraries that loads (asked once per process)."""
    for soname in _SONAMES:
        try:
            ctypes.CDLL(soname)
        except OSError:
            continue
        return soname
    from ctypes.util import find_library  # a library installed under another name

    for name in _PREFERRED:
        path = find_library(name)
        if path:
            return path
    return None


def load_mfusepy() -> ModuleType:
    """Import mfusepy bound to :func:`choose_library`'s choice.

    Raises OSError with an installation hint when no libfuse is present.
    """
    path = choose_library()
    if path is None:
        raise OSError("no libfuse found; install it with: apt-get install fuse3")
    os.environ.setdefault("FUSE_LIBRARY_PATH", path)
    import mfusepy  # deliberately late: mfusepy binds the library on import
    return mfusepy


def libfuse_version() -> str:
    """``"3.14 (libfuse3.so.3)"``-style text for ``imagefs version``."""
    path = choose_library()
    if path is None:
        return "not installed (apt-get install fuse3)"
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        return f"cannot load {path}: {exc}"
    version = lib.fuse_version()            # e.g. 314 for 3.14, 29 for 2.9
    base = 100 if version >= 100 else 10
    major, minor = version // base, version % base
    text = f"{major}.{minor}"
    try:
        lib.fuse_pkgversion.restype = ctypes.c_char_p   # libfuse >= 3.0: full version
        text = lib.fuse_pkgversion().decode()
    except AttributeError:
        pass
    return f"{text} ({os.path.basename(path)})"


#: First libfuse with the ``max_threads`` option of its multithreaded loop.
MAX_THREADS_SINCE = (3, 12)


def worker_threads(cpus: int | None = None) -> int:
    """How many threads serve FUSE requests by default: CPUs + 2, 4 to 10.

    Each request runs Python, so threads beyond the cores mostly take turns
    with the interpreter lock, and every turn costs a hand-over.  16 client
    threads of random 4 KiB reads over five compressed images (bench
    ``codecs_mount.random_stage``, 2 CPUs, alternating runs): libfuse's
    default of 10 workers served 2789-2900 reads in 10 s, 6 workers
    2857-3217, 4 workers 3525-4018.  The two threads beyond the cores
    keep requests moving while others wait for a disk or an index build;
    waiting requests queue in the kernel, first come first served.
    """
    n = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(4, min(10, n + 2))


def loop_options(major: int, minor: int, cpus: int | None = None) -> dict[str, int]:
    """The FUSE options that size the request loop for this libfuse version."""
    if (major, minor) >= MAX_THREADS_SINCE:
        return {"max_threads": worker_threads(cpus)}
    return {}                 # libfuse 2 and early 3: no such option (a fixed pool)
