"""``imagefs SOURCE MOUNTPOINT [-o OPTS] [-f] [-c CONFIG] [-v|-q]``: the mount.

Also the mount helper form: ``mount -t fuse.imagefs SRC MNT -o ro,...`` and
fstab lines make ``mount.fuse3`` run ``imagefs SRC MNT -o OPTS``; the
``-o`` list is sorted by :mod:`imagefs.cli.mountopts`.

Like sshfs, the command returns once the mount is live: it forks, the child
mounts and reports through a pipe when FUSE's ``init`` has run (or what went
wrong, with its exit status), and the parent exits with the child's
verdict.  ``-f`` keeps everything in the foreground; SIGINT/SIGTERM then
unmount cleanly (libfuse's own handlers end the session loop).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

from imagefs.cli import exitcodes
from imagefs.cli.logsetup import level_for
from imagefs.cli.logsetup import setup as setup_logging
from imagefs.cli.mountopts import Options, settings_for, split_options
from imagefs.config import Settings
from imagefs.errors import ConfigError, ImageError

log = logging.getLogger(__name__)

#: What fstab's first field may say when the configuration lists the sources.
PLACEHOLDER_SOURCES = frozenset({"none", "imagefs"})

USAGE = "imagefs SOURCE MOUNTPOINT [-o OPT[,OPT...]] [-f] [-c CONFIG.yaml] [-v|-q]"

__all__ = ["MountError", "Options", "Plan", "main", "plan", "run", "split_options"]


class MountError(Exception):
    """A problem that stops the mount: one line for the user and its exit status."""

    def __init__(self, message: str, code: int = exitcodes.USAGE) -> None:
        super().__init__(message)
        self.code = code


class Plan(NamedTuple):
    """Everything decided before forking."""

    source: str | None
    mountpoint: str
    settings: Settings
    fuse_options: dict[str, object]
    foreground: bool
    debug: bool
    single_thread: bool
    verbose: int
    quiet: bool
    nonempty: bool = False


def plan(args: argparse.Namespace | Sequence[str]) -> Plan:
    """Check the parsed command line; raises MountError/ConfigError with one line.

    ``args`` is the mount verb's namespace (or its argument list, parsed here).
    """
    if not isinstance(args, argparse.Namespace):
        from imagefs.cli.main import parse
        from imagefs.cli.verbs import MOUNT
        args = parse(MOUNT, args)
    opts = split_options(args.options)
    settings = settings_for(args.config, args.index_dir, opts)
    if len(args.paths) == 2:
        source, mountpoint = args.paths
        if source in PLACEHOLDER_SOURCES and settings.sources:
            source = None          # fstab's first field when the config lists sources
    elif len(args.paths) == 1 and settings.sources:
        source, mountpoint = None, args.paths[0]
    elif len(args.paths) == 1:
        raise MountError("give SOURCE and MOUNTPOINT (or list sources in a -c CONFIG file); "
                         "see imagefs --help")
    elif not args.paths:
        raise MountError(f"usage: {USAGE}")
    else:
        raise MountError(f"too many arguments; usage: {USAGE}")
    if source is not None:
        given = source
        source = os.path.abspath(os.path.expanduser(source))
        if not os.path.exists(source):
            nor = "" if "/" in given else " (nor a command: see imagefs --help)"
            raise MountError(f"{source}: no such file or directory{nor}; give the directory "
                             "holding the backups", exitcodes.IMAGE)
    else:
        for spec in settings.sources:
            if not os.path.exists(spec.path):
                raise MountError(f"{spec.path}: no such file or directory (listed in "
                                 f"{settings.config_path})", exitcodes.IMAGE)
    mountpoint = os.path.abspath(os.path.expanduser(mountpoint))
    check_mountpoint(mountpoint, "nonempty" in opts.flags)
    check_fuse(settings.allow_other)
    fuse = dict(opts.fuse)
    fuse.pop("allow_other", None)           # only the parsed setting decides
    if settings.allow_other:
        fuse["allow_other"] = True
    fuse.setdefault("fsname", (source or settings.config_path or "imagefs").replace(",", "_"))
    fuse.setdefault("subtype", "imagefs")
    fuse["ro"] = True
    # Who may read what.  Without a files view the kernel checks the
    # permission bits the catalog reports (allow_other would otherwise let
    # anyone read a root-only backup).  A files view shows the owners and
    # modes stored in the backup, which must not decide access: there the
    # FUSE adapter checks every path against the backup files themselves.
    if settings.files:
        fuse.pop("default_permissions", None)
    else:
        fuse["default_permissions"] = True
    # Inode numbers: hard links inside a files view share one.
    fuse["use_ino"] = True
    fuse.setdefault("max_read", 1 << 20)
    return Plan(source, mountpoint, settings, fuse,
                foreground=args.foreground or args.debug or "foreground" in opts.flags,
                debug=args.debug or "debug" in opts.flags, single_thread=args.single_thread,
                verbose=args.verbose, quiet=args.quiet, nonempty="nonempty" in opts.flags)


def _unusable(mountpoint: str, exc: OSError) -> MountError:
    """The one-line error for a mount point that cannot be stat'ed or listed."""
    if exc.errno == errno.ENOTCONN:         # a FUSE process died without unmounting
        return MountError(f"{mountpoint}: a dead FUSE mount is still there; unmount it "
                          f"first with: fusermount3 -u {mountpoint}", exitcodes.ENVIRONMENT)
    return MountError(f"{mountpoint}: cannot use as mount point: {exc.strerror}",
                      exitcodes.ENVIRONMENT)


