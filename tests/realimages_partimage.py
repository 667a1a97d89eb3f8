"""partimage fixture builders: real images from partimage 0.6, real ground truth.

Each builder takes the session's :class:`realimages.Factory` and caches its
result there.  The image is saved the way Clonezilla does (``-z0``, one
stream on stdout) or split by partimage itself into ``NAME.000, .001 ...``
(``-V1``: 1 MiB volumes; the source holds several MiB of random data, so
the set has many volumes).  The ground truth is ``partimage restore`` of
that same image onto a loop device over a zero-filled file of the partition
size: partimage's batch flags (``-b -B gui=no -f3``, stdin from /dev/null)
drive the restore without a terminal.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from realimages import Factory, Image, loop_device, need, need_root, run

#: partimage prompts on a terminal if anything goes wrong; never let it hang.
TIMEOUT = 120
SAVE_FLAGS = ["-M", "-f3", "-o", "-d", "-b", "-c", "-B", "gui=no"]


def partimage_image(factory: Factory, kind: str, split: bool = False,
                    size_mb: int = 64, seed: int = 3, compress: int = 0) -> Image:
    """A partimage image of a fresh ``kind`` (ext3 or vfat) file system.

    ``split`` saves with ``-V1`` into a volume set; ``Image.path`` is then
    the ``.000`` volume.  ``compress`` is partimage's ``-z``: 0 none (what
    Clonezilla uses), 1 gzip and 2 bzip2 (each volume its own stream).
    """
    name = f"pi-{kind}-{size_mb}-{seed}-z{compress}" + ("-V1" if split else "")
    with factory._lock:
        cached = factory._images.get(name)
        if cached is not None:
            return cached
        need("partimage")
        need_root()
        src = factory.source(kind, size_mb, seed)
        if split:
            outdir = factory.base / name
            shutil.rmtree(outdir, ignore_errors=True)
            outdir.mkdir()
            stem = outdir / "sda3"
            with loop_device(src.raw) as dev:
                run(["partimage", *SAVE_FLAGS, f"-z{compress}", "-V1", "save", dev, str(stem)],
                    timeout=TIMEOUT)
            out = Path(str(stem) + ".000")
            if not Path(str(stem) + ".001").exists():
                raise RuntimeError(f"{name}: partimage -V1 wrote a single volume; the "
                                   "source needs more data")
        else:
            out = factory.base / f"{name}.img"
            with loop_device(src.raw) as dev, open(out, "wb") as f:
                # partimage writes its progress to stderr; the image is stdout.
                run_to(["partimage", *SAVE_FLAGS, f"-z{compress}", "--volume=0", "save", dev,
                        "stdout"], f)
        gt = _restore(factory, name, out, src.size)
        img = Image(name, out, gt, src, "partimage")
        factory._images[name] = img
        return img


def run_to(cmd: list[str], out) -> None:
    """Run ``cmd`` with stdout into the open file ``out``; raise with stderr on failure."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE,
                          timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{proc.stderr.decode(errors='replace')[-3000:]}")


def _restore(factory: Factory, name: str, image: Path, size: int) -> Path:
    """``partimage restore`` of ``image`` onto a zero-filled file of ``size`` bytes."""
    gt = factory.base / f"gt-{name}.raw"
    tmp = gt.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        f.truncate(size)
    cmd = ["partimage", "-f3", "-b", "-B", "gui=no", "restore"]
    try:
        with loop_device(tmp) as dev:
            run([*cmd, dev, str(image)], timeout=TIMEOUT)
    except RuntimeError:
        # partimage 0.6.1 once quit with status 1 half-way through a volume set
        # on a heavily loaded VM (and restored the same set three times right
        # after): the ground truth's tool, not imagefs.  One fresh try, on a
        # fresh zero-filled file; a second failure is reported as it is.
        with open(tmp, "wb") as f:
            f.truncate(size)
        with loop_device(tmp) as dev:
            run([*cmd, dev, str(image)], timeout=TIMEOUT)
    tmp.rename(gt)
    return gt


def clonezilla_pipeline(factory: Factory, image: Image, compressor: list[str],
                        piece_bytes: int = 1_000_000) -> Image:
    """``image`` (a single stream) as Clonezilla stores it: ``| compressor | split -b``.

    Returns the ``.aa`` piece; the ground truth is the image's own.
    """
    suffix = {"gzip": "gz", "pigz": "gz", "bzip2": "bz2", "zstd": "zst"}.get(compressor[0], "z")
    return factory.compressed(image, compressor, suffix, piece_bytes)
