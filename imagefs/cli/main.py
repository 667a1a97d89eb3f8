"""The entry point: pick the verb, parse its arguments, run it, map errors to exit codes.

    imagefs SOURCE MOUNTPOINT [-o OPTS] [-f] [-c CONFIG]   mount (the default; mount helper)
    imagefs info IMAGE                                     header dump (= the .info file)
    imagefs verify IMAGE                                   check every checksum
    imagefs ls [TREE]                                      what a tree holds
    imagefs index [TREE] [--prune]                         prebuild / prune seek indexes
    imagefs version                                        versions of imagefs, libfuse, codecs

The verbs and their arguments are the table of :mod:`imagefs.cli.verbs`.
The first *argument* (not option: ``imagefs -vv info FILE`` works) decides:
a verb name selects it, anything else is the mount form, so ``mount -t
fuse.imagefs SRC MNT -o ...`` (which runs ``imagefs SRC MNT -o ...``)
works unchanged.  A first argument that is no existing path but close to a
verb name is a typo (``imagefs inf x``: "unknown command inf; did you mean
info?").  A path that happens to be called like a verb is mounted as
``./info``.

Errors are one line on stderr and an exit status from
:mod:`imagefs.cli.exitcodes` (``-vv`` adds the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from imagefs.cli import exitcodes
from imagefs.cli.logsetup import level_for
from imagefs.cli.logsetup import setup as setup_logging
from imagefs.cli.verbs import BY_NAME, MOUNT, VERBS, UsageError, Verb, build_parser, value_options
from imagefs.errors import ConfigError, ImageError

log = logging.getLogger("imagefs")

#: How close a word must be to a verb name to be taken for a typo of it
#: (difflib ratio: "inf"/"info" 0.86, "verfy"/"verify" 0.91, "lss"/"ls" 0.8).
TYPO_CUTOFF = 0.75


def first_argument(argv: Sequence[str]) -> int | None:
    """Index of the first argument that is not an option or an option's value."""
    if argv and (argv[0] == "-" or not argv[0].startswith("-")):
        # "imagefs SRC MNT ...": no option to skip.  value_options builds
        # every verb's parser, 13 ms of each mount's start-up.
        return 0
    takes_value = value_options()
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return i + 1 if i + 1 < len(argv) else None
        if token.startswith("--"):
            if "=" not in token and token in takes_value:
                i += 1                         # its value follows
        elif token.startswith("-") and token != "-":
            if token[:2] in takes_value and len(token) == 2:
                i += 1                         # "-o VALUE"; "-oVALUE" is self-contained
        else:
            return i
        i += 1
    return None


def choose(argv: Sequence[str]) -> tuple[Verb, list[str]]:
    """The verb the command line names, and its arguments without the verb's name."""
    argv = list(argv)
    at = first_argument(argv)
    if at is None:
        if not argv:
            raise UsageError("give SOURCE MOUNTPOINT to mount, or a command; "
                             "see imagefs --help")
        return MOUNT, argv
    word = argv[at]
    verb = BY_NAME.get(word)
    if verb is not None:
        return verb, argv[:at] + argv[at + 1:]
    if "/" not in word and not os.path.exists(word):
        import difflib  # only for a word that is neither verb nor path (a typo)
        close = difflib.get_close_matches(word, [v.name for v in VERBS], n=1,
                                          cutoff=TYPO_CUTOFF)
        if close:
            raise UsageError(f"unknown command {word}; did you mean {close[0]}?")
    return MOUNT, argv


def run(verb: Verb, args: argparse.Namespace) -> int:
    """Run a parsed verb; user-facing errors become one line and their exit status."""
    verbose = getattr(args, "verbose", 0)
    if verb is not MOUNT:       # the mount routes its own logging (background, syslog)
        setup_logging(level_for(verbose, getattr(args, "quiet", False)), foreground=True)
    module, func = verb.run.split(":")
    try:
        status: int = getattr(importlib.import_module(module), func)(args)
        return status
    except KeyboardInterrupt:
        print("imagefs: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`imagefs ls | head`): not an error to report.
        return exitcodes.OK
    except (ImageError, ConfigError, UsageError, OSError) as exc:
        report(exc, verbose)
        return exitcodes.code_for(exc)
    except Exception as exc:  # MountError and friends carry their exit status
        if not hasattr(exc, "code"):
            raise
        report(exc, verbose)
        return exitcodes.code_for(exc)


def report(exc: BaseException, verbose: int) -> None:
    """The one line for an error (the traceback too with -vv)."""
    if verbose > 1:
        log.error("details", exc_info=exc)
    if isinstance(exc, OSError) and not isinstance(exc, ImageError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
    else:
        text = str(exc)
    print(text if text.startswith("imagefs") else f"imagefs: {text}", file=sys.stderr)


def parse(verb: Verb, argv: Sequence[str]) -> argparse.Namespace:
    """The verb's arguments; options and arguments in any order."""
    return build_parser(verb).parse_intermixed_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """``imagefs ...``: returns the exit status."""
    from imagefs.services.memtune import tune_allocator
    tune_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        verb, rest = choose(argv)
        args = parse(verb, rest)
    except UsageError as exc:
        report(exc, 0)
        return exitcodes.USAGE
    except SystemExit as exc:          # --help and --version print and stop here
        return exc.code if isinstance(exc.code, int) else exitcodes.OK
    return run(verb, args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