def check_mountpoint(mountpoint: str, nonempty_ok: bool) -> None:
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"{mountpoint}: mount point does not exist; create it with "
                         f"mkdir -p {mountpoint}") from None
    except OSError as exc:
        raise _unusable(mountpoint, exc) from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"{mountpoint}: mount point is not a directory")
    try:
        entries = os.listdir(mountpoint)
    except OSError as exc:
        raise _unusable(mountpoint, exc) from None
    if entries and not nonempty_ok:
        raise MountError(f"{mountpoint}: mount point is not empty; use an empty directory "
                         "(or -o nonempty to hide its contents)")


def check_fuse(allow_other: bool) -> None:
    """FUSE must be usable; say what to install or configure when it is not."""
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: FUSE is unavailable; install it with "
                         "apt-get install fuse3 (and load the module: modprobe fuse)",
                         exitcodes.ENVIRONMENT)
    if os.geteuid() != 0:
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise MountError("/dev/fuse is not accessible to you; FUSE needs it readable "
                             "and writable (apt-get install fuse3 sets that up)",
                             exitcodes.ENVIRONMENT)
        if allow_other and not _user_allow_other():
            raise MountError("allow_other is refused: FUSE allows it for ordinary users only "
                             "with the line user_allow_other in /etc/fuse.conf; add it or "
                             "drop allow_other", exitcodes.ENVIRONMENT)
    try:
        from imagefs.fuse.library import choose_library
        if choose_library() is None:
            raise MountError("libfuse is not installed: FUSE is unavailable; install it with "
                             "apt-get install fuse3", exitcodes.ENVIRONMENT)
    except ImportError:  # pragma: no cover
        pass


def _user_allow_other() -> bool:
    try:
        with open("/etc/fuse.conf", encoding="utf-8") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def run_fuse(p: Plan, on_ready: Callable[[], None] | None) -> None:
    """Build the catalog and serve until unmounted (blocks)."""
    from imagefs.catalog import Catalog
    from imagefs.fuse.adapter import CACHE_TIMEOUT, ImageFS, ImageFUSE, mfusepy
    from imagefs.fuse.library import loop_options
    from imagefs.services.memtune import start_heap_keeper

    catalog = Catalog(p.settings, p.source, mountpoint=p.mountpoint)
    max_read = p.fuse_options.get("max_read")
    ops = ImageFS(catalog, on_ready=on_ready,
                  max_read=int(max_read) if isinstance(max_read, (int, str)) else None)
    log.info("mounting %s on %s", p.source or p.settings.config_path, p.mountpoint)
    options = dict(p.fuse_options)
    for key, value in loop_options(mfusepy.fuse_version_major,
                                   getattr(mfusepy, "fuse_version_minor", 0)).items():
        options.setdefault(key, value)       # -o max_threads=N wins
    if mfusepy.fuse_version_major == 2:
        # libfuse 2 has no fuse_config in init: the cache timeouts go in as options.
        for key in ("entry_timeout", "attr_timeout", "negative_timeout"):
            options.setdefault(key, CACHE_TIMEOUT)
        if p.nonempty:                # libfuse 3 mounts over files without being asked
            options["nonempty"] = True
    keeper = start_heap_keeper()       # a mount lives long: its freed holes go back
    try:
        ImageFUSE(ops, p.mountpoint, raw_fi=True, foreground=True, debug=p.debug,
                     nothreads=p.single_thread, **options)
    except RuntimeError as exc:
        if ops.started:
            # libfuse 3 reports a session ended by SIGINT/SIGTERM as an error
            # code; once the mount was up, that is the normal way to stop.
            log.info("session ended (%s)", exc)
            return
        raise MountError(f"{p.mountpoint}: mounting failed (libfuse error {exc}); "
                         "see the message above", exitcodes.ENVIRONMENT) from None
    finally:
        if keeper is not None:
            keeper.stop()
        catalog.close()


