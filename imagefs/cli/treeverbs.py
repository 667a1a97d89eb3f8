"""``imagefs ls TREE`` and ``imagefs index TREE``: the catalog without a mount.

Both see exactly what a mount of TREE would show, because they walk the
same :class:`~imagefs.catalog.Catalog`.  ``ls`` reads headers only;
``index`` opens every image (bitmaps, ntfsclone run lists) and builds the
seek index of every compressed one, persisting what can be persisted, so
that the first read after mounting is fast.  ``index --prune`` removes the
indexes whose backups are gone or changed instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator

from imagefs.catalog import Catalog, ImageEntry, InfoNode
from imagefs.catalog.disknodes import DiskEntry, DiskInfoNode
from imagefs.cli import exitcodes
from imagefs.cli.mountopts import settings_for, split_options
from imagefs.config import Settings
from imagefs.errors import ConfigError, ImageError
from imagefs.services import indexprune
from imagefs.services.indexstore import default_index_dir
from imagefs.services.units import human_size

#: ``imagefs index`` without a terminal: a progress line this often (seconds).
PROGRESS_INTERVAL = 10.0


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from -c CONFIG, --index-dir and -o (the mount's own keys only)."""
    opts = split_options(getattr(args, "options", []))
    if opts.fuse:
        key = next(iter(opts.fuse))
        raise ConfigError(f"-o {key}: not an imagefs option (libfuse options apply to the "
                          "mount only)")
    return settings_for(getattr(args, "config", None), getattr(args, "index_dir", None), opts)


def _catalog(args: argparse.Namespace, progress: bool = False) -> Catalog:
    source = getattr(args, "source", None)
    if source is not None and not os.path.exists(source):
        raise ImageError(source, "no such file or directory",
                         "give the directory holding the backups")
    settings = _settings(args)
    if source is None and not settings.sources:
        raise ConfigError("give a TREE, or list sources in a -c CONFIG file")
    catalog = Catalog(settings, os.path.abspath(source) if source else None)
    catalog.ctx.progress = progress
    return catalog


def _images(catalog: Catalog, verbose: int = 0) -> list[ImageEntry]:
    """Every image entry in listing order (the walk lists every directory).

    Broken images are reported in the output itself, so unless asked for
    (-v) the catalog's log line about them is held back meanwhile.
    """
    logger = logging.getLogger("imagefs.catalog")
    old = logger.level
    if verbose < 1:
        logger.setLevel(logging.CRITICAL)
    try:
        # .info nodes exist for every image, broken ones included.
        return [node.entry for node in catalog.walk() if isinstance(node, InfoNode)]
    finally:
        logger.setLevel(old)


def _describe(entry: ImageEntry) -> str:
    header = entry.header
    if entry.error or header is None:
        return f"BROKEN: {entry.error}"
    stream = entry.stream_info
    pieces = f"{len(stream.pieces)} pieces" if stream and len(stream.pieces) > 1 else "1 file"
    codec = stream.codec if stream and stream.codec else "uncompressed"
    files = entry.files
    if files is None:
        view = ""
    elif files.unavailable is None:
        view = ", files view"
    else:
        view = ", no files view"
    return (f"{header.format_name} {header.format_version}, {header.fs_type or '?'}, "
            f"{human_size(header.device_size)}, {pieces}, {codec}{view}")


def _disks(catalog: Catalog) -> list[DiskEntry]:
    """Every whole-disk entry (DISK.img) of the tree, good or not."""
    return [node.entry for node in catalog.walk() if isinstance(node, DiskInfoNode)]


def _describe_disk(disk: DiskEntry) -> str:
    plan = disk.plan
    if plan.problem:
        return f"BROKEN: {plan.problem}"
    parts = sum(1 for p in plan.partitions if p.image)
    return (f"whole disk {plan.name} ({plan.table}), {human_size(plan.size)}, "
            f"{len(plan.partitions)} partitions, {parts} from images")


def ls_main(args: argparse.Namespace) -> int:
    """Print each image's and disk's virtual path and what it is; exit 2 if any is broken."""
    catalog = _catalog(args)
    try:
        entries = _images(catalog, getattr(args, "verbose", 0))
        disks = _disks(catalog)
        rows = [(e.vpath, _describe(e), bool(e.error)) for e in entries]
        rows += [(d.vpath, _describe_disk(d), d.broken) for d in disks]
        width = max((len(vpath) for vpath, _, _ in rows), default=0)
        broken = 0
        for vpath, text, bad in sorted(rows):
            broken += bad
            print(f"{vpath:<{width}}  {text}")
        if not getattr(args, "quiet", False):
            disks_text = f", {len(disks)} disk{'s' if len(disks) != 1 else ''}" if disks else ""
            print(f"{len(entries)} images{disks_text}, {broken} broken", file=sys.stderr)
        return exitcodes.IMAGE if broken else exitcodes.OK
    finally:
        catalog.close()


