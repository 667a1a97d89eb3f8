"""Acceptance: what the real Clonezilla writes mounts from a plain ``pip install .``.

One disk (ext4 + a partition of raw random data, which partclone cannot
image, so Clonezilla falls back to partclone.dd) is saved by the real
``ocs-sr`` twice: ``-z1 -i 1`` (gzip, 1 MB pieces: a ``dd-ptcl-img.gz``
split set) and ``-z3`` (lzop).  imagefs is installed into a fresh venv with
``pip install .`` -- no extras, no C compiler on PATH -- and that install
mounts the tree; both virtual partitions must equal the ground truth byte
for byte (the raw partition's own bytes; partclone.restore of the lzop
image).  Slow (two saves, one install): about two minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mount_helpers import need_fuse, sha256_of, unmount
from realdisks import disk_device, partition_path
from realimages import loop_device, need, need_root, run

REPO = Path(__file__).resolve().parent.parent
#: ocs-sr's batch save of formats.md 5.6, compression and splitting chosen per save.
OCS = ["ocs-sr", "-q2", "-j2", "-sfsck", "-scs", "-senc", "-nogui", "-p", "true", "-batch"]
COMPILERS = ("gcc", "g++", "cc", "c++", "c89", "c99", "cpp", "clang", "tcc", "x86_64-linux-gnu-")


def _ocs(args: list[str], out: Path, log: Path) -> None:
    proc = subprocess.run(OCS + args[:-3] + ["-or", str(out)] + args[-3:],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=900)
    text = proc.stdout.decode(errors="replace")
    log.write_text(text)
    # ocs-sr exits 0 even when a partition failed: its output says so.
    # savedisk ends with "This image was saved successfully", saveparts only
    # with each partition's "Cloned successfully." and the end of the job.
    done = "This image was saved successfully" in text or (
        "Cloned successfully." in text and "End of saveparts job" in text)
    if proc.returncode or "Failed to save partition" in text or not done:
        raise RuntimeError(f"ocs-sr {' '.join(args)} failed:\n{text[-3000:]}")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    need_root()
    need("ocs-sr", "sfdisk", "partx", "partclone.restore", "lzop", "mkfs.ext4")
    work = tmp_path_factory.mktemp("clonezilla")
    raw = work / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
    run(["sfdisk", "-q", str(raw)], stdin=None,
        input=b"label: dos\nstart=2048, size=24M, type=83\nsize=16M, type=83\n")
    tree = work / "backups"
    tree.mkdir()
    with disk_device(raw) as dev:
        run(["mkfs.ext4", "-q", "-F", partition_path(dev, 1)])
        from realimages import fill_tree, mounted
        with mounted(partition_path(dev, 1), work / "fill"):
            fill_tree(work / "fill", 13, 4)
        with open(partition_path(dev, 2), "wb") as f:       # no file system: dd
            f.write(os.urandom(16 << 20))
        os.sync()
        name = dev[len("/dev/"):]
        _ocs(["-z1", "-i", "1", "savedisk", "img-gz-split", name], tree, work / "a.log")
        _ocs(["-z3", "saveparts", "img-lzop", f"{name}p1"], tree, work / "b.log")
    start, size = 2048 * 512, 16 << 20
    start += 24 << 20
    truth_dd = work / "truth-p2.raw"
    with open(raw, "rb") as src, open(truth_dd, "wb") as dst:
        src.seek(start)
        dst.write(src.read(size))
    lzo = tree / "img-lzop" / f"{name}p1.ext4-ptcl-img.lzo"
    assert lzo.exists(), sorted(os.listdir(tree / "img-lzop"))
    dd_pieces = sorted((tree / "img-gz-split").glob(f"{name}p2.dd-ptcl-img.gz.a?"))
    assert len(dd_pieces) >= 2, sorted(os.listdir(tree / "img-gz-split"))
    truth_ext4 = work / "truth-p1.raw"
    with open(truth_ext4, "wb") as f:
        f.truncate(24 << 20)
    with loop_device(truth_ext4) as target:
        lz = subprocess.Popen(["lzop", "-dc", str(lzo)], stdout=subprocess.PIPE)
        try:
            run(["partclone.restore", "-s", "-", "-o", target], stdin=lz.stdout)
        finally:
            lz.stdout.close()  # type: ignore[union-attr]
            lz.wait(60)
    return {"tree": tree, "dd": truth_dd, "ext4": truth_ext4, "name": Path(name)}


def _no_compiler_path(where: Path) -> str:
    """A PATH with every program of the system but the C/C++ compilers."""
    bin_dir = where / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"):
        for name in sorted(os.listdir(d)):
            if name.startswith(COMPILERS) or (bin_dir / name).exists():
                continue
            (bin_dir / name).symlink_to(os.path.join(d, name))
    return str(bin_dir)


@pytest.fixture(scope="module")
def fresh_imagefs(tmp_path_factory) -> Path:
    """``pip install .`` of a copy of this tree into a fresh venv, no compiler, no extras."""
    work = tmp_path_factory.mktemp("fresh")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__",
                                                             "*.egg-info", "samples", "bench"))
    path = _no_compiler_path(work)
    assert shutil.which("gcc", path=path) is None and shutil.which("cc", path=path) is None
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    env = {"PATH": path, "HOME": str(work), "LANG": "C.UTF-8"}
    venv = work / "venv"
    run([python, "-m", "venv", str(venv)], env=env)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import importlib.util as u; print(u.find_spec('lzallright') is "
                            "not None, u.find_spec('lzo') is None)"],
                           capture_output=True, text=True, env=env)
    assert check.stdout.split() == ["True", "True"], check.stdout + check.stderr
    return venv / "bin" / "imagefs"


@pytest.mark.mount
@pytest.mark.root
def test_clonezilla_dd_split_set_and_lzop_image_mount_from_a_plain_install(
        saved, fresh_imagefs, tmp_path):
    need_fuse()
    name = str(saved["name"])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c")}
    proc = subprocess.run([str(fresh_imagefs), str(saved["tree"]), str(mnt)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    try:
        dd = mnt / "img-gz-split" / f"{name}p2.dd-ptcl-img"
        lzo = mnt / "img-lzop" / f"{name}p1.ext4-ptcl-img"
        assert not [n for n in os.listdir(mnt / "img-gz-split") if ".gz.a" in n]
        assert sha256_of(dd) == sha256_of(saved["dd"])
        assert sha256_of(lzo) == sha256_of(saved["ext4"])
        info = (mnt / "img-gz-split" / f"{name}p2.dd-ptcl-img.info").read_text()
        assert "raw partition data (partclone.dd)" in info
        assert f"the partition table {name}-pt.sf" in info and "status:" in info
        info = (mnt / "img-lzop" / f"{name}p1.ext4-ptcl-img.info").read_text()
        assert "compression:                lzop" in info and "status:                     ok" in info
        version = subprocess.run([str(fresh_imagefs), "version"], capture_output=True,
                                 text=True, env=env).stdout
        assert "lzo lzallright" in version
    finally:
        unmount(mnt)
