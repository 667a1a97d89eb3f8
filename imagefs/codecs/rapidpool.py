"""The bounded pool of rapidgzip decoders over all streams, and its threads.

rapidgzip objects are not thread-safe, and one left open at interpreter
exit aborts the process (docs/design.md 3).  So each decoder is lent to one
thread at a time, their number is bounded over all sources, and every
decoder is closed by ``close_all``, by a finalizer when its source is
dropped, and at exit (after the running index builds were stopped).

rapidgzip's allocator reserves about 1 GiB of address space in every thread
that uses it (VmSize: +1.1 GB per thread, RSS unchanged).  A FUSE daemon
serves reads from many threads, so under ``ulimit -v``/``prlimit --as`` the
first few gzip reads exhausted the address space and the daemon died with
SIGSEGV inside rapidgzip.  Every rapidgzip call therefore runs on a few
threads of its own (:func:`run`), as many as the address-space limit
allows (:func:`plan`).
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import re
import resource
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from imagefs.codecs import tuning
from imagefs.codecs.building import cancel_all
from imagefs.errors import SourceError

#: Address space rapidgzip reserves per thread that uses it (measured 1.1 GB
#: per thread; 1.3 GB peak for the first) and what the rest of the daemon
#: needs beside it (Python, FUSE threads, other codecs' windows).
AS_PER_THREAD = 1200 << 20
AS_REST = 400 << 20

#: Live rapidgzip decoders over all sources.  Each holds its own cache of
#: decoded chunks (~80 MB measured after a few dozen span reads) although
#: imagefs caches the spans itself, so they are few and shared LRU-wise:
#: an idle decoder of another image is closed to make room.
MAX_DECODERS = min(4, max(2, os.cpu_count() or 1))

_pools: weakref.WeakSet[DecoderPool] = weakref.WeakSet()
_pools_lock = threading.Lock()

_global = threading.Condition()
_idle: OrderedDict[int, tuple[DecoderPool, object]] = OrderedDict()   # LRU, all sources
_total = 0                                  # live decoders, idle or lent


class DecoderPool:
    """The rapidgzip decoders of one source, each lent to one thread at a time.

    The number of decoders is bounded over all sources (``MAX_DECODERS``).
    ``close_all`` closes the idle ones at once and the lent ones when they
    come back, so a decoder is never closed under a reading thread (except
    ``force`` at interpreter exit, when an open one would abort the process).
    """

    def __init__(self, factory: Callable[[], object]) -> None:
        self._factory = factory
        self._lent: dict[int, object] = {}
        self._retired: set[int] = set()
        with _pools_lock:
            _pools.add(self)

    def acquire(self) -> Any:
        global _total
        evicted = []
        with _global:
            while True:
                for key in reversed(_idle):
                    if _idle[key][0] is self:
                        dec = _idle.pop(key)[1]
                        self._lent[id(dec)] = dec
                        break
                else:
                    dec = None
                if dec is not None:
                    break
                if _total < MAX_DECODERS:
                    _total += 1
                    break
                if _idle:
                    evicted.append(_idle.popitem(last=False)[1][1])
                    _total -= 1
                    continue
                _global.wait()
        for old in evicted:
            _close_quietly(old)
        if dec is not None:
            return dec
        try:
            dec = self._factory()
        except BaseException:
            with _global:
                _total -= 1
                _global.notify_all()
            raise
        with _global:
            self._lent[id(dec)] = dec
        return dec

    def release(self, dec: Any, broken: bool = False) -> None:
        global _total
        with _global:
            self._lent.pop(id(dec), None)
            retire = broken or id(dec) in self._retired
            self._retired.discard(id(dec))
            if retire:
                _total -= 1
            else:
                _idle[id(dec)] = (self, dec)
            _global.notify_all()
        if retire:
            _close_quietly(dec)

    def close_all(self, force: bool = False) -> None:
        global _total
        with _global:
            doomed = [_idle.pop(key)[1] for key in [k for k, v in _idle.items() if v[0] is self]]
            if force:
                doomed += list(self._lent.values())
                self._lent.clear()
            else:
                self._retired.update(self._lent)
            _total -= len(doomed)
            _global.notify_all()
        for dec in doomed:
            _close_quietly(dec)


def _close_quietly(dec: Any) -> None:
    def close() -> None:
        try:
            dec.close()
        except Exception:  # noqa: BLE001 - closing must never raise at exit
            pass
    try:
        run(close)
    except SourceError:
        close()


# -- the rapidgzip threads ------------------------------------------------------

#: (priority, order, job, future): a waiting reader's job (0) before a
#: prefetch or index pass (1), first come first served within each.
_jobs: queue.PriorityQueue[tuple[int, int, Callable[[], Any], Future[Any]]] = \
    queue.PriorityQueue()
_order = itertools.count()
_threads: list[threading.Thread] = []
_threads_lock = threading.Lock()
_plan: tuple[int, int] | None = None


def plan() -> tuple[int, int]:
    """(rapidgzip threads, threads of an index pass) that fit the address space.

    Unlimited: MAX_DECODERS threads and passes of any width.  Under a limit:
    what fits beside the daemon's own needs; (0, 0) if not even one does.
    """
    global _plan
    with _threads_lock:
        if _plan is not None:
            return _plan
        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            _plan = (MAX_DECODERS, 1 << 10)
            return _plan
        try:
            with open("/proc/self/status") as f:
                found = re.search(r"VmSize:\s+(\d+)", f.read())
            used = int(found.group(1)) << 10 if found else 0
        except OSError:
            used = 0
        fit = max(0, soft - used - AS_REST) // AS_PER_THREAD
        # One thread decodes spans and runs passes; a pass's own threads are
        # what is left beyond the decoding threads.
        workers = int(min(MAX_DECODERS, max(fit // 2, min(fit, 1))))
        _plan = (workers, int(max(1, fit - workers)))
        return _plan


def run(fn: Callable[[], Any]) -> Any:
    """``fn()`` on one of the rapidgzip threads; its result or its exception.

    Raises SourceError when the address-space limit leaves room for none.
    """
    if threading.current_thread().name.startswith("imagefs-rapidgzip"):
        return fn()                      # already on one (a close from a job)
    workers, _ = plan()
    if workers < 1:
        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
        raise SourceError("rapidgzip", "not enough address space for the gzip/bzip2 decoder "
                          f"under the process's limit of {soft >> 20} MiB",
                          "raise the limit (ulimit -v, prlimit --as) to at least 2 GiB")
    with _threads_lock:
        while len(_threads) < workers:
            t = threading.Thread(target=_worker, daemon=True,
                                 name=f"imagefs-rapidgzip-{len(_threads)}")
            _threads.append(t)
            t.start()
    future: Future[Any] = Future()
    _jobs.put((0 if tuning.urgent() else 1, next(_order), fn, future))
    return future.result()


def _worker() -> None:
    while True:
        _prio, _n, fn, future = _jobs.get()
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)


@atexit.register
def _close_everything() -> None:
    # Builds first: a pass still reading through rapidgzip at exit would
    # abort the process when its decoder is torn down under it.
    cancel_all()
    with _pools_lock:
        pools = list(_pools)
    for pool in pools:
        pool.close_all(force=True)
