"""The command line: verbs for single images and the mount form.

    imagefs SOURCE MOUNTPOINT [-o OPTS] [-f] [-c CONFIG]   mount (also as mount helper)
    imagefs info IMAGE                                     header dump (= the .info file)
    imagefs verify IMAGE                                   check every checksum
    imagefs ls TREE                                        what a tree holds
    imagefs index TREE                                     prebuild seek indexes
    imagefs version                                        versions of imagefs, libfuse, codecs

The first argument decides: a known verb selects it, anything else is the
mount form, so ``mount -t fuse.imagefs SRC MNT -o ...`` (which runs
``imagefs SRC MNT -o ...``) works unchanged.  A path that happens to be
called ``info`` can be mounted as ``./info``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from imagefs.errors import ConfigError, ImageError
from imagefs.version import __version__

log = logging.getLogger("imagefs")


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else \
        logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="imagefs: %(message)s", stream=sys.stderr)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more messages; twice for debug output and tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only")
    parser.add_argument("--index-dir", help="where persisted indexes live "
                        "(default $XDG_CACHE_HOME/imagefs)")


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        mod = __import__(module, fromlist=[func])
        return getattr(mod, func)(args)
    return run


VERBS = ("info", "verify", "ls", "index", "files", "extract", "version")


def build_verb_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagefs",
        description="Mount partition backup images read-only, or inspect them. "
                    "Mount form: imagefs SOURCE MOUNTPOINT [-o OPTS] [-f] [-c CONFIG]")
    parser.add_argument("--version", action="version", version=f"imagefs {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("info", help="print an image's header (the text of its .info file)")
    p.add_argument("image", help="image file, or first piece of a split set")
    p.add_argument("--full", action="store_true", help="also read the bitmap (stored-block counts)")
    _common(p)
    p.set_defaults(func=_lazy("imagefs.cli.imageverbs", "cmd_info"))
    p = sub.add_parser("verify", help="check every checksum of an image")
    p.add_argument("image")
    _common(p)
    p.set_defaults(func=_lazy("imagefs.cli.imageverbs", "cmd_verify"))
    p = sub.add_parser("ls", help="list the images a tree holds, with their virtual names")
    p.add_argument("source")
    p.add_argument("-c", "--config", help="YAML configuration")
    _common(p)
    p.set_defaults(func=_lazy("imagefs.cli.treeverbs", "ls_main"))
    p = sub.add_parser("index", help="prebuild the seek indexes of every image in a tree")
    p.add_argument("source")
    p.add_argument("-c", "--config", help="YAML configuration")
    _common(p)
    p.set_defaults(func=_lazy("imagefs.cli.treeverbs", "index_main"))
    p = sub.add_parser("files", help="list a directory of an image's file system (no FUSE)")
    p.add_argument("image", help="image file, or first piece of a split set")
    p.add_argument("path", nargs="?", default="/", help="directory inside the image (default /)")
    _common(p)
    p.set_defaults(func=_lazy("imagefs.cli.filesverbs", "files_main"))
    p = sub.add_parser("extract", help="copy files out of an image's file system (no FUSE)")
    p.add_argument("image", help="image file, or first piece of a split set")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="files or directories inside the image (default: everything)")
    p.add_argument("-C", "--directory", default=".", help="where to put them (default: here)")
    _common(p)
    p.set_defaults(func=_lazy("imagefs.cli.filesverbs", "extract_main"))
    p = sub.add_parser("version", help="versions of imagefs, libfuse and each codec")
    _common(p)
    p.set_defaults(func=_lazy("imagefs.cli.imageverbs", "cmd_version"))
    return parser


def _run_guarded(func: Callable[[], int], verbose: int) -> int:
    """Run a verb; user-facing errors become one line on stderr."""
    try:
        return func()
    except (ImageError, ConfigError) as exc:
        if verbose > 1:
            log.exception("details")
        print(f"imagefs: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imagefs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`imagefs ls | head`): not an error to report.
        return 0
    except OSError as exc:
        if verbose > 1:
            log.exception("details")
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"imagefs: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    from imagefs.services.memtune import tune_allocator
    tune_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in VERBS or (argv and argv[0] in ("-h", "--help", "--version")):
        args = build_verb_parser().parse_args(argv)
        _setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
        return _run_guarded(lambda: args.func(args), getattr(args, "verbose", 0))
    from imagefs.cli.mount import main as mount_main
    return mount_main(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
