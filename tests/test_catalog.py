"""The catalog without FUSE: naming, clashes, hidden pieces, symlinks, laziness, errors."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from imagefs.catalog import (Catalog, DirNode, FileNode, ImageNode, InfoNode, NotADirectory,
                             NotFound, virtual_name)
from imagefs.config import Settings, SourceSpec
from imagefs.errors import ImageError
from imagefs.io.source import FdPool
from readers import run_in_threads
from mount_helpers import data_start, partclone_v2, wait_until, write_partclone


def _catalog(root: Path, **kw) -> Catalog:
    # The crafted images carry no real file system: their files views are
    # tested in test_mount_files.py; here the naming of images and files.
    kw.setdefault("files", False)
    settings = Settings(cache_size=8 << 20, **kw)
    return Catalog(settings, str(root), mountpoint="/mnt/images", pool=FdPool(32))


def _names(cat: Catalog, path: str = "/") -> list[str]:
    node = cat.lookup(path)
    assert isinstance(node, DirNode)
    return list(node.children())


def _read_all(cat: Catalog, path: str) -> bytes:
    node = cat.lookup(path)
    assert isinstance(node, ImageNode)
    return node.entry.read(0, node.attr().size + 10)


@pytest.mark.parametrize("name, stem, expected", [
    ("sda1.img", None, "sda1.img"),
    ("sda1.ext4-ptcl-img.gz.aa", "sda1.ext4-ptcl-img.gz", "sda1.ext4-ptcl-img"),
    ("sda1.ext4-ptcl-img.zst", None, "sda1.ext4-ptcl-img"),
    ("sda1.ntfs-img.uncomp.aa", "sda1.ntfs-img.uncomp", "sda1.ntfs-img"),
    ("sda2.xfs-ptcl-img.lzip", None, "sda2.xfs-ptcl-img"),
    ("sda2.000", "sda2", "sda2"),
    ("x.LZ4", None, "x"),
    (".gz", None, ".gz"),
])
def test_virtual_name(name, stem, expected):
    assert virtual_name(name, stem) == expected


def test_images_plain_files_and_hidden_pieces(tmp_path):
    truth = write_partclone(tmp_path / "whole.img", seed=1)
    image = (tmp_path / "whole.img").read_bytes()
    # The same image cut into three pieces, named like Clonezilla's.
    cut = -(-len(image) // 3)
    for i, suffix in enumerate(("aa", "ab", "ac")):
        (tmp_path / f"sda1.ext4-ptcl-img.uncomp.{suffix}").write_bytes(image[i * cut:(i + 1) * cut])
    (tmp_path / "sda-pt.sf").write_text("label: dos\n")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "notes.aa").write_text("not an image, but named like a first piece\n")
    (tmp_path / "notes.ab").write_text("second\n")
    cat = _catalog(tmp_path)
    assert _names(cat) == sorted([
        "empty", "notes.aa", "notes.ab", "sda-pt.sf", "sda1.ext4-ptcl-img",
        "sda1.ext4-ptcl-img.info", "whole.img", "whole.img.info"])
    assert isinstance(cat.lookup("/sda-pt.sf"), FileNode)
    assert _read_all(cat, "/whole.img") == truth
    assert _read_all(cat, "/sda1.ext4-ptcl-img") == truth
    info = cat.lookup("/sda1.ext4-ptcl-img.info")
    assert isinstance(info, InfoNode)
    text = info.entry.info_text().decode()
    assert "3 pieces (split)" in text and "/mnt/images/sda1.ext4-ptcl-img" in text
    with pytest.raises(NotFound):
        cat.lookup("/sda1.ext4-ptcl-img.uncomp.ab")
    with pytest.raises(NotADirectory):
        cat.lookup("/whole.img/x")


def test_clash_keeps_full_source_name(tmp_path):
    write_partclone(tmp_path / "disk.img.gz", seed=2)      # no gzip inside: still an image
    (tmp_path / "disk.img").write_text("a real file called disk.img\n")
    write_partclone(tmp_path / "b.img", seed=3)
    (tmp_path / "b.img.info").write_text("a real file taking the .info name\n")
    cat = _catalog(tmp_path)
    names = _names(cat)
    assert "disk.img" in names and isinstance(cat.lookup("/disk.img"), FileNode)
    assert "disk.img.gz" in names and isinstance(cat.lookup("/disk.img.gz"), ImageNode)
    assert "disk.img.gz.info" in names
    assert isinstance(cat.lookup("/b.img.info"), FileNode)
    assert "b.img~2" in names and "b.img~2.info" in names


def test_symlinks_inside_only_and_loops(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    write_partclone(src / "a" / "b" / "real.img", seed=4)
    outside = tmp_path / "outside.img"
    write_partclone(outside, seed=5)
    (src / "link.img").symlink_to("a/b/real.img")
    (src / "out.img").symlink_to(outside)
    (src / "a" / "b" / "up").symlink_to("../..")          # loop back to the root
    (src / "a" / "sideways").symlink_to("b")              # fine: not an ancestor
    (src / "dangling").symlink_to("nowhere")
    cat = _catalog(src)
    assert _names(cat) == ["a", "link.img", "link.img.info"]
    assert isinstance(cat.lookup("/link.img"), ImageNode)
    assert "up" not in _names(cat, "/a/b")
    assert _names(cat, "/a/sideways") == ["real.img", "real.img.info"]
    # Walking the whole tree terminates.
    assert sum(1 for _ in cat.walk()) < 50


def test_broken_images_have_info_only(tmp_path):
    write_partclone(tmp_path / "tmp.img", seed=6)
    good = (tmp_path / "tmp.img").read_bytes()
    (tmp_path / "tmp.img").unlink()
    bad = bytearray(good)
    bad[40] ^= 0xFF
    (tmp_path / "badcrc.img").write_bytes(bytes(bad))
    (tmp_path / "short.img").write_bytes(bytes(good[:data_start(16) + 100]))
    (tmp_path / "nothing.img").write_bytes(b"partclone-image\0" + b"\xff" * 20)
    cat = _catalog(tmp_path)
    names = _names(cat)
    assert "badcrc.img" not in names and "badcrc.img.info" in names
    text = cat.lookup("/badcrc.img.info").entry.info_text().decode()
    assert "BROKEN" in text and "checksum" in text
    assert "nothing.img.info" in names and "nothing.img" not in names
    node = cat.lookup("/short.img")
    assert isinstance(node, ImageNode)
    assert node.attr().size == 16 * 4096
    with pytest.raises(ImageError):
        node.entry.read(0, 16 * 4096)
    with pytest.raises(ImageError):           # asked again: still an error, never zeros
        node.entry.read(8 * 4096, 8 * 4096)
    assert "read error" in cat.lookup("/short.img.info").entry.info_text().decode()


def test_listing_is_lazy_and_opening_once(tmp_path, monkeypatch):
    for i in range(5):
        d = tmp_path / f"d{i}"
        d.mkdir()
        write_partclone(d / "x.img", seed=i)
    cat = _catalog(tmp_path)
    reads: list[tuple[str, int, int]] = []
    real_pread = os.pread
    paths: dict[int, str] = {}
    real_open = os.open

    def traced_open(path, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        paths[fd] = os.fspath(path)
        return fd

    def traced_pread(fd, n, off):
        reads.append((paths.get(fd, "?"), off, n))
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "open", traced_open)
    monkeypatch.setattr(os, "pread", traced_pread)
    assert _names(cat) == ["d0", "d1", "d2", "d3", "d4"]
    assert reads == [], "listing the root must not touch the images below"
    node = cat.lookup("/d3/x.img")
    assert {p for p, _, _ in reads} == {str(tmp_path / "d3" / "x.img")}
    assert all(off + n <= 110 for _, off, n in reads), "probe reads the header only"
    assert node.attr().size == 16 * 4096 and not node.entry.opened
    reads.clear()
    node.entry.read(0, 4096)
    node.entry.read(4096, 4096)
    bitmap_reads = [r for r in reads if r[1] == 110]
    assert len(bitmap_reads) == 1, "the bitmap is read once"


def test_du_blocks_count_stored_data(tmp_path):
    stored = {0: b"a" * 4096, 5: b"b" * 4096}
    image, _ = partclone_v2(1000, 4096, stored)
    (tmp_path / "sparse.img").write_bytes(image)
    cat = _catalog(tmp_path)
    attr = cat.lookup("/sparse.img").attr()
    assert attr.size == 1000 * 4096
    assert attr.blocks * 512 == 2 * 4096
    assert attr.perm & 0o222 == 0


def test_config_sources_and_filters(tmp_path):
    a = tmp_path / "a"
    (a / "old").mkdir(parents=True)
    write_partclone(a / "keep.img", seed=1)
    write_partclone(a / "skip.tmp", seed=2)
    write_partclone(a / "old" / "x.img", seed=3)
    single = tmp_path / "single" / "sda1.ext4-ptcl-img.aa"
    single.parent.mkdir()
    data = (a / "keep.img").read_bytes()
    single.write_bytes(data[:5000])
    single.with_name("sda1.ext4-ptcl-img.ab").write_bytes(data[5000:])
    settings = Settings(cache_size=1 << 20, files=False, sources=[
        SourceSpec(path=str(a), exclude=["*.tmp", "old"]),
        SourceSpec(path=str(single), name="laptop-root"),
    ])
    cat = Catalog(settings, None, pool=FdPool(16))
    assert _names(cat) == ["a", "laptop-root", "laptop-root.info"]
    assert _names(cat, "/a") == ["keep.img", "keep.img.info"]
    assert _read_all(cat, "/laptop-root") == _read_all(cat, "/a/keep.img")


def test_uid_gid_umask_overrides(tmp_path):
    write_partclone(tmp_path / "x.img", seed=1)
    cat = _catalog(tmp_path, uid=1234, gid=99, umask=0o077)
    a = cat.lookup("/x.img").attr()
    assert (a.uid, a.gid, a.perm) == (1234, 99, 0o400)
    assert cat.lookup("/").attr().perm == 0o500


def test_many_images_stay_within_the_descriptor_bound(tmp_path):
    for i in range(60):
        write_partclone(tmp_path / f"i{i:02d}.img", seed=i)
    pool = FdPool(8)
    cat = Catalog(Settings(cache_size=1 << 20), str(tmp_path), pool=pool)
    for i in range(60):
        cat.lookup(f"/i{i:02d}.img").entry.read(0, 4096)
        assert pool.open_count() <= 8
    cat.close()
    assert pool.open_count() == 0


def test_ls_and_index_verbs(tmp_path, capsys):
    import argparse

    from imagefs.cli.treeverbs import index_main, ls_main

    write_partclone(tmp_path / "good.img", seed=1)
    (tmp_path / "bad.img").write_bytes(b"partclone-image\0" + b"\xff" * 100)
    args = argparse.Namespace(source=str(tmp_path), config=None, verbose=0, quiet=True,
                              index_dir=str(tmp_path.parent / "idx"))
    assert ls_main(args) == 2                       # one image is broken (exitcodes.IMAGE)
    out = capsys.readouterr().out
    assert "/good.img  partclone 2" in out and "/bad.img" in out and "BROKEN" in out
    (tmp_path / "bad.img").unlink()
    assert index_main(args) == 0
    assert "/good.img: ready" in capsys.readouterr().out


def test_split_sets_with_unrelated_siblings_and_holes(tmp_path):
    write_partclone(tmp_path / "whole", seed=9, total_blocks=32)
    data = (tmp_path / "whole").read_bytes()
    (tmp_path / "whole").unlink()
    cut = 10000
    chunks = [data[i:i + cut] for i in range(0, len(data), cut)]
    assert len(chunks) >= 4
    names = ["aa", "ab", "ac", "ad", "ae", "af", "ag", "ah", "ai", "aj", "ak", "al", "am", "an"]
    for suffix, chunk in zip(names, chunks):
        (tmp_path / f"good.img.{suffix}").write_bytes(chunk)
        if suffix != "ab":
            (tmp_path / f"holey.img.{suffix}").write_bytes(chunk)
    (tmp_path / "good.img.sha").write_text("checksums of the pieces\n")
    cat = _catalog(tmp_path)
    names_shown = _names(cat)
    assert "good.img" in names_shown and "good.img.sha" in names_shown
    assert isinstance(cat.lookup("/good.img"), ImageNode)
    assert "holey.img.info" in names_shown and "holey.img" not in names_shown
    assert not [n for n in names_shown if n.startswith("holey.img.a")], names_shown
    text = cat.lookup("/holey.img.info").entry.info_text().decode()
    assert "holey.img.ab" in text and "missing" in text


def test_block_map_built_once_under_concurrent_first_reads(tmp_path):
    truth = write_partclone(tmp_path / "x.img", seed=3)
    cat = _catalog(tmp_path)
    entry = cat.lookup("/x.img").entry
    real_open = entry.header.open
    calls = []
    entered = []
    gate = threading.Event()

    def gated_open(*args, **kw):
        calls.append(1)
        gate.wait(30)               # hold the first open until every reader has arrived
        return real_open(*args, **kw)

    def reader(_):
        entered.append(1)
        return results.append(entry.read(0, len(truth)))

    entry.header.open = gated_open
    results = []

    def release_when_all_arrived():
        if not gate.is_set():
            wait_until(lambda: len(entered) == 8, what="all eight readers to arrive")
            gate.set()
    run_in_threads(reader, count=8, while_running=release_when_all_arrived)
    assert len(calls) == 1
    assert len(results) == 8 and all(r == truth for r in results)


def test_an_image_error_is_logged_once(tmp_path, caplog):
    import logging

    write_partclone(tmp_path / "x.img", seed=1)
    data = (tmp_path / "x.img").read_bytes()
    (tmp_path / "x.img").write_bytes(data[:data_start(16) + 10])
    cat = _catalog(tmp_path)
    entry = cat.lookup("/x.img").entry
    with caplog.at_level(logging.WARNING, logger="imagefs"):
        for _ in range(5):
            with pytest.raises(ImageError):
                entry.read(0, 16 * 4096)
    assert len([r for r in caplog.records if "x.img" in r.getMessage()]) == 1


def test_unexpected_read_errors_become_eio_not_efault(tmp_path):
    """The FUSE boundary maps every failure of a read to EIO (never wrong bytes)."""
    import errno
    from types import SimpleNamespace

    from mfusepy import FuseOSError

    from imagefs.fuse.adapter import ImageFS

    truth = write_partclone(tmp_path / "x.img", seed=5)
    ops = ImageFS(_catalog(tmp_path))
    fi = SimpleNamespace(flags=os.O_RDONLY, fh=0, keep_cache=0, direct_io=0)
    ops.open("/x.img", fi)
    assert ops.read(None, 4096, 0, fi) == truth[:4096]
    entry = ops.catalog.lookup("/x.img").entry

    def broken(*_args):
        raise ValueError("a decoder said something odd")

    entry.partition().image.read_stored = broken
    entry.partition().image.read_stored_into = broken
    entry.partition()._cache = None          # make the read reach the image
    with pytest.raises(FuseOSError) as err:
        ops.read(None, 4096, 0, fi)
    assert err.value.errno == errno.EIO
    # The same through the reply-buffer path ImageFUSE uses.
    with pytest.raises(FuseOSError) as err:
        ops.read_into(fi.fh, memoryview(bytearray(4096)), 0)
    assert err.value.errno == errno.EIO


def test_files_view_name_follows_the_clash_rule(tmp_path):
    """VNAME.files is reserved like VNAME.info: a real file of that name moves the image."""
    write_partclone(tmp_path / "a.img.aa", seed=1)          # a piece set of one
    write_partclone(tmp_path / "b.img", seed=2)
    (tmp_path / "b.img.files").write_text("a real file\n")
    cat = _catalog(tmp_path, files=True)
    names = _names(cat)
    assert {"a.img", "a.img.info", "a.img.files"} <= set(names)
    assert "b.img.files" in names and isinstance(cat.lookup("/b.img.files"), FileNode)
    assert {"b.img~2", "b.img~2.info", "b.img~2.files"} <= set(names)
    # The crafted bytes hold no file system: the first access removes the view.
    view = cat.lookup("/a.img.files")
    view.attr()                                   # stat alone does not open it
    with pytest.raises(NotFound):
        view.listing()
    with pytest.raises(NotFound):
        view.attr()
    assert "files view:                 none:" in \
        cat.lookup("/a.img.info").entry.info_text().decode()


def _in_fresh_interpreter(script: str) -> list[str]:
    """The lines ``script`` prints, run by a fresh interpreter (this test
    run has every module loaded)."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_listing_and_first_read_leave_the_rarely_needed_modules_unloaded(tmp_path):
    # Start-up cost (issue 12): a mount's first byte must not pay for the
    # files layer, the raw-partition probe, index pruning, the .info
    # renderer, partclone format 1 or modules only big groups and gzip use,
    # nor dataclasses (each class defined costs a compile: imagefs.records).
    write_partclone(tmp_path / "x.img", seed=3)
    script = (
        "import sys\n"
        "from imagefs.cli.mountopts import split_options\n"
        "split_options(['ro,allow_other'])\n"
        "from imagefs.catalog import Catalog\n"
        "from imagefs.config import Settings\n"
        f"cat = Catalog(Settings(cache_size=8 << 20), {str(tmp_path)!r}, mountpoint='/mnt/x')\n"
        "names = sorted(cat.lookup('/').children())\n"
        "data = cat.lookup('/x.img').entry.read(0, 4096)\n"
        "lazy = ['imagefs.files.tree', 'imagefs.files.detect', 'imagefs.files.datamap',\n"
        "        'imagefs.formats.raw', 'imagefs.blockio.rawsize',\n"
        "        'imagefs.services.indexprune', 'imagefs.catalog.infotext', 'difflib',\n"
        "        'imagefs.files.partition', 'imagefs.formats.partclone_v1', 'mmap',\n"
        "        'resource', 'dataclasses']\n"
        "print(names, len(data), [m for m in lazy if m in sys.modules])\n"
        "cat.lookup('/x.img.info').open()\n"
        "print('imagefs.catalog.infotext' in sys.modules)\n")
    out = _in_fresh_interpreter(script)
    assert out[0] == "['x.img', 'x.img.files', 'x.img.info'] 4096 []"
    assert out[1] == "True", "the renderer loads once a .info is opened"


