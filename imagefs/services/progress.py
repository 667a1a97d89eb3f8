"""Progress reporting: a tqdm bar on a terminal, periodic log lines otherwise.

The log lines go to the ``imagefs.progress`` logger at INFO, which the
command line lets through at the default level (cli/logsetup.py), so a
long index build of a mount is always in its log.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("imagefs.progress")


#: A pass shorter than this says nothing: most indexes of small images are
#: built in well under a second, and a line each would drown the log.
QUIET_SECONDS = 1.0
#: Then a progress line every this many seconds (percent, rate, time left).
LOG_INTERVAL = 5.0


class _LogProgress:
    """Log lines for a long pass: its start (once it has run a second), its
    progress every few seconds (percent, rate, ETA) and its end.

    Used where no terminal bar fits: mounts (foreground: stderr, background:
    the log) and verbs whose stderr is no terminal.  ``clock`` is for tests.
    """

    def __init__(self, total: int, desc: str, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(total, 1)
        self.desc = desc
        self.done = 0
        self.interval = interval
        self._clock = clock
        self.start = self.last = clock()
        self.started = False         # the start line was logged

    def update(self, n: int) -> None:
        self.done += n
        now = self._clock()
        elapsed = now - self.start
        if not self.started:
            if elapsed < QUIET_SECONDS:
                return
            self.started = True
            self.last = now
            log.info("%s: started, %.0f MB to read", self.desc, self.total / 1e6)
        if now - self.last >= self.interval:
            self.last = now
            rate = self.done / max(elapsed, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0
            log.info("%s: %.0f%% (%.1f MB/s, %.0f s left)", self.desc,
                     min(100.0, 100.0 * self.done / self.total), rate / 1e6, max(eta, 0))

    def close(self) -> None:
        if self.started:
            elapsed = self._clock() - self.start
            log.info("%s: done in %.1f s (%.1f MB/s)", self.desc, elapsed,
                     self.done / max(elapsed, 1e-9) / 1e6)


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
        try:
            yield reporter.update
        finally:
            reporter.close()
