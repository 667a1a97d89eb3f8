"""Where persisted indexes live, how they are keyed, written and loaded.

Indexes (ntfsclone run lists, codec seek indexes) are derived data: they live
in ``$XDG_CACHE_HOME/imagefs`` (or a configured directory), never beside the
backups.  Each index file is named by a key computed from the source's
pieces (path, size, mtime), so a changed source gets a new key; the payload
also carries the key and a checksum, so a stale or corrupt file is detected
on load and rebuilt, never trusted.  Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterable
from typing import BinaryIO, Generic, TypeVar

from imagefs.services.fastzlib import crc32

log = logging.getLogger(__name__)

_MAGIC = b"IMAGEFS-INDEX\x00\x01\x00"   # 16 bytes; last byte pair = container version
_HEADER = struct.Struct("<16s32sQI")     # magic, key digest, payload length, crc32

#: Payloads from this size on are mapped, not read.  A read copies the file
#: into freshly allocated memory: for the bench's 2 GiB zstd image (a 103 MB
#: index, mostly window snapshots) 25,000 page faults and 83-102 ms on every
#: mount's first use of the index, against 9-10 ms mapped (the page cache's
#: own pages, checked in place; bench/RESULTS.md, twenty-fourth session).
#: The mapping lives only while the payload is checked and decoded: imagefs
#: replaces index files by rename and never shortens one in place, and only
#: a file cut short by hand within those milliseconds could fault a read.
MAP_PAYLOAD = 1 << 20

#: A payload as it is written: one buffer, or parts written in order (a zstd
#: index's snapshots are not joined into one 100 MB copy first).
PayloadParts = bytes | Iterable[bytes | memoryview]


def default_index_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imagefs")


#: One backup file as an index key sees it: (absolute path, size, mtime in ns).
FileStat = tuple[str, int, int]


def file_stats(paths: Iterable[str]) -> list[FileStat]:
    """(absolute path, size, mtime_ns) of each file (OSError if one is missing)."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((os.path.abspath(path), st.st_size, st.st_mtime_ns))
    return out


def key_from_stats(kind: str, stats: Iterable[FileStat], extra: str = "") -> str:
    """The hex key of :func:`source_key` from stats taken already."""
    import hashlib  # here: OpenSSL's load is start-up time of every mount

    h = hashlib.sha256()
    h.update(kind.encode())
    h.update(b"\0")
    h.update(extra.encode())
    for path, size, mtime_ns in stats:
        h.update(b"\0")
        h.update(path.encode("utf-8", "surrogateescape"))
        h.update(f"\0{size}\0{mtime_ns}".encode())
    return h.hexdigest()


def source_key(kind: str, paths: Iterable[str], extra: str = "") -> str:
    """A hex key for an index of ``kind`` over the files ``paths``.

    Includes each file's absolute path, size and mtime (ns), so the key
    changes whenever a piece is replaced, appended to or touched.
    """
    return key_from_stats(kind, file_stats(paths), extra)


class IndexStore:
    """Load and save index payloads (bytes) by key in one directory.

    ``max_bytes`` caps the directory: after a save, the least recently used
    indexes are removed until it fits (:mod:`~imagefs.services.indexprune`).
    """

    def __init__(self, directory: str | None = None, max_bytes: int | None = None) -> None:
        self.directory = directory or default_index_dir()
        self.max_bytes = max_bytes

    def path_for(self, kind: str, key: str) -> str:
        return os.path.join(self.directory, f"{kind}-{key[:40]}.idx")

    def load(self, kind: str, key: str) -> bytes | memoryview | None:
        """The payload saved under ``key``, or None if absent, stale or corrupt.

        A large payload is a read-only view of the mapped file: it stays
        valid while it is referenced (the file is only ever replaced by a
        rename, never rewritten in place), and the caller drops it once it
        is decoded.
        """
        path = self.path_for(kind, key)
        try:
            with open(path, "rb") as f:
                head = f.read(_HEADER.size)
                if len(head) < _HEADER.size:
                    raise ValueError("short header")
                magic, digest, length, crc = _HEADER.unpack(head)
                if magic != _MAGIC:
                    raise ValueError("bad magic")
                if digest != bytes.fromhex(key)[:32]:
                    raise ValueError("key mismatch")
                payload = _read_payload(f, length)
                problem = ("wrong payload length" if len(payload) != length else
                           "payload checksum mismatch" if crc32(payload) != crc else "")
                if problem:
                    if isinstance(payload, memoryview):
                        payload.release()   # not mapped while the traceback lives
                    raise ValueError(problem)
            _touch(path)
            return payload
        except FileNotFoundError:
            return None
        except (OSError, ValueError, struct.error) as exc:
            log.warning("index %s is unusable (%s); rebuilding it", path, exc)
            return None

    def save(self, kind: str, key: str, payload: PayloadParts,
             sources: list[FileStat] | None = None) -> str | None:
        """Atomically write ``payload`` (one buffer or its parts, in order);
        returns the path, or None if not writable.

        ``sources`` (the files the index describes) are recorded beside it,
        so that ``imagefs index --prune`` can tell when they are gone.
        """
        import tempfile  # here, not at the top: see _touch

        from imagefs.services import indexprune
        path = self.path_for(kind, key)
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".idx")
            try:
                parts = [payload] if isinstance(payload, bytes) else payload
                length = crc = 0
                tag = bytes.fromhex(key)[:32]
                with os.fdopen(fd, "wb") as f:
                    # One pass over the parts (a zstd index's snapshots are read
                    # back from the pass's temporary file one at a time); the
                    # header is written again once its length and CRC are known.
                    f.write(_HEADER.pack(_MAGIC, tag, 0, 0))
                    for part in parts:
                        length += len(part)
                        crc = crc32(part, crc)
                        f.write(part)
                    f.seek(0)
                    f.write(_HEADER.pack(_MAGIC, tag, length, crc))
                os.replace(tmp, path)
                if sources:
                    indexprune.write_record(path, kind, sources)
                    indexprune.supersede(path, kind, sources)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as exc:
            log.warning("cannot save index in %s (%s); it will be rebuilt next time",
                        self.directory, exc)
            return None
        if self.max_bytes:
            indexprune.evict(self.directory, self.max_bytes, keep=path)
        return path


