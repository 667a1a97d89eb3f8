"""Keeping the index directory small: source records, pruning, the size cap.

Every saved index ``KIND-KEY.idx`` gets a record ``KIND-KEY.src`` beside it
(JSON: the backup files it describes with their size and mtime), because
the key itself is a one-way hash.  From the records:

* :func:`prune` removes the indexes whose backups are gone or changed (a
  changed backup gets a new key and a new index; the old one would stay
  forever) -- ``imagefs index --prune [TREE]``;
* :func:`evict` keeps the directory under a size cap (``-o index_max=``)
  by removing the least recently used indexes first (a load touches the
  file's mtime);
* :func:`supersede` removes, when an index is saved, the other indexes of
  the same kind over the same backups (an older imagefs's format, other
  codec settings): their backups are still there, so nothing else would.

Neither ever removes an index this process has loaded or saved: a mount
reads the large parts of a loaded index lazily from its file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".src"
INDEX_SUFFIX = ".idx"
#: A temporary file of an interrupted save is removed after this long (a
#: save in progress is younger: an index of a 1 TB image is written in seconds).
STALE_TEMP_SECONDS = 3600

_in_use: set[str] = set()
_in_use_lock = threading.Lock()


def mark_in_use(path: str) -> None:
    """This process reads ``path``: never evict or prune it."""
    with _in_use_lock:
        _in_use.add(os.path.abspath(path))


def _is_in_use(path: str) -> bool:
    with _in_use_lock:
        return os.path.abspath(path) in _in_use


def record_path(index_path: str) -> str:
    return index_path[:-len(INDEX_SUFFIX)] + RECORD_SUFFIX


def write_record(index_path: str, kind: str,
                 files: Iterable[tuple[str, int, int]]) -> None:
    """Record which files ``index_path`` describes (atomically; errors are logged)."""
    mark_in_use(index_path)
    record = {"version": 1, "kind": kind, "files": [list(f) for f in files]}
    path = record_path(index_path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot record the sources of %s (%s); --prune will not know them",
                    index_path, exc)


def read_record(index_path: str) -> list[tuple[str, int, int]] | None:
    """The files an index describes, or None when it has no (valid) record."""
    record = _read_record(index_path)
    return None if record is None else record[1]


def _read_record(index_path: str) -> tuple[str, list[tuple[str, int, int]]] | None:
    """(kind, files) of an index's record, or None when it has no (valid) record."""
    try:
        with open(record_path(index_path), encoding="utf-8") as f:
            data = json.load(f)
        return str(data["kind"]), [(str(p), int(s), int(m)) for p, s, m in data["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: record path -> ((inode, size, mtime), what it says): every save runs
#: supersede over every record of its kind, so ``imagefs index`` of N images
#: over M records of earlier runs would parse N x M of them; a record is
#: rewritten by os.replace (a new inode), so an unchanged stamp means
#: unchanged contents.
_seen_records: dict[str, tuple[tuple[int, int, int],
                               tuple[str, list[tuple[str, int, int]]] | None]] = {}
_seen_lock = threading.Lock()


def _read_record_once(index_path: str) -> tuple[str, list[tuple[str, int, int]]] | None:
    """:func:`_read_record`, parsed again only when the record file changed."""
    path = record_path(index_path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _seen_lock:
        seen = _seen_records.get(path)
    if seen is not None and seen[0] == stamp:
        return seen[1]
    record = _read_record(index_path)
    with _seen_lock:
        _seen_records[path] = (stamp, record)
    return record


def supersede(index_path: str, kind: str, files: Iterable[tuple[str, int, int]]) -> list[Removed]:
    """Remove the other indexes of ``kind`` over exactly ``files`` (see the module doc).

    Indexes this process uses stay (a mount reads their blobs lazily).
    """
    wanted = [tuple(f) for f in files]
    keep = os.path.abspath(index_path)
    prefix = f"{kind}-"                      # IndexStore.path_for: KIND-KEY.idx
    removed: list[Removed] = []
    for entry in _entries(os.path.dirname(keep)):
        path = entry.path
        # Only the records of this kind are read: every save runs this.
        if not (entry.name.startswith(prefix) and entry.name.endswith(INDEX_SUFFIX)) \
                or os.path.abspath(path) == keep or _is_in_use(path):
            continue
        record = _read_record_once(path)
        if record is None or record[0] != kind or record[1] != wanted:
            continue
        size = _size(path)
        _remove(path)
        removed.append(Removed(path, f"replaced by {os.path.basename(index_path)}", size))
        log.info("index %s removed: %s replaces it", path, os.path.basename(index_path))
    return removed


@dataclass(frozen=True)
class Removed:
    """One index removed (or, in a dry run, to be removed), and why."""

    path: str
    reason: str
    size: int


def _entries(directory: str) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(directory) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _size(index_path: str) -> int:
    total = 0
    for p in (index_path, record_path(index_path)):
        try:
            total += os.stat(p).st_size
        except OSError:
            pass
    return total


def _remove(index_path: str) -> None:
    with _seen_lock:
        _seen_records.pop(record_path(index_path), None)
    for p in (index_path, record_path(index_path)):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def why_stale(files: list[tuple[str, int, int]]) -> str | None:
    """Why an index over ``files`` can no longer serve (None: it still can)."""
    for path, size, mtime_ns in files:
        try:
            st = os.stat(path)
        except OSError:
            return f"{path} is gone"
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            return f"{path} changed"
    return None


def _under(path: str, tree: str) -> bool:
    tree = tree.rstrip("/") + "/"
    return path.startswith(tree)


def prune(directory: str, tree: str | None = None, dry_run: bool = False) -> list[Removed]:
    """Remove the indexes whose backups are gone or changed.

    With ``tree`` only indexes of backups below it are looked at (and an
    index without a record is kept: nothing says where its backups are);
    without, every index of the directory, recordless ones included (they
    are rebuilt, with a record, on next use).  Leftovers of interrupted
    saves and records without their index go too.
    """
    real_tree = os.path.realpath(tree) if tree else None
    removed: list[Removed] = []
    now = time.time()
    names = {e.name for e in _entries(directory)}
    for entry in sorted(_entries(directory), key=lambda e: e.name):
        path = entry.path
        if entry.name.startswith(".tmp-"):
            st = _stat(entry)                 # None: that save has just finished
            if real_tree is None and st is not None and now - st.st_mtime > STALE_TEMP_SECONDS:
                removed.append(Removed(path, "left over by an interrupted save", st.st_size))
                if not dry_run:
                    _remove_plain(path)
            continue
        if entry.name.endswith(RECORD_SUFFIX):
            index_name = entry.name[:-len(RECORD_SUFFIX)] + INDEX_SUFFIX
            st = _stat(entry)
            if real_tree is None and index_name not in names and st is not None:
                removed.append(Removed(path, "record of an index that is gone", st.st_size))
                if not dry_run:
                    _remove_plain(path)
            continue
        if not entry.name.endswith(INDEX_SUFFIX) or _is_in_use(path):
            continue
        files = read_record(path)
        if files is None:
            if real_tree is not None:
                continue
            reason: str | None = "no record of its backups (written by an older imagefs)"
        else:
            if real_tree is not None and not any(_under(os.path.realpath(f[0]), real_tree)
                                                 or _under(f[0], real_tree) for f in files):
                continue
            reason = why_stale(files)
        if reason is not None:
            removed.append(Removed(path, reason, _size(path)))
            if not dry_run:
                _remove(path)
    return removed


def _remove_plain(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    """The entry's stat, None if it is gone (another save's eviction or
    supersession, another process's prune: they run at the same time)."""
    try:
        return entry.stat()
    except FileNotFoundError:
        return None


def usage(directory: str) -> int:
    """Bytes the index directory holds (indexes and records)."""
    sizes = (_stat(e) for e in _entries(directory)
             if e.name.endswith((INDEX_SUFFIX, RECORD_SUFFIX)))
    return sum(st.st_size for st in sizes if st is not None)


def evict(directory: str, max_bytes: int, keep: str | None = None) -> list[Removed]:
    """Remove least recently used indexes until the directory fits ``max_bytes``.

    ``keep`` (the index just saved) and indexes in use by this process stay,
    even if the cap cannot be met without them.
    """
    # One scan gives both the total and the candidates (this runs after every save).
    stats = {e.name: st for e in _entries(directory)
             if e.name.endswith((INDEX_SUFFIX, RECORD_SUFFIX)) and (st := _stat(e)) is not None}
    total = sum(st.st_size for st in stats.values())
    removed: list[Removed] = []
    if total <= max_bytes:
        return removed
    keep_abs = os.path.abspath(keep) if keep else None
    indexes = sorted((st.st_mtime_ns, name) for name, st in stats.items()
                     if name.endswith(INDEX_SUFFIX))
    for _mtime, name in indexes:
        if total <= max_bytes:
            break
        path = os.path.join(directory, name)
        if os.path.abspath(path) == keep_abs or _is_in_use(path):
            continue
        record = stats.get(name[:-len(INDEX_SUFFIX)] + RECORD_SUFFIX)
        size = stats[name].st_size + (record.st_size if record is not None else 0)
        _remove(path)
        total -= size
        removed.append(Removed(path, "least recently used (index_max)", size))
        log.info("index %s removed to stay under the index_max of %d bytes", path, max_bytes)
    return removed
