"""A tree of 2,000 small images mounts lazily: ``ls -lR`` reads no data area.

The mount runs in the foreground under a small wrapper that records every
``pread`` and ``preadv`` (the FUSE read path scatters with ``preadv``) on a
file of the source tree (offset, length, path).  After ``ls -lR`` of the
whole mount, each image must have been read only inside its header: no
bitmap, no data area, no index built.  Reading one virtual partition
afterwards must show up in the trace (so the trace can see data reads).
Timing belongs to bench/, not here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

from mount_helpers import need_fuse, unmount, wait_until, write_partclone

pytestmark = [pytest.mark.mount]

IMAGES = 2000
PER_DIR = 100
HEADER = 110          # partclone format 2 header; the bitmap follows

WRAPPER = textwrap.dedent('''
    import os, sys
    LOG, ROOT = sys.argv[1], sys.argv[2]
    log_fd = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _open, _pread, _preadv = os.open, os.pread, os.preadv
    paths = {}

    def traced_open(path, flags, mode=0o777, *, dir_fd=None):
        fd = _open(path, flags, mode, dir_fd=dir_fd)
        paths[fd] = os.fspath(path)
        return fd

    def traced_pread(fd, size, offset):
        data = _pread(fd, size, offset)
        p = paths.get(fd, "")
        if isinstance(p, str) and p.startswith(ROOT):
            os.write(log_fd, f"{offset} {len(data)} {p}\\n".encode())
        return data

    def traced_preadv(fd, buffers, offset, *flags):
        n = _preadv(fd, buffers, offset, *flags)
        p = paths.get(fd, "")
        if isinstance(p, str) and p.startswith(ROOT):
            os.write(log_fd, f"{offset} {n} {p}\\n".encode())
        return n

    os.open, os.pread, os.preadv = traced_open, traced_pread, traced_preadv
    from imagefs.cli.mount import main
    sys.exit(main(sys.argv[3:]))
''')


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "src"
    for i in range(IMAGES):
        d = root / f"host-{i // PER_DIR:02d}"
        d.mkdir(parents=True, exist_ok=True)
        write_partclone(d / f"sda{i}.ext4-ptcl-img", seed=i, total_blocks=64, block_size=512)
    return root


def test_ls_lR_of_2000_images_reads_no_data_area(big_tree, tmp_path):
    need_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "reads.log"
    wrapper = tmp_path / "traced_imagefs.py"
    wrapper.write_text(WRAPPER)
    proc = subprocess.Popen([sys.executable, str(wrapper), str(log), str(big_tree),
                             str(big_tree), str(mnt), "-f", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: os.path.ismount(mnt) or proc.poll() is not None, timeout=60,
                   what="the mount")
        assert proc.poll() is None, proc.stderr.read().decode()
        # Every image also shows VNAME.files (stat'ed by ls -l, which must not
        # open it); entering those directories is a user opening the file
        # systems, so the recursion skips them.
        out = subprocess.run(["ls", "-lR", "-I", "*.files", str(mnt)], capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        shown = [line for line in out.stdout.splitlines() if line.endswith("-ptcl-img")]
        assert len(shown) == IMAGES
        # Sizes come from the headers: 64 blocks of 512 bytes each.
        assert all(line.split()[4] == str(64 * 512) for line in shown)
        infos = [line for line in out.stdout.splitlines() if line.endswith(".info")]
        assert len(infos) == IMAGES
        views = subprocess.run(f"ls -ld {mnt}/host-*/*.files", shell=True, capture_output=True,
                               text=True, timeout=300)
        assert views.returncode == 0, views.stderr
        assert len(views.stdout.splitlines()) == IMAGES      # stat'ed, not opened
        listed = log.read_text()
        # Now read one virtual partition: the trace must see its data area.
        probe_image = mnt / "host-00" / "sda0.ext4-ptcl-img"
        assert len(probe_image.read_bytes()) == 64 * 512
    finally:
        unmount(mnt)
        try:
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, proc.stderr.read().decode()

    reads = _reads(listed)
    assert len(reads) == IMAGES, "every image is probed (its header read) exactly for ls"
    beyond = {p: r for p, r in reads.items() if any(o + n > HEADER for o, n in r)}
    assert not beyond, f"ls -lR read past the header of {len(beyond)} images, e.g. " \
                       f"{next(iter(beyond.items()))}"
    after = _reads(log.read_text())
    data_read = [r for r in after[str(big_tree / "host-00" / "sda0.ext4-ptcl-img")]
                 if r[0] + r[1] > HEADER]
    assert data_read, "reading a virtual partition must show its data area in the trace"


def _reads(text: str) -> dict[str, list[tuple[int, int]]]:
    reads: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for line in text.splitlines():
        offset, length, path = line.split(" ", 2)
        reads[path].append((int(offset), int(length)))
    return reads
