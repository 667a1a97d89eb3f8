"""Progress reporting: a tqdm bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("imagefs.progress")


class _LogProgress:
    """Logs percentage and rate every ``interval`` seconds (background mounts)."""

    def __init__(self, total: int, desc: str, interval: float = 10.0) -> None:
        self.total = max(total, 1)
        self.desc = desc
        self.done = 0
        self.interval = interval
        self.start = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0
            log.info("%s: %.0f%% (%.1f MB/s, %.0f s left)", self.desc,
                     100.0 * self.done / self.total, rate / 1e6, eta)

    def close(self) -> None:
        pass


@contextmanager
def progress_bar(total: int, desc: str,
                 enabled: bool | None = None) -> Iterator[Callable[[int], None]]:
    """Yield an ``update(nbytes)`` callable; a bar only when stderr is a TTY."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if enabled:
        from tqdm import tqdm
        bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                   leave=False, file=sys.stderr)
        try:
            yield bar.update
        finally:
            bar.close()
    else:
        reporter = _LogProgress(total, desc)
        yield reporter.update
