"""Verify on read: each checksum group is checked on its first read, once.

A :class:`GroupChecker` sits on a :class:`~imagefs.formats.layout.GroupedLayout`
whose groups carry a checksum record (:mod:`~imagefs.formats.groupsums`).
It keeps one bit per group: set once the group matched its record (or has
no record to check, like partimage's final partial chunk), so later reads
of that group cost one bit test.  A group that does not match is remembered
with its error: every read touching it answers that error (EIO through
FUSE), the header is marked damaged, and nothing of it is ever served.

The zero-copy read path stays: a read's data is still scattered by one
``preadv`` straight into the caller's buffer.  When the read touches
unverified groups the same ``preadv`` is widened to whole groups - the
parts of a group outside the caller's range land in scratch space, and so
do the checksum records (for running-register sums also the record before
the first group) - and the sums are computed over what landed in the
buffer and the scratch before the read returns.  A read covering whole
groups is thus checked in place; a small read of an unverified group reads
its whole group once.  A source that already holds those outside parts in
memory (a decompressed stream's cached pieces: ``peek_views``) has them
summed where they lie instead of copied into scratch.

Running digests (partclone XXH without reseed) can only be checked from the
first group on: the first read past the checked prefix hashes forward from
there, once, under ``_seq_lock`` (other images are not held up); a mismatch
makes that group and every later one unreadable, since no later digest can
be trusted without the earlier data.

Threading: ``_lock`` guards the bits, the bad-group table, the damage notes
and ``_busy``, the groups some thread is checking right now (sums are
computed outside the lock).  A read touching a group another thread is
checking waits for that check instead of widening itself: FUSE serves a
sequential reader's readahead with several threads at once, and two checks
of one group would each read the other's bytes - on a decompressed stream
after the other had taken them, so their pieces were gone and decoded again.
A thread waits for busy groups before it claims any, so no two wait for
each other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imagefs.errors import CORRUPT_HINT, ChecksumError
from imagefs.formats.groupsums import GroupSum
from imagefs.io.scatter import peek_views, read_into, scatter, split_views

if TYPE_CHECKING:
    from imagefs.formats.layout import GroupedLayout

log = logging.getLogger(__name__)

#: Scratch space kept per thread for widened reads: 4 MiB covers two 1 MiB
#: groups (partclone's default bpc 256 at 4 KiB blocks) with room to spare.
#: Larger needs (Clonezilla's 10 MiB groups) get a one-off anonymous map,
#: whose zero pages cost nothing until the read lands in them.
SCRATCH_KEEP = 4 << 20
#: A running-digest catch-up reads about this much per read call.
SEQ_CHUNK = 4 << 20
#: Damaged groups listed one by one in .info notes; the rest are counted.
MAX_NOTES = 8

_tls = threading.local()


def _scratch(size: int) -> memoryview:
    """Writable scratch of at least ``size`` bytes, private to this thread."""
    if size > SCRATCH_KEEP:
        import mmap  # only past SCRATCH_KEEP (10 MiB groups): not worth loading in every start
        return memoryview(mmap.mmap(-1, size))
    buf: bytearray | None = getattr(_tls, "buf", None)
    if buf is None or len(buf) < size:
        buf = bytearray(max(size, 64 << 10))
        _tls.buf = buf
    return memoryview(buf)


class GroupChecker:
    """Remembers which groups of a layout were checked; checks the others on read.

    ``data_bytes`` is the layout's data length (stored blocks x block size),
    ``describe(group)`` names a group for messages (its partition bytes and
    image offset), ``on_damage(summary, note)`` is told about each bad group.
    ``last_has_record``: whether a final partial group is followed by a
    record (partclone: yes; partimage: no record after a partial chunk).
    """

    def __init__(self, layout: GroupedLayout, data_bytes: int, algo: GroupSum,
                 describe: Callable[[int], str],
                 on_damage: Callable[[str, str], None] | None = None,
                 last_has_record: bool = True) -> None:
        self.layout = layout
        self.algo = algo
        self.data_bytes = data_bytes
        self.group_bytes = layout.group * layout.block_size
        self.groups = -(-data_bytes // self.group_bytes) if self.group_bytes else 0
        self.describe = describe
        self._on_damage = on_damage
        self.enabled = True
        self._bits = bytearray((self.groups + 7) // 8)
        self._done = 0
        self.complete = self.groups == 0
        self._bad: dict[int, ChecksumError] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)   # a busy group was released
        self._busy: set[int] = set()
        self._seq_lock = threading.Lock()
        self._frontier = 0                  # sequential sums: groups checked in order
        self._state: Any = None             # ... and the digest state after them
        self._broken_at: int | None = None  # ... and the group where they stopped matching
        self._last_has_record = last_has_record
        if not last_has_record and data_bytes % max(self.group_bytes, 1):
            self._mark([self.groups - 1])    # nothing to check there

    # ------------------------------------------------------------ state
    @property
    def checked(self) -> int:
        """How many groups are known good (or have nothing to check)."""
        return self._done

    @property
    def damaged(self) -> int:
        return len(self._bad)

    def _mark(self, groups: list[int]) -> None:
        with self._lock:
            bits = self._bits
            for g in groups:
                byte, bit = g >> 3, 1 << (g & 7)
                if not bits[byte] & bit:
                    bits[byte] |= bit
                    self._done += 1
            if self._done >= self.groups:
                self.complete = True

    def _fail(self, group: int, reason: str = "does not match") -> ChecksumError:
        """Remember ``group`` as bad (once) and return its error."""
        with self._lock:
            known = self._bad.get(group)
            if known is not None:
                return known
            where = self.describe(group)
            layout = self.layout
            offset = layout.data_start + group * layout.stride
            error = ChecksumError(layout.source.name, f"{self.algo.name} of {where} {reason}; "
                                  "reads there fail", CORRUPT_HINT, image_offset=offset,
                                  logged=True)
            self._bad[group] = error
            count = len(self._bad)
        log.error("%s: %s", layout.source.name, error.problem)
        if self._on_damage is not None:
            first = next(iter(self._bad.values()))
            summary = first.problem
            if count > 1:
                summary += f" (and {count - 1} more damaged group{'s' if count > 2 else ''})"
            self._on_damage(summary, error.problem if count <= MAX_NOTES else "")
        return error

    def pending(self, g0: int, g1: int) -> list[int]:
        """The groups in ``[g0, g1]`` still to check; raises a known bad group's error."""
        bits = self._bits
        width = g1 - g0 + 1
        x = int.from_bytes(bits[g0 >> 3:(g1 >> 3) + 1], "little") >> (g0 & 7)
        mask = (1 << width) - 1
        if x & mask == mask:
            return []
        todo = [g0 + i for i in range(width) if not (x >> i) & 1]
        if self._bad:
            for g in todo:
                error = self._bad.get(g)
                if error is not None:
                    raise _copy(error)
        return todo

    # ------------------------------------------------------------ reads
    def read_into(self, pos: int, dest: memoryview) -> bool:
        """Serve a layout read that touches unchecked groups; False if none are.

        On False the layout does its plain scatter read (every group the read
        touches is known good).  Raises ChecksumError for a bad group.
        """
        gb = self.group_bytes
        g0 = pos // gb
        g1 = min((pos + len(dest) - 1) // gb, self.groups - 1)
        todo = self.pending(g0, g1)
        if not todo:
            return False
        if self.algo.sequential:
            self._advance(todo[-1])
            return False
        todo = self._claim(todo)
        if not todo:
            return False                      # checked by another thread meanwhile
        try:
            self._verified_read(pos, dest, g0, g1, todo)
        finally:
            self._release(todo)
        return True

    def _claim(self, todo: list[int]) -> list[int]:
        """Wait until no other thread checks any of ``todo``; claim those still unchecked."""
        with self._idle:
            while any(g in self._busy for g in todo):
                self._idle.wait()
            bits = self._bits
            left = [g for g in todo if not bits[g >> 3] & (1 << (g & 7))]
            for g in left:
                error = self._bad.get(g)
                if error is not None:
                    raise _copy(error)
            self._busy.update(left)
            return left

    def _release(self, groups: list[int]) -> None:
        with self._idle:
            self._busy.difference_update(groups)
            self._idle.notify_all()

    def _has_record(self, group: int) -> bool:
        return group < self.groups - 1 or self.data_bytes % self.group_bytes == 0 \
            or self._last_has_record

    def _verified_read(self, pos: int, dest: memoryview, g0: int, g1: int,
                       todo: list[int]) -> None:
        """One scatter read widened to the unchecked groups, then their sums."""
        layout = self.layout
        gb = self.group_bytes
        tr = layout.trailer
        end = pos + len(dest)
        wanted = set(todo)
        lo = g0 * gb if g0 in wanted else pos
        hi = min((g1 + 1) * gb, self.data_bytes) if g1 in wanted else end
        scratch = _scratch((pos - lo) + max(0, hi - end) + tr * (g1 - g0 + 2))
        used = 0

        def take(size: int) -> memoryview:
            nonlocal used
            view = scratch[used:used + size]
            used += size
            return view

        start = layout.data_offset(lo)
        views: list[memoryview] = []
        prev: memoryview | None = None
        if self.algo.needs_prev and g0 in wanted and g0 > 0:
            prev = take(tr)                  # the record just before group g0's data
            views.append(prev)
            start -= tr
        # The layout's parts in image order: (group, is a record, where it lands).
        segs: list[tuple[int, bool, memoryview]] = []
        records: dict[int, memoryview] = {}
        for g in range(g0, g1 + 1):
            a = max(g * gb, lo)
            b = min((g + 1) * gb, self.data_bytes, hi)
            if a < pos:
                segs.append((g, False, take(min(b, pos) - a)))
            x, y = max(a, pos), min(b, end)
            if x < y:
                segs.append((g, False, dest[x - pos:y - pos]))
            if b > end:
                segs.append((g, False, take(b - max(a, end))))
            if g < g1 or (g in wanted and self._has_record(g)):
                record = take(tr)
                segs.append((g, True, record))
                records[g] = record
        views += [view for _g, _rec, view in segs]
        # Data outside the caller's range that the source already holds (a
        # decompressed stream's cached pieces) is summed where it lies:
        # copying it into scratch was a third of a sequential zstd read's
        # copies, bytes the reader then asks for anyway.
        held: dict[int, list[memoryview]] = {}
        # Only [pos, end)'s own bytes (and the records between them) are what
        # the plain read would take; the widening is read as a peek, so that a
        # decompressed stream keeps those pieces for the reads that want them
        # (counting them as taken made it free pieces early and decode their
        # spans twice: half the speed of a sequential read).
        # A source that does not track what was taken (a plain file) gets
        # the one scatter read.
        if getattr(layout.source, "peek_into", None) is None:
            read_into(layout.source, start, views)
        else:
            own_start = layout.data_offset(pos)
            own_end = layout.data_offset(end - 1) + 1
            head, rest = split_views(views, own_start - start)
            own, tail = split_views(rest, own_end - own_start)
            data_ids = {id(view) for _g, rec, view in segs if not rec}
            if head:
                self._peek(start, head, data_ids, held)
            read_into(layout.source, own_start, own)
            if tail:
                self._peek(own_end, tail, data_ids, held)
        pieces: dict[int, list[memoryview]] = {g: [] for g in todo}
        for g, rec, view in segs:
            mine = pieces.get(g)
            if mine is not None and not rec:
                mine += held.get(id(view), (view,))
        good: list[int] = []
        bad: list[int] = []
        for g in range(g0, g1 + 1):
            if g in wanted:
                before = prev if self.algo.needs_prev and g > 0 else None
                ok = g in records and self.algo.check(g, pieces[g], records[g], before)
                (good if ok else bad).append(g)
            prev = records.get(g)
        if good:
            self._mark(good)
        if bad:
            errors = [self._fail(g) for g in bad]
            raise _copy(errors[0])

    def _peek(self, offset: int, views: list[memoryview], data_ids: set[int],
              held: dict[int, list[memoryview]]) -> None:
        """Peek the source's bytes at ``offset`` for ``views``: the data parts
        (``data_ids``) as views of memory the source holds, recorded in
        ``held``, where it has them; records, and everything else, copied."""
        source = self.layout.source
        got = peek_views(source, offset, sum(map(len, views)))
        if got is None or not all(id(v) in data_ids or len(v) <= self.layout.trailer
                                  for v in views):
            read_into(source, offset, views, peek=True)
            return
        for view in views:
            part, got = split_views(got, len(view))
            if id(view) in data_ids:
                held[id(view)] = part
            else:
                scatter(part, [view])          # a record: a few bytes

    def _advance(self, target: int) -> None:
        """Hash a running digest forward, in order, until ``target`` is checked."""
        layout = self.layout
        gb = self.group_bytes
        tr = layout.trailer
        per_read = max(1, SEQ_CHUNK // layout.stride)
        with self._seq_lock:
            while self._frontier <= target:
                first = self._frontier
                broken = self._broken_at
                if broken is not None:
                    # Not recorded as damaged itself: only its check is impossible.
                    raise ChecksumError(
                        layout.source.name, f"{self.algo.name} of {self.describe(target)} "
                        f"cannot be checked: the running checksum stopped matching at group "
                        f"{broken}", "mount with -o verify=off to read it unchecked",
                        image_offset=layout.data_start + target * layout.stride)
                if self._state is None:
                    self._state = self.algo.fresh()
                count = min(per_read, self.groups - first)
                data_end = min((first + count) * gb, self.data_bytes)
                start = layout.data_offset(first * gb)
                length = (data_end - first * gb) + count * tr
                # Hashed ahead of the reader, who asks for these bytes next: a peek.
                mv = memoryview(bytearray(length))
                read_into(layout.source, start, (mv,), peek=True)
                off = 0
                good: list[int] = []
                for g in range(first, first + count):
                    n = min(gb, self.data_bytes - g * gb)
                    self._state.update(mv[off:off + n])
                    ok = self.algo.digest(self._state) == bytes(mv[off + n:off + n + tr])
                    off += n + tr
                    if not ok:
                        self._mark(good)
                        self._frontier = g + 1
                        self._broken_at = g
                        raise _copy(self._fail(g))
                    good.append(g)
                self._mark(good)
                self._frontier = first + count


def _copy(error: ChecksumError) -> ChecksumError:
    """A fresh instance to raise: re-raising one instance grows its traceback."""
    return ChecksumError(error.path, error.problem, error.hint,
                         image_offset=error.image_offset, block=error.block,
                         logged=error.logged)