def _read_payload(f: BinaryIO, length: int) -> bytes | memoryview:
    """The ``length`` payload bytes after the header of open index file ``f``
    (one byte more where the file is longer, so that the caller notices)."""
    if length >= MAP_PAYLOAD:
        import mmap  # here: a mount of uncompressed images never loads a large index

        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):       # a file system that cannot map: read it
            pass
        else:
            # The view keeps the mapping; it is unmapped when the view goes.
            return memoryview(mapped)[_HEADER.size:_HEADER.size + length + 1]
    return f.read(length + 1)


def _touch(path: str) -> None:
    """Mark an index as just used (the size cap removes the least recently used)."""
    # Imported only where an index is loaded or saved: a mount of
    # uncompressed images never does, and the prune module with json was
    # ~1 ms of its start (-X importtime; bench/startup.py).
    from imagefs.services import indexprune
    indexprune.mark_in_use(path)
    try:
        os.utime(path)
    except OSError:
        pass                   # a read-only index directory still serves


_T = TypeVar("_T")


class PersistedIndex(Generic[_T]):
    """Load, validate, build and atomically save one index, the same way for every kind.

    ``kind`` names the index family (``codec-zstd``, ``ntfsclone``), ``paths``
    are the files whose bytes the index describes (None: not persistable, the
    index lives in memory only) and ``extra`` separates variants of one kind
    over the same files.  A payload that fails ``decode`` is logged once and
    rebuilt, never trusted.
    """

    def __init__(self, store: IndexStore | None, kind: str, paths: list[str] | None,
                 extra: str = "", name: str = "") -> None:
        self.store = store
        self.kind = kind
        self.name = name or (paths[0] if paths else kind)
        self.key: str | None = None
        self._files: list[FileStat] | None = None
        if store is not None and paths:
            try:
                self._files = file_stats(paths)
                self.key = key_from_stats(kind, self._files, extra)
            except OSError as exc:
                log.warning("%s: cannot stat the files for the index key (%s); the index is "
                            "kept in memory only", self.name, exc)

    @property
    def path(self) -> str | None:
        """The index file's path, when the index is persistable."""
        if self.store is None or self.key is None:
            return None
        return self.store.path_for(self.kind, self.key)

    def load(self, decode: Callable[[bytes | memoryview, str], _T]) -> _T | None:
        """The saved index decoded by ``decode(payload, path)``, or None.

        ``decode`` raises ValueError (or KeyError, TypeError, IndexError,
        struct.error) for a payload it cannot use; that is logged and the
        index is rebuilt.  It copies what it keeps: a large payload is a view
        of the mapped file (:meth:`IndexStore.load`), released when it returns.
        """
        if self.store is None or self.key is None:
            return None
        path = self.store.path_for(self.kind, self.key)
        payload = self.store.load(self.kind, self.key)
        if payload is None:
            return None
        try:
            return decode(payload, path)
        except (ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
            log.warning("index %s is unusable (%s); rebuilding it", path, exc)
            return None
        finally:
            if isinstance(payload, memoryview):
                payload.release()           # unmapped now unless decode kept a view

    def save(self, payload: PayloadParts) -> str | None:
        """Write ``payload`` atomically; the path, or None if not persisted."""
        if self.store is None or self.key is None:
            return None
        return self.store.save(self.kind, self.key, payload, self._files)
