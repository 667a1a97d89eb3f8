"""Library output on stderr becomes our log, not lines of its own.

C++ libraries (rapidgzip) print their own lines to the process's stderr
before our message ("Unexpected end of file when getting block ...").
:func:`install` puts a pipe on file descriptor 2 once per process; a thread
forwards what is ours (log lines starting with ``imagefs``, progress bars,
Python tracebacks and warnings) to the real stderr as it comes, and keeps
every other line (:func:`recent`), shown only when ``imagefs.library``
logs at debug level (``-vv``).  The error itself reaches the user as our
one-line message.  (The forwarder never logs through ``logging``: a
handler writing to fd 2 would write into its own pipe.)
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
from collections import deque

log = logging.getLogger("imagefs.library")

#: What stays on stderr: our log lines, progress bars (tqdm), Python's own
#: tracebacks and warnings.  Everything else came from a library.
_OURS = re.compile(rb"^(imagefs|\s|Traceback|\w*(Warning|Error|Exception)\b|.*\r|.*\d+%\|)")

_lock = threading.Lock()
_installed = False
_original: int | None = None
_library_lines = 0
_recent: deque[str] = deque(maxlen=20)
_thread: threading.Thread | None = None


def install() -> bool:
    """Route library output on fd 2 to the log (once; False if it cannot)."""
    global _installed, _original
    with _lock:
        if _installed:
            return True
        try:
            original = os.dup(2)
            read_end, write_end = os.pipe()
            os.dup2(write_end, 2)
            os.close(write_end)
        except OSError:
            return False
        _original = original
        _installed = True
    global _thread
    _thread = threading.Thread(target=_forward, args=(read_end, original), daemon=True,
                               name="imagefs-stderr")
    _thread.start()
    atexit.register(_restore)
    return True


def library_lines() -> int:
    """How many library lines were held back so far (tests)."""
    return _library_lines


def recent() -> list[str]:
    """The last library lines held back (newest last)."""
    return list(_recent)


def _forward(read_end: int, original: int) -> None:
    global _library_lines
    pending = b""
    while True:
        try:
            data = os.read(read_end, 65536)
        except OSError:
            return
        if not data:
            return
        pending += data
        while True:
            cut = min((i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0),
                      default=-1)
            if cut < 0:
                break
            line, pending = pending[:cut + 1], pending[cut + 1:]
            if _OURS.match(line) or not line.strip():
                _write(original, line)
            else:
                _library_lines += 1
                text = line.decode("utf-8", "replace").rstrip()
                _recent.append(text)
                if log.isEnabledFor(logging.DEBUG):
                    _write(original, f"imagefs: library output: {text}\n".encode())
        if len(pending) > 4096:             # no line end for long: pass it on
            _write(original, pending)
            pending = b""


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass


def _restore() -> None:
    """Put the real stderr back at exit and forward what is still in the pipe.

    (Python prints an uncaught exception before the exit handlers run: it is
    in the pipe, and must not be lost.)
    """
    with _lock:
        if _original is None:
            return
        try:
            os.dup2(_original, 2)      # the pipe's last write end goes: the reader ends
        except OSError:
            return
    if _thread is not None:
        _thread.join(2.0)
