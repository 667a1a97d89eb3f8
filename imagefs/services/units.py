"""Human-readable sizes for messages, ``.info`` files and index descriptions."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human(n: float) -> str:
    """``1.5 MiB``-style text (binary units, one decimal; bytes as a whole number)."""
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_size(n: int) -> str:
    """``human(n)`` plus the exact byte count: ``1.0 MiB (1048576 bytes)``."""
    if n < 1024:
        return f"{n} bytes"
    return f"{human(n)} ({n} bytes)"
