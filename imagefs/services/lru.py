"""A small thread-safe LRU map bounded by total weight.

Used where a bounded memo of derived values is wanted: the catalog's
resolved paths, the files layer's inodes, listings and extent maps.
(The block cache, services/cache.py, is the byte-weighted cache with
one loader per key for decoded data.)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A thread-safe LRU bounded by total weight (entries weigh 1 by default)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._weight = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V, weight: int = 1) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._weight -= old[1]
            self._items[key] = (value, weight)
            self._weight += weight
            # The newest entry always stays, however heavy: the directory
            # being listed must be cached or every lookup in it re-reads it.
            while self._weight > self.capacity and len(self._items) > 1:
                _, (_, w) = self._items.popitem(last=False)
                self._weight -= w

    def items(self) -> list[tuple[K, V]]:
        """A snapshot, newest first."""
        with self._lock:
            return [(k, v[0]) for k, v in reversed(self._items.items())]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weight = 0

    def __len__(self) -> int:
        return len(self._items)