#: libfuse 3.14.0 prints this on every multithreaded start (fixed in 3.14.1);
#: it says nothing to the user.
_LIBFUSE_NOISE = (b"Ignoring invalid max threads value",)


class StderrFilter:
    """Pass libfuse's stderr lines through, minus known noise.

    libfuse writes to file descriptor 2 directly.  Until the mount is live its
    lines reach the user's terminal (they explain a failed mount); once a
    background mount detaches they go to the log instead.
    """

    def __init__(self) -> None:
        self._target = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._reader = os.fdopen(read_fd, "rb")
        #: libfuse rejected an option: the mount failed for a usage reason.
        self.unknown_option = False
        self._thread = threading.Thread(target=self._pump, name="imagefs-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self._reader:
            if line.startswith(_LIBFUSE_NOISE):
                continue
            if b"unknown option" in line:
                self.unknown_option = True
            target = self._target
            if target >= 0:
                try:
                    os.write(target, line)
                    continue
                except OSError:
                    pass
            log.warning("%s", line.decode("utf-8", "replace").rstrip())

    def close(self) -> None:
        """Restore descriptor 2 and let the pump finish the lines it has."""
        if self._target >= 0:
            os.dup2(self._target, 2)       # drops the pipe's last write end
        self._thread.join(timeout=2)

    def detach(self) -> None:
        """From now on, lines go to the log (the terminal may be gone)."""
        target, self._target = self._target, -1
        if target >= 0:
            os.close(target)


def _foreground(p: Plan) -> int:
    setup_logging(level_for(p.verbose, p.quiet, p.settings.log_level), foreground=True,
                  log_file=p.settings.log_file)
    errors = None if p.debug else StderrFilter()   # -d shows libfuse's output unfiltered
    try:
        run_fuse(p, on_ready=lambda: log.info("mounted %s", p.mountpoint))
    except MountError as exc:
        if errors is not None:
            errors.close()              # drains libfuse's lines first
            if errors.unknown_option:
                exc.code = exitcodes.USAGE
        raise
    finally:
        if errors is not None:
            errors.close()
    return exitcodes.OK


def _background(p: Plan) -> int:
    """Fork; return in the parent once the child reports the mount live."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return _await_child(pid, read_fd, p)
    # Child: its own session, so the shell's terminal and signals leave it alone.
    os.close(read_fd)
    os.setsid()
    status = exitcodes.ENVIRONMENT
    try:
        setup_logging(level_for(p.verbose, p.quiet, p.settings.log_level), foreground=False,
                      log_file=p.settings.log_file)
        reported = False
        errors = StderrFilter()

        def ready() -> None:
            nonlocal reported
            os.write(write_fd, b"OK\n")
            os.close(write_fd)
            reported = True
            errors.detach()
            _detach_stdio()

        try:
            run_fuse(p, on_ready=ready)
            status = exitcodes.OK
        except (MountError, ImageError, ConfigError, OSError) as exc:
            status = exitcodes.code_for(exc)
            if not reported:
                errors.close()          # drains libfuse's lines first
                if errors.unknown_option:
                    status = exitcodes.USAGE
                os.write(write_fd, f"ERR {status} {exc}\n".encode("utf-8", "replace"))
            log.error("%s", exc)
    except BaseException:
        log.exception("imagefs mount process failed")
    finally:
        os._exit(status)


def _await_child(pid: int, read_fd: int, p: Plan) -> int:
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        chunks.append(pipe.read())
    message = b"".join(chunks).decode("utf-8", "replace").strip()
    if message.startswith("OK"):
        return exitcodes.OK
    _, status = os.waitpid(pid, 0)
    if message.startswith("ERR "):
        code, _, text = message[4:].partition(" ")
        print(f"imagefs: {text}", file=sys.stderr)
        return int(code) if code.isdigit() else exitcodes.ENVIRONMENT
    print(f"imagefs: {p.mountpoint}: mounting failed (exit status "
          f"{os.waitstatus_to_exitcode(status)}); see the message above", file=sys.stderr)
    return exitcodes.ENVIRONMENT


def _detach_stdio() -> None:
    """The mount is live: stop holding the caller's terminal or pipes open.

    Descriptor 2 stays the filter's pipe, whose lines now go to the log.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.chdir("/")


def run(args: argparse.Namespace) -> int:
    """The mount verb: plan, then mount in the foreground or background."""
    p = plan(args)
    return _foreground(p) if p.foreground else _background(p)


def main(argv: Sequence[str] | None = None) -> int:
    """``imagefs SOURCE MOUNTPOINT ...`` without the dispatcher (same errors and codes)."""
    from imagefs.cli.main import parse
    from imagefs.cli.main import run as run_verb
    from imagefs.cli.verbs import MOUNT, UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(MOUNT, argv)
    except UsageError as exc:
        print(f"imagefs: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    return run_verb(MOUNT, args)