def test_a_zstd_images_first_read_loads_no_zstd_binding(tmp_path):
    # The head of an unindexed zstd image is decoded through the system
    # libzstd (codecs/zstdstream): pyzstd's import with typing_extensions
    # took 5-10 ms of a mount's first read, python-zstandard's 3 ms, and
    # the index pass is loaded only once a read needs it.
    import subprocess
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    write_partclone(tmp_path / "plain", seed=3)
    subprocess.run(["zstd", "-q", "-T0", "-3", str(tmp_path / "plain"), "-o",
                    str(tmp_path / "x.img.zst")], check=True)
    (tmp_path / "plain").unlink()
    script = (
        "import sys\n"
        "from imagefs.catalog import Catalog\n"
        "from imagefs.config import Settings\n"
        f"cat = Catalog(Settings(cache_size=8 << 20, index_dir={str(tmp_path / 'idx')!r}),\n"
        f"              {str(tmp_path)!r}, mountpoint='/mnt/x')\n"
        "names = sorted(cat.lookup('/').children())\n"
        "data = cat.lookup('/x.img').entry.read(0, 4096)\n"
        "lazy = ['pyzstd', 'zstandard', 'imagefs.codecs.zstdindex']\n"
        "print(names, len(data), [m for m in lazy if m in sys.modules])\n")
    out = _in_fresh_interpreter(script)
    assert out[0] == "['x.img', 'x.img.files', 'x.img.info'] 4096 []"
