"""The verbs about one image: ``info``, ``verify``, and ``version``."""

from __future__ import annotations

import argparse
import sys

from imagefs.cli import exitcodes
from imagefs.version import __version__


def cmd_info(args: argparse.Namespace) -> int:
    from imagefs.blockio.opener import OpenContext, open_image_header
    from imagefs.catalog.infotext import render_info
    from imagefs.cli.treeverbs import disk_info
    from imagefs.services.indexstore import IndexStore
    texts = disk_info(args.image)          # DIR/DISK.img, or a savedisk directory
    if texts is not None:
        sys.stdout.write("\n".join(texts))
        return 0
    ctx = OpenContext(index_store=IndexStore(args.index_dir))
    header, stream = open_image_header(args.image, ctx)
    image = header.open(ctx.index_store) if args.full else None
    sys.stdout.write(render_info(header, stream, image=image))
    # The text says what is wrong; the status lets scripts know without reading it.
    return exitcodes.IMAGE if header.damage else exitcodes.OK


def cmd_verify(args: argparse.Namespace) -> int:
    from imagefs.blockio.opener import OpenContext, open_image_header
    from imagefs.services.indexstore import IndexStore
    from imagefs.services.progress import progress_bar

    ctx = OpenContext(index_store=IndexStore(args.index_dir))
    header, _ = open_image_header(args.image, ctx)
    image = header.open(ctx.index_store)
    total = max(header.source.size, 1)
    with progress_bar(total, "verify") as update:
        image.verify(update)
    if getattr(header, "checksum_size", None) == 0 or header.format_name == "ntfsclone":
        # Nothing to compare against: say what was checked instead.
        print(f"{args.image}: structure and length are intact ({header.format_name}; "
              f"the image carries no checksums)")
    else:
        print(f"{args.image}: all checksums match ({header.format_name}, {header.checksum})")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"imagefs {__version__}")
    print(f"python {sys.version.split()[0]}")
    from importlib.metadata import PackageNotFoundError, version
    for dist in ("mfusepy", "xxhash", "PyYAML", "tqdm"):
        try:
            print(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            print(f"{dist} not installed")
    try:
        from imagefs.codecs import codec_versions
        for name, ver in codec_versions().items():
            print(f"{name} {ver}")
    except Exception as exc:  # noqa: BLE001 - the verb must print what it can
        print(f"codecs unavailable ({exc})")
    try:
        from imagefs.fuse.library import libfuse_version
        print(f"libfuse {libfuse_version()}")
    except Exception:  # noqa: BLE001 - the verb must print what it can
        print("libfuse unknown")
    return 0
