"""The command table: every verb, its arguments, and where its code lives.

``imagefs`` has one parser per verb, all built from :data:`VERBS`, and
``mount`` is the default: a first argument that is no verb starts the mount
form (``imagefs SRC MNT -o ...``, as mount.fuse3 runs it).  Every parser
takes the common options (``-v``, ``-q``, ``--index-dir`` ...), so they may
stand before or after the verb, and options and arguments may be mixed in
any order (each verb parses with ``parse_intermixed_args``).

Adding a verb is one entry in :data:`VERBS`: a name, a one-line summary,
its usage words, a function adding its own arguments, and the
``module:function`` that runs it (imported only when the verb runs, so
``imagefs version`` never loads a codec)::

    Verb("files", "list the files of an image's file system", "IMAGE [PATH]",
         _files_arguments, "imagefs.cli.fileverbs:cmd_files")

``--help``, the man page and the bash completion are generated from the
same table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

from imagefs.cli import exitcodes, mountopts
from imagefs.version import __version__


class UsageError(Exception):
    """A wrong command line: one line for the user, exit status 1."""

    code = exitcodes.USAGE


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 1."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}; see {self.prog} --help")


class Verb(NamedTuple):
    """One command of ``imagefs``."""

    name: str
    summary: str                                   # one line, for the command list
    usage: str                                     # the argument words after the name
    arguments: Callable[[argparse.ArgumentParser], None]
    run: str                                       # "module:function(args) -> int"
    settings: bool = False                         # takes -c CONFIG and -o OPTS


def _common(p: argparse.ArgumentParser, settings: bool) -> None:
    """Options every verb takes, before or after its name."""
    g = p.add_argument_group("common options")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="more messages; twice for debug output and tracebacks")
    g.add_argument("-q", "--quiet", action="store_true", help="errors only")
    g.add_argument("--index-dir", metavar="DIR",
                   help="where persisted indexes live (default $XDG_CACHE_HOME/imagefs)")
    if settings:
        g.add_argument("-c", "--config", metavar="FILE", help="YAML configuration file")
        g.add_argument("-o", dest="options", action="append", default=[],
                       metavar="OPT[,OPT...]", help="options, see below (mount: also libfuse's)")


def _mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="SOURCE MOUNTPOINT",
                   help="the tree (or one image) to mount, and where; SOURCE may be left "
                        "out when the configuration lists sources")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground, logging to stderr")
    p.add_argument("-d", "--debug", action="store_true", help="libfuse debug output (implies -f)")
    p.add_argument("-s", "--single-thread", action="store_true", help="single-threaded FUSE loop")


def _image(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="image file, or the first piece of a set")


def _info_arguments(p: argparse.ArgumentParser) -> None:
    _image(p)
    p.add_argument("--full", action="store_true", help="also read the bitmap (stored blocks)")


def _tree(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="TREE", nargs="?",
                   help="directory of backups (default: the configuration's sources)")


def _index_arguments(p: argparse.ArgumentParser) -> None:
    _tree(p)
    p.add_argument("--prune", action="store_true",
                   help="instead: remove the indexes whose backups are gone or changed "
                        "(only those under TREE when given)")


def _files_arguments(p: argparse.ArgumentParser) -> None:
    _image(p)
    p.add_argument("path", nargs="?", default="/", metavar="PATH",
                   help="directory inside the image (default /)")


def _extract_arguments(p: argparse.ArgumentParser) -> None:
    _image(p)
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="files or directories inside the image (default: everything)")
    p.add_argument("-C", "--directory", default=".", metavar="DIR",
                   help="where to put them (default: here)")


def _nothing(p: argparse.ArgumentParser) -> None:
    pass


#: The default verb: what runs when the first argument is no verb name.
MOUNT = Verb("mount", "mount a tree of backups (the default command)",
             "SOURCE MOUNTPOINT [-o OPT[,OPT...]] [-f] [-c CONFIG.yaml]",
             _mount_arguments, "imagefs.cli.mount:run", settings=True)

VERBS: tuple[Verb, ...] = (
    MOUNT,
    Verb("info", "print an image's header (the text of its .info file)", "IMAGE [--full]",
         _info_arguments, "imagefs.cli.imageverbs:cmd_info"),
    Verb("verify", "check every checksum of an image", "IMAGE",
         _image, "imagefs.cli.imageverbs:cmd_verify"),
    Verb("ls", "list the images a tree holds, with their virtual names", "[TREE]",
         _tree, "imagefs.cli.treeverbs:ls_main", settings=True),
    Verb("index", "prebuild the seek indexes of a tree, or prune stale ones",
         "[TREE] [--prune]", _index_arguments, "imagefs.cli.treeverbs:index_main",
         settings=True),
    Verb("files", "list a directory of an image's file system (no FUSE)", "IMAGE [PATH]",
         _files_arguments, "imagefs.cli.filesverbs:files_main"),
    Verb("extract", "copy files out of an image's file system (no FUSE)",
         "IMAGE [PATH...] [-C DIR]", _extract_arguments, "imagefs.cli.filesverbs:extract_main"),
    Verb("version", "versions of imagefs, libfuse and each codec", "",
         _nothing, "imagefs.cli.imageverbs:cmd_version"),
)

BY_NAME = {v.name: v for v in VERBS}


def overview() -> str:
    """The command list, the -o keys and the exit codes (``imagefs --help``)."""
    width = max(len(v.name) for v in VERBS)
    lines = ["commands:"]
    lines += [f"  {v.name:<{width}}  {v.summary}" for v in VERBS]
    lines += ["", "Without a command, imagefs SOURCE MOUNTPOINT mounts (as mount.fuse3 runs it).",
              "Options may stand before or after the command; imagefs COMMAND --help "
              "describes one.", "", "-o keys:", mountopts.help_text(), "",
              "exit status:", exitcodes.table_text()]
    return "\n".join(lines)


def build_parser(verb: Verb) -> Parser:
    """The parser of one verb (the mount's also carries the whole overview)."""
    is_mount = verb is MOUNT
    prog = "imagefs" if is_mount else f"imagefs {verb.name}"
    usage = f"{prog} {verb.usage}".rstrip()
    if is_mount:
        usage += "\n       imagefs COMMAND [ARGS]   (commands below)"
    if is_mount:
        epilog = overview()
    else:
        epilog = f"exit status:\n{exitcodes.table_text()}"
        if verb.settings:
            epilog = "-o keys: see imagefs --help\n\n" + epilog
    p = Parser(prog=prog, usage=usage, description=verb.summary[0].upper() + verb.summary[1:],
               epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    verb.arguments(p)
    _common(p, verb.settings)
    p.add_argument("-V", "--version", action="version", version=f"imagefs {__version__}")
    return p


def value_options() -> frozenset[str]:
    """Every option string, of any verb, that takes a value (``-o``, ``-c`` ...).

    The dispatcher skips their values when it looks for the first argument.
    """
    out: set[str] = set()
    for verb in VERBS:
        for action in build_parser(verb)._actions:
            if action.option_strings and action.nargs != 0:
                out.update(action.option_strings)
    return frozenset(out)
