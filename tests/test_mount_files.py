"""``VNAME.files/`` through a real mount: the tree equals a kernel mount of the same bytes.

One mount serves partclone/ntfsclone images of every file system the files
layer reads (the rich trees of files_fixtures), compressed and split
variants, and a truncated image.  Each ``VNAME.files`` is walked through
FUSE and compared with the reference driver's mount of the image's ground
truth (kernel for ext*/xfs/btrfs, ntfs-3g, exfat-fuse, mtools for FAT).
Then: who may read (the backup file decides, not the stored modes), the
ordinary-user flow with no root step, ``-o nofiles``, laziness, and
``imagefs extract``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import files_compare as fc
import files_fixtures as ff
from mount_helpers import IMAGEFS, imagefs_mounted, user_python
from realimages import Factory, Image, need_root, run
from test_files_view import KINDS, normalise, reference

pytestmark = [pytest.mark.mount, pytest.mark.root]

#: Compressed and split forms, Clonezilla's way: (label, kind, compressor or None, split bytes)
VARIANTS = [
    (f"{kind}-{form}", kind, comp, split)
    for kind in ("ext4", "xfs", "btrfs", "ntfs", "ntfsclone", "exfat", "fat32")
    for form, comp, split in (
        ("zstd", (["zstd", "-q", "-c", "-T0", "-3"], "zst"), None),
        ("gzip", (["gzip", "-c", "--fast"], "gz"), None),
        ("split", None, 3_000_000),
    )
] + [("ntfs-zstd-split", "ntfs", (["zstd", "-q", "-c", "-T0", "-3"], "zst"), 2_000_000)]
USER = "imagefs-files"


def _vname(img: Image) -> str:
    """The display name of an image placed under its own file name."""
    name = img.path.name
    if name.endswith(".aa"):
        name = name[:-3]
    for suffix in (".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name


def _place(img: Image, dest: Path) -> None:
    dest.mkdir(parents=True)
    if img.path.name.endswith(".aa"):
        stem = img.path.name[:-3]
        for piece in sorted(img.path.parent.iterdir()):
            if piece.name.startswith(stem + "."):
                os.link(piece, dest / piece.name)
    else:
        os.link(img.path, dest / img.path.name)


@pytest.fixture(scope="module")
def entries(factory: Factory) -> dict[str, tuple[str, Image]]:
    """label -> (file-system kind, image) for everything the mount shows."""
    files = ff.FilesFactory.of(factory)
    out = {kind: (kind, files.image(kind)) for kind in KINDS}
    for label, kind, comp, split in VARIANTS:
        base = files.image(kind)
        if comp is None:
            img = factory.split(base, split)
        else:
            img = factory.compressed(base, comp[0], comp[1], split)
        out[label] = (kind, img)
    return out


@pytest.fixture(scope="module")
def tree(entries, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("files-tree")
    for label, (_kind, img) in entries.items():
        _place(img, root / label)
    # A truncated ext4 image: 60% of it.
    data = entries["ext4"][1].path.read_bytes()
    (root / "truncated").mkdir()
    (root / "truncated" / "cut.img").write_bytes(data[:len(data) * 6 // 10])
    return root


@pytest.fixture(scope="module")
def mnt(tree, tmp_path_factory):
    with imagefs_mounted(tree, tmp_path_factory.mktemp("files-mnt")) as m:
        yield m


@pytest.mark.parametrize("label", list(KINDS) + [v[0] for v in VARIANTS])
def test_files_view_equals_the_reference_mount(label, entries, mnt, tmp_path):
    kind, img = entries[label]
    fields, _same = KINDS[kind]
    root = mnt / label / (_vname(img) + ".files")
    got = fc.walk_mount(root, fields)
    for e in got.values():
        e.pop("dev", None)
    exp = reference(kind, img, fields, tmp_path)
    normalise(kind, exp, got, same_ino=False)   # the mount numbers inodes mount-wide
    assert len(exp) > 200, "the reference tree is suspiciously small"
    assert got == exp, fc.diff(exp, got)


def test_inode_numbers_are_unique_across_views(entries, mnt):
    a = os.stat(mnt / "ext4" / (_vname(entries["ext4"][1]) + ".files" + "/hardlink-1.txt"))
    b = os.stat(mnt / "ext3" / (_vname(entries["ext3"][1]) + ".files" + "/hardlink-1.txt"))
    assert a.st_ino != b.st_ino
    c = os.stat(mnt / "ext4" / (_vname(entries["ext4"][1]) + ".files" + "/docs/linked.txt"))
    assert a.st_ino == c.st_ino and a.st_nlink == 3


def test_truncated_image_answers_eio_for_the_missing_part(entries, mnt, tmp_path):
    """Files whose data lies in the missing part: EIO; the others: exact; the mount lives on."""
    img = entries["ext4"][1]
    root = mnt / "truncated" / "cut.img.files"
    good = bad = 0
    with ff.reference_mount("ext4", img.ground_truth, tmp_path / "ref") as ref:
        for dirpath, _dirs, names in os.walk(ref):
            for name in names:
                src = Path(dirpath) / name
                if not stat.S_ISREG(os.lstat(src).st_mode):
                    continue
                rel = src.relative_to(ref)
                try:
                    data = (root / rel).read_bytes()
                except OSError as exc:
                    assert exc.errno == errno.EIO, (rel, exc)
                    bad += 1
                    continue
                assert data == src.read_bytes(), rel
                good += 1
    assert bad > 0 and good > 0, (good, bad)
    # Every other image is still fine.
    ext3 = mnt / "ext3" / (_vname(entries["ext3"][1]) + ".files")
    assert (ext3 / "docs").is_dir()


def test_listing_images_opens_no_file_system(entries, tree, tmp_path):
    """Listing (and stat of every entry) opens none; the first access opens one, once."""
    from imagefs.catalog import Catalog
    from imagefs.config import Settings
    cat = Catalog(Settings(index_dir=str(tmp_path / "idx")), str(tree))
    try:
        views = []
        for label in entries:
            d = cat.lookup("/" + label)
            for name, node in d.children().items():
                node.attr()
                if name.endswith(".files"):
                    views.append(node.view)
        assert views and not any(v.opened for v in views)
        first = cat.lookup(f"/ext4/{_vname(entries['ext4'][1])}.files")
        assert [entry[0] for entry in first.listing()]
        assert [v.opened for v in views].count(True) == 1
    finally:
        cat.close()


def _user() -> tuple[int, int]:
    """An ordinary user for the tests (created once; it owns nothing on this machine)."""
    need_root()
    try:
        import pwd
        pw = pwd.getpwnam(USER)
    except KeyError:
        run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER])
        import pwd
        pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid


def _as_user(script: str, cwd: Path, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", USER, "--", "sh", "-ec", script], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=300)


def test_the_backup_file_decides_who_may_read(entries, tmp_path):
    """Stored owners and modes are shown, but reading follows the backup file (allow_other)."""
    uid, _gid = _user()
    src = tmp_path / "src"
    img = entries["ext4"][1].path
    for name, mode in (("open", 0o644), ("closed", 0o600)):
        (src / name).mkdir(parents=True)
        shutil.copyfile(img, src / name / "x.img")
        os.chmod(src / name / "x.img", mode)
    os.chmod(tmp_path, 0o755)
    os.chmod(src, 0o755)
    m = tmp_path / "mnt"
    with imagefs_mounted(src, m, "-o", "allow_other"):
        stored = os.lstat(m / "open" / "x.img.files" / "empty")
        assert stat.S_IMODE(stored.st_mode) == 0
        assert stat.S_IMODE(os.lstat(m / "open" / "x.img.files" / "docs" /
                                     "numbers.txt").st_mode) == 0o640
        script = ("cat open/x.img.files/empty open/x.img.files/docs/numbers.txt > /dev/null "
                  "&& echo open-ok; "
                  "if cat closed/x.img.files/docs/numbers.txt 2>/dev/null; then "
                  "echo closed-LEAK; "
                  "else echo closed-denied; fi; "
                  "if ls closed/x.img.files > /dev/null 2>&1; then echo list-LEAK; "
                  "else echo list-denied; fi")
        out = _as_user(script, m)
    assert "open-ok" in out.stdout and "closed-denied" in out.stdout, (out.stdout, out.stderr)
    assert "list-denied" in out.stdout and "LEAK" not in out.stdout, out.stdout


def _expected_samples(tmp_path: Path) -> dict[str, bytes]:
    """README.txt of each sample partition, read from a kernel/ntfs-3g/mtools mount of its bytes."""
    from imagefs.blockio import VirtualPartition
    from imagefs.blockio.opener import open_path
    samples = Path(__file__).resolve().parent.parent / "samples" / "backups" / "2026-11-01-img"
    out = {}
    for name, kind in (("sda1.ext4-ptcl-img.zst.aa", "ext4"), ("sda2.vfat-ptcl-img.gz", "fat"),
                       ("sda3.ntfs-img.gz", "ntfs")):
        vp = VirtualPartition(open_path(str(samples / name)).probe().open())
        raw = ff.materialise(vp.read_into, vp.size, tmp_path / f"{kind}.raw")
        if kind == "fat":
            out[kind] = run(["mtype", "-i", str(raw), "::README.txt"]).stdout
        else:
            with ff.reference_mount(kind, raw, tmp_path / f"m-{kind}") as ref:
                out[kind] = (ref / "README.txt").read_bytes()
    return out


@pytest.fixture(scope="module")
def upython(tmp_path_factory) -> str:
    return user_python(tmp_path_factory)


def test_ordinary_user_copies_files_out_with_no_root_step(tmp_path, upython):
    """An ordinary user mounts the samples, copies a file out of every .files, unmounts,
    and gets the same file from ``imagefs extract`` without FUSE."""
    expected = _expected_samples(tmp_path)
    uid, gid = _user()
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, uid, gid)
    os.chmod(tmp_path, 0o755)
    samples = Path(__file__).resolve().parent.parent / "samples" / "backups"
    python = upython
    script = f"""
        mkdir -p mnt out
        export XDG_CACHE_HOME=$PWD/cache
        {python} -m imagefs {samples} mnt
        d=mnt/2026-11-01-img
        cp $d/sda1.ext4-ptcl-img.files/README.txt out/ext4
        cp $d/sda2.vfat-ptcl-img.files/README.txt out/fat
        cp $d/sda3.ntfs-img.files/README.txt out/ntfs
        fusermount3 -u mnt
        {python} -m imagefs extract -q {samples}/2026-11-01-img/sda1.ext4-ptcl-img.zst.aa \\
            README.txt -C extracted
    """
    env = dict(os.environ, HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    out = _as_user(script, home, env)
    if out.returncode != 0:
        subprocess.run(["fusermount3", "-u", str(home / "mnt")], check=False)
    assert out.returncode == 0, out.stderr
    for kind, data in expected.items():
        assert (home / "out" / kind).read_bytes() == data, kind
    assert (home / "extracted" / "README.txt").read_bytes() == expected["ext4"]
    assert os.stat(home / "out" / "ext4").st_uid == uid


def test_nofiles_hides_the_view(entries, tree, tmp_path):
    with imagefs_mounted(tree, tmp_path / "m", "-o", "nofiles") as m:
        names = os.listdir(m / "ext4")
    assert any(n.endswith(".info") for n in names)
    assert not any(n.endswith(".files") for n in names)


def test_extract_keeps_modes_times_and_holes(entries, tmp_path):
    img = entries["ext4"][1]
    proc = subprocess.run(IMAGEFS + ["extract", "-q", str(img.path), "-C", str(tmp_path / "x")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.returncode in (0, 2), proc.stderr       # sockets are skipped, nothing fails
    assert proc.returncode == 0, proc.stderr
    with ff.reference_mount("ext4", img.ground_truth, tmp_path / "ref") as ref:
        for rel in ("docs/linked.txt", "sparse.bin", "empty", "docs/numbers.txt"):
            a, b = os.lstat(ref / rel), os.lstat(tmp_path / "x" / rel)
            assert (stat.S_IMODE(a.st_mode), a.st_mtime_ns, a.st_size) == \
                (stat.S_IMODE(b.st_mode), b.st_mtime_ns, b.st_size), rel
            assert hashlib.sha256((ref / rel).read_bytes()).digest() == \
                hashlib.sha256((tmp_path / "x" / rel).read_bytes()).digest()
        assert os.readlink(tmp_path / "x" / "dangling") == os.readlink(ref / "dangling")
    assert os.stat(tmp_path / "x" / "sparse.bin").st_blocks * 512 < \
        os.stat(tmp_path / "x" / "sparse.bin").st_size, "holes stay holes"
