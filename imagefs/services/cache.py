"""The shared LRU block cache: byte-bounded, thread-safe, one fetch per key.

One instance serves every image of a mount.  ``get_or_load(key, loader)``
returns the cached value or runs ``loader`` exactly once per key even when
many threads ask at the same moment (the others wait for that result).  A
loader's exception reaches every waiter and nothing is cached, so a failed
read is retried next time instead of remembered as wrong bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

#: What the cache holds: bytes, or a read-only view of memory that nothing
#: writes again (the short last piece of a zstd span: codecs/zstdspan.py).
Cached = bytes | memoryview


class _Owner:
    """An object some cached views view: it, their number, what it costs."""

    __slots__ = ("obj", "views", "charge")

    def __init__(self, obj: object, charge: int) -> None:
        self.obj = obj                       # held: its id is not reused while charged
        self.views = 0
        self.charge = charge


class _Pending:
    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Cached | None = None
        self.error: BaseException | None = None


class BlockCache:
    """An LRU of :data:`Cached` values bounded by the memory they keep alive.

    A bytes value costs its length.  A view keeps the whole object it views
    alive (a 128 KiB piece of a 4 MiB zstd segment keeps all 4 MiB), so views
    are charged by that object, once however many of its views are cached:
    counting views by their length let random re-reads that keep one hot
    piece of each of many segments hold up to 32x the budget.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = max(0, int(capacity_bytes))
        self._lock = threading.Lock()
        self._data: OrderedDict[Hashable, Cached] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._owners: dict[int, _Owner] = {}   # by id of the viewed object
        self.size = 0                        # bytes charged (see the class)
        self.hits = 0
        self.misses = 0
        self.loads = 0

    def get_or_load(self, key: Hashable, loader: Callable[[], Cached]) -> Cached:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
                self.hits += 1
                return value
            self.misses += 1
            waiting = self._pending.get(key)
            if waiting is None:
                pending = self._pending[key] = _Pending()
        if waiting is not None:
            waiting.event.wait()
            if waiting.error is not None:
                raise waiting.error
            assert waiting.value is not None      # set before the event
            return waiting.value
        try:
            value = loader()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.error = exc
            pending.event.set()
            raise
        with self._lock:
            self.loads += 1
            del self._pending[key]
            self._insert_locked(key, value)
        pending.value = value
        pending.event.set()
        return value

    def add(self, key: Hashable, value: Cached) -> bool:
        """Cache ``value`` under ``key`` unless it is cached or being loaded
        (never waits for that load): whether it was added."""
        with self._lock:
            if key in self._data or key in self._pending:
                return False
            self._insert_locked(key, value)
            return key in self._data

    def _insert_locked(self, key: Hashable, value: Cached) -> None:
        if 0 < len(value) and _charge(value) <= self.capacity:
            old = self._data.pop(key, None)
            if old is not None:
                self._release_locked(old)
            self._data[key] = value
            self._hold_locked(value)
            while self.size > self.capacity:
                _, evicted = self._data.popitem(last=False)
                self._release_locked(evicted)

    def _hold_locked(self, value: Cached) -> None:
        if isinstance(value, memoryview):
            owner = self._owners.get(id(value.obj))
            if owner is None:
                owner = self._owners[id(value.obj)] = _Owner(value.obj, _charge(value))
                self.size += owner.charge
            owner.views += 1
        else:
            self.size += len(value)

    def _release_locked(self, value: Cached) -> None:
        if isinstance(value, memoryview):
            owner = self._owners[id(value.obj)]
            owner.views -= 1
            if owner.views == 0:
                del self._owners[id(value.obj)]
                self.size -= owner.charge
        else:
            self.size -= len(value)

    def get(self, key: Hashable) -> Cached | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def discard(self, key: Hashable) -> None:
        """Drop one entry if present (a value its reader will not need again)."""
        with self._lock:
            value = self._data.pop(key, None)
            if value is not None:
                self._release_locked(value)

    def discard_prefix(self, owner: Hashable) -> None:
        """Drop every entry whose key is a tuple starting with ``owner``."""
        with self._lock:
            for key in [k for k in self._data if isinstance(k, tuple) and k and k[0] == owner]:
                self._release_locked(self._data.pop(key))

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._owners.clear()
            self.size = 0


def _charge(value: Cached) -> int:
    """The bytes ``value`` keeps alive: a view's whole viewed object."""
    if isinstance(value, memoryview):
        return memoryview(value.obj).nbytes
    return len(value)
