"""The heap keeper gives freed heap holes back once the process is quiet.

Each case runs in a fresh interpreter: the allocator settings and the heap
shape are the process's own, as in a mount (imagefs.services.memtune).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from imagefs.services.memtune import HeapKeeper

pytestmark = pytest.mark.skipif(not HeapKeeper.available(),
                                reason="needs glibc's mallinfo2/malloc_trim and /proc")

#: Holes made between live 1 MiB blocks, as an LRU of decoded pieces leaves
#: them (well above the keeper's 48 MiB limit).
HOLES_MIB = 160

_SCRIPT = textwrap.dedent("""
    import json, sys
    from imagefs.services import memtune
    memtune.tune_allocator()                  # as the imagefs command does
    keeper = memtune.HeapKeeper()
    # Live and freed 1 MiB blocks in turn: the freed ones are holes between
    # live ones, below the heap's top, so no trim threshold returns them.
    blocks = [b"x" * (1 << 20) for _ in range(2 * {holes})]
    del blocks[::2]
    out = {{"before": memtune._rss_anon()}}
    # 1 ms after the last look, allocating 320 MiB took far more than 5% of
    # that: busy, so no trim.
    out["busy_trimmed"] = keeper.check(0.001)
    out["busy_rss"] = memtune._rss_anon()
    # A look a minute later that found the process quiet in between.
    out["quiet_trimmed"] = keeper.check(60.0)
    out["after"] = memtune._rss_anon()
    out["again_trimmed"] = keeper.check(60.0)  # nothing new to give back
    out["live"] = sum(len(b) for b in blocks)
    print(json.dumps(out))
""")


def _run(script: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_quiet_process_gets_its_heap_holes_back_and_a_busy_one_keeps_them() -> None:
    out = _run(_SCRIPT.format(holes=HOLES_MIB))
    assert out["live"] == HOLES_MIB << 20            # the live blocks stay
    assert out["busy_trimmed"] is False
    assert out["busy_rss"] > out["before"] - (16 << 20)
    assert out["quiet_trimmed"] is True
    # Nearly all holes went back (a few MiB of them border live blocks'
    # headers and the top pad's pages that had never been touched).
    assert out["before"] - out["after"] >= (HOLES_MIB - 24) << 20
    assert out["again_trimmed"] is False


def test_growth_a_trim_cannot_return_costs_one_trim() -> None:
    # Python objects (small, from Python's own arenas, not malloc's heap)
    # count as kept memory too; a trim leaves them, and the floor rises.
    script = textwrap.dedent("""
        import json
        from imagefs.services import memtune
        keeper = memtune.HeapKeeper()
        objects = [(i, str(i)) for i in range(1_500_000)]   # ~150 MB of small objects
        out = [keeper.check(60.0), keeper.check(60.0), keeper.check(60.0)]
        print(json.dumps({"trims": out, "n": len(objects)}))
    """)
    out = _run(script)
    assert out["trims"] == [True, False, False]


def test_the_keeper_thread_stops_when_told() -> None:
    keeper = HeapKeeper(period=0.01)
    keeper.start()
    thread = keeper._thread
    assert thread is not None and thread.is_alive()
    keeper.stop()
    assert not thread.is_alive()
    assert keeper._thread is None