def index_main(args: argparse.Namespace) -> int:
    """Open every image and build its indexes now; exit 2 if any fails.

    The codec indexes of independent images are built in parallel (as many
    passes at once as ``codecs.tuning.BUILD_SLOTS``, one per core; each pass
    holds a bounded amount of memory) with one overall progress bar on a
    terminal and a progress line on stderr every 10 s otherwise.
    """
    if getattr(args, "prune", False):
        return prune_main(args)
    quiet = getattr(args, "quiet", False)
    catalog = _catalog(args, progress=False)     # one overall bar, not one per image
    failed = 0
    try:
        entries = _images(catalog, getattr(args, "verbose", 0))
        builds = {}
        for entry in entries:
            start = getattr(entry.stream, "start_build", None)
            if entry.error or start is None:
                continue
            try:
                build = start()             # queued: passes run BUILD_SLOTS at a time
            except ImageError:
                continue                    # reported below, when the entry is opened
            if build is not None:
                builds[id(entry)] = build
        total = sum(b.total for b in builds.values())
        with _overall_progress(total, len(builds), not quiet) as show:
            for entry in entries:
                if entry.error:
                    show(f"{entry.vpath}: skipped, {entry.error}")
                    failed += 1
                    continue
                start = time.monotonic()
                build = builds.get(id(entry))
                try:
                    if build is not None:
                        while build.running:
                            show(None, sum(b.done for b in builds.values()))
                            build.join(0.2)     # redraw the bar meanwhile
                    finish = getattr(entry.stream, "build", None)
                    if finish is not None:
                        finish()                # the index (persisted), or its error
                    entry.partition()           # bitmap / run list (ntfsclone's is persisted)
                except ImageError as exc:
                    show(f"{entry.vpath}: FAILED, {exc.problem}")
                    failed += 1
                    continue
                state = entry.index_state() or "no compression index needed"
                show(f"{entry.vpath}: ready in {time.monotonic() - start:.1f} s ({state})")
        return exitcodes.IMAGE if failed else exitcodes.OK
    finally:
        catalog.close()


def disk_info(path: str, settings: Settings | None = None) -> list[str] | None:
    """The ``.info`` texts of the disks ``path`` names, or None if it names no disk.

    ``path`` is a savedisk directory (every disk it holds) or ``DIR/DISK.img``
    (that disk, whether or not a file of that name exists).
    """
    path = os.path.abspath(path)
    directory, name = (path, None) if os.path.isdir(path) else os.path.split(path)
    if not os.path.isfile(os.path.join(directory, "disk")):
        return None
    # Named as a mount of ``directory`` would show it, in place.
    catalog = Catalog(settings or Settings(), directory, mountpoint=directory)
    try:
        texts = [d.info_text().decode("utf-8", "surrogateescape") for d in _disks(catalog)
                 if name is None or os.path.basename(d.vpath) == name]
    finally:
        catalog.close()
    return texts or None


def prune_main(args: argparse.Namespace) -> int:
    """Remove the indexes whose backups are gone or changed (below TREE when given)."""
    settings = _settings(args)
    directory = settings.index_dir or default_index_dir()
    tree = getattr(args, "source", None)
    if tree is not None and not os.path.isdir(tree):
        raise ImageError(tree, "no such directory", "give the directory holding the backups")
    removed = indexprune.prune(directory, os.path.abspath(tree) if tree else None)
    for item in removed:
        print(f"removed {item.path} ({human_size(item.size)}): {item.reason}")
    freed = sum(item.size for item in removed)
    if not getattr(args, "quiet", False):
        print(f"{len(removed)} removed, {human_size(freed)} freed; {directory} now holds "
              f"{human_size(indexprune.usage(directory))}", file=sys.stderr)
    return exitcodes.OK


@contextlib.contextmanager
def _overall_progress(total: int, count: int,
                      enabled: bool) -> Iterator[Callable[..., None]]:
    """``show(line, done)``: print a result line and/or move the one bar.

    A tqdm bar only when stderr is a terminal; else a line on stderr every
    :data:`PROGRESS_INTERVAL` seconds and one at the end (a log line would
    be hidden at the default log level: a cron job's log would show
    nothing of a pass that runs for an hour).
    """
    bar = None
    if enabled and total and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=total, desc=f"indexing {count} image{'s' if count != 1 else ''}",
                   unit="B", unit_scale=True, unit_divisor=1024, leave=False, file=sys.stderr)
    started = last = time.monotonic()
    seen = 0

    def show(line: str | None, done: int = -1) -> None:
        nonlocal last, seen
        if line is not None:
            if bar is not None:
                bar.write(line, file=sys.stdout)
            else:
                print(line, flush=True)
        if done < 0:
            return
        if bar is not None:
            bar.update(max(0, done - seen))
            seen = max(seen, done)
            return
        now = time.monotonic()
        if enabled and total and now - last >= PROGRESS_INTERVAL:
            last = now
            rate = done / max(now - started, 1e-3)
            print(f"indexing: {100.0 * done / total:.0f}% of {count} images "
                  f"({rate / 1e6:.0f} MB/s, {(total - done) / max(rate, 1.0):.0f} s left)",
                  file=sys.stderr, flush=True)

    try:
        yield show
    finally:
        if bar is not None:
            bar.close()
        elif enabled and total:
            print(f"indexing: {count} image{'s' if count != 1 else ''}, "
                  f"{total / 1e6:.0f} MB of compressed data, done in "
                  f"{time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
