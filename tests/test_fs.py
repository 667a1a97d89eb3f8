"""The FUSE adapter without a mount: errno mapping, handles, the in-place read path.

``ImageFS`` is driven directly with a small fake catalog built from the
catalog's own node protocol, so every branch of the errno mapping is
reached without FUSE; one test uses a real catalog over a real compressed
image to show that opening does not build the codec index.
"""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace

import pytest

from imagefs.catalog import (Attr, DirectoryNode, FileLikeNode, LinkNode, Node, NotADirectory,
                             NotFound, OpenFile)
from imagefs.catalog.nodes import copying_reader
from imagefs.config import Settings
from imagefs.errors import FormatError, TruncatedError
from imagefs.fuse.adapter import FuseOSError, ImageFS

DATA = bytes(range(256)) * 64


def _attr(mode: int, size: int = 0) -> Attr:
    return Attr(mode=mode, size=size, blocks=0, mtime_ns=1, ctime_ns=2, atime_ns=3,
                uid=0, gid=0)


class FakeFile(FileLikeNode):
    def __init__(self, vpath: str, data: bytes = DATA, fail_open: Exception | None = None,
                 fail_read: Exception | None = None, info: bool = False) -> None:
        super().__init__(vpath)
        self.data, self.fail_open, self.fail_read, self.info = data, fail_open, fail_read, info

    def attr(self) -> Attr:
        return _attr(stat.S_IFREG | 0o444, len(self.data))

    def open(self) -> OpenFile:
        if self.fail_open is not None:
            raise self.fail_open

        def read(offset: int, size: int) -> bytes:
            if self.fail_read is not None:
                raise self.fail_read
            return self.data[offset:offset + size]
        return OpenFile(read, copying_reader(read), keep_cache=not self.info,
                        direct_io=self.info)


class FakeLink(LinkNode):
    def attr(self) -> Attr:
        return _attr(stat.S_IFLNK | 0o777, 6)

    def readlink(self) -> str:
        return "target"


class FakeDir(DirectoryNode):
    def __init__(self, vpath: str, kids: dict[str, Node]) -> None:
        super().__init__(vpath)
        self.kids = kids

    def attr(self) -> Attr:
        return _attr(stat.S_IFDIR | 0o555)

    def children(self) -> dict[str, Node]:
        return self.kids


class FakeCatalog:
    """Just what ImageFS asks of a catalog."""

    def __init__(self) -> None:
        self.root = FakeDir("/", {
            "good": FakeFile("/good"),
            "good.info": FakeFile("/good.info", b"text\n", info=True),
            "broken": FakeFile("/broken", fail_open=FormatError("/b", "bad header")),
            "cut": FakeFile("/cut", fail_read=TruncatedError("/c", "ends early")),
            "weird": FakeFile("/weird", fail_read=RuntimeError("library bug")),
            "link": FakeLink("/link"),
            "sub": FakeDir("/sub", {}),
        })
        self.roots = ["/"]
        self.mountpoint = None
        self.closed = False
        self.settings = Settings()

    def resolve(self, path: str):
        node: Node = self.root
        chain = []
        for part in filter(None, path.split("/")):
            if not isinstance(node, DirectoryNode):
                raise NotADirectory(path)
            chain.append(node.access_key())
            node = node.child(part)
        return node, tuple(chain)

    def lookup(self, path: str) -> Node:
        return self.resolve(path)[0]

    def close(self) -> None:
        self.closed = True


def _fi(flags: int = os.O_RDONLY) -> SimpleNamespace:
    return SimpleNamespace(flags=flags, fh=0, keep_cache=0, direct_io=0)


@pytest.fixture
def fs() -> ImageFS:
    return ImageFS(FakeCatalog(), context=lambda: (0, 0, 1))


def test_access_follows_the_nodes_access_attributes():
    """Without default_permissions the adapter checks like the kernel would."""
    cat = FakeCatalog()
    secret = FakeFile("/sub/secret")
    secret.attr = lambda: _attr(stat.S_IFREG | 0o600, 10)        # owner 0 only
    cat.root.kids["sub"].kids["secret"] = secret
    caller = [(1000, 1000, 1)]
    fs = ImageFS(cat, context=lambda: caller[0], check_access=True)
    assert _errno(fs.open, "/sub/secret", _fi()) == errno.EACCES
    assert fs.getattr("/sub/secret")["st_size"] == 10              # stat is allowed
    fs.open("/good", _fi())                                        # 0444: anyone
    private = FakeDir("/private", {"secret": secret})
    private.attr = lambda: _attr(stat.S_IFDIR | 0o700)
    cat.root.kids["private"] = private
    assert _errno(fs.getattr, "/private/secret") == errno.EACCES  # no search permission
    caller[0] = (0, 0, 1)                                          # root may
    fs.open("/sub/secret", _fi())


def _errno(call, *args) -> int:
    with pytest.raises(FuseOSError) as info:
        call(*args)
    return info.value.errno


def test_lookup_errors_map_to_enoent_and_enotdir(fs):
    assert _errno(fs.getattr, "/nope") == errno.ENOENT
    assert _errno(fs.getattr, "/good/inside") == errno.ENOTDIR
    assert fs.getattr("/good")["st_size"] == len(DATA)
    assert stat.S_ISDIR(fs.getattr("/")["st_mode"])
    assert stat.S_ISLNK(fs.getattr("/link")["st_mode"])
    assert fs.getattr("/good")["st_mtime"] == 1     # nanoseconds (use_ns)


def test_writes_are_erofs(fs):
    assert _errno(fs.open, "/good", _fi(os.O_WRONLY)) == errno.EROFS
    assert _errno(fs.open, "/good", _fi(os.O_RDWR)) == errno.EROFS
    for op, args in ((fs.write, ("/good", b"x", 0, 0)), (fs.unlink, ("/good",)),
                     (fs.mkdir, ("/d", 0o755)), (fs.chmod, ("/good", 0o777)),
                     (fs.truncate, ("/good", 0))):
        assert _errno(op, *args) == errno.EROFS
    assert _errno(fs.access, "/good", os.W_OK) == errno.EROFS
    assert fs.access("/good", os.R_OK) == 0


def test_open_read_into_and_release(fs):
    fi = _fi()
    assert fs.open("/good", fi) == 0 and fi.fh > 0 and fi.keep_cache == 1
    buf = bytearray(1000)
    assert fs.read_into(fi.fh, memoryview(buf), 100) == 1000
    assert bytes(buf) == DATA[100:1100]
    assert fs.read("/good", 10, len(DATA) - 4, fi) == DATA[-4:]      # short at the end
    fs.release("/good", fi)
    assert _errno(fs.read_into, fi.fh, memoryview(buf), 0) == errno.EBADF


def test_info_files_bypass_the_page_cache(fs):
    fi = _fi()
    fs.open("/good.info", fi)
    assert fi.direct_io == 1 and fi.keep_cache == 0
    assert fs.read(None, 100, 0, fi) == b"text\n"


def test_broken_and_damaged_images_answer_eio(fs):
    assert _errno(fs.open, "/broken", _fi()) == errno.EIO
    for name in ("cut", "weird"):                  # an ImageError, and an unexpected bug
        fi = _fi()
        fs.open(f"/{name}", fi)
        assert _errno(fs.read_into, fi.fh, memoryview(bytearray(10)), 0) == errno.EIO
        assert _errno(fs.read, None, 10, 0, fi) == errno.EIO


def test_directories(fs):
    assert _errno(fs.open, "/sub", _fi()) == errno.EISDIR
    assert _errno(fs.opendir, "/good") == errno.ENOTDIR
    fh = fs.opendir("/")
    entries = list(fs.readdir(None, fh))
    listing = {name: attrs["st_mode"] for name, attrs, _ in entries}
    assert all(attrs["st_ino"] > 0 for _, attrs, _ in entries), "getdents skips inode 0"
    assert listing["good"] == stat.S_IFREG and listing["sub"] == stat.S_IFDIR
    assert listing["link"] == stat.S_IFLNK and {".", ".."} <= set(listing)
    fs.releasedir(None, fh)
    assert fs.readlink("/link") == "target"
    assert _errno(fs.readlink, "/good") == errno.EINVAL


def test_destroy_closes_the_catalog(fs):
    fs.destroy("/")
    assert fs.catalog.closed


def test_opening_a_compressed_image_does_not_build_its_index(factory, tmp_path):
    """FUSE open reads header and bitmap; the codec index waits for a read that needs it."""
    from imagefs.catalog import Catalog
    from imagefs.config import Settings

    image = factory.compressed(factory.partclone("ext4"), ["zstd", "-q", "-c", "-T0", "-3"],
                               "zst")
    src = tmp_path / "src"
    src.mkdir()
    os.link(image.path, src / image.path.name)
    settings = Settings(index_dir=str(tmp_path / "idx"))
    fs = ImageFS(Catalog(settings, str(src)))
    vname = image.path.name[:-len(".zst")]
    node = fs.catalog.lookup("/" + vname)
    stream = node.entry.stream
    assert stream.codec == "zstd" and stream.index is None
    fi = _fi()
    fs.open("/" + vname, fi)
    assert stream.index is None, "open must not build the codec index"
    size = fs.getattr("/" + vname)["st_size"]
    truth = image.ground_truth.read_bytes()
    buf = bytearray(1 << 20)
    got = bytearray()
    for off in range(0, size, len(buf)):
        n = fs.read_into(fi.fh, memoryview(buf), off)
        got += buf[:n]
    assert bytes(got) == truth
    assert stream.index is not None, "reading the whole partition needs the index"
    fs.release("/" + vname, fi)
    fs.destroy("/")

