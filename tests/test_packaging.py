"""Packaging: the sdist carries the license, docs, man page and contrib; the wheel only the package.

Built with ``python -m build`` from a copy of the tree (nothing is written
into the source tree); the wheel is built from the sdist, so a file the
sdist forgets fails the build.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("dist")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__",
                                                             "*.egg-info", "build"))
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(work / "out"),
                           str(src)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = work / "out"
    return {"sdist": next(out.glob("imagefs-*.tar.gz")), "wheel": next(out.glob("*.whl"))}


def test_sdist_carries_what_users_and_packagers_need(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("LICENSE", "README.md", "config.example.yaml", "man/imagefs.1",
                   "contrib/systemd/mnt-images.mount", "contrib/bash-completion/imagefs",
                   "contrib/fstab.example", "pyproject.toml", "imagefs/api.py"):
        assert needed in names, f"the sdist lacks {needed}"
    assert not any(n.startswith(("samples/", "bench/")) for n in names)


def test_wheel_holds_only_the_package_and_spdx_metadata(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = whl.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(meta).decode()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops <= {"imagefs"} | {t for t in tops if t.endswith(".dist-info")}, tops
    assert "License-Expression: GPL-3.0-or-later" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    requires = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
    for line in requires:
        if "extra ==" in line:
            continue
        assert ">=" in line, f"no lower bound: {line}"
    assert any("lzallright" in ln and "python_version" in ln for ln in requires)


def test_the_venv_command_keeps_its_bytecode_out_of_the_source_tree(tmp_path):
    # The editable install's checkout is the package: without the .pth that
    # scripts/setup.sh writes, a run writes __pycache__ into the tree (or, for
    # a user who cannot write it, compiles every module at every start).
    venv_python = REPO / ".venv" / "bin" / "python"
    if not venv_python.exists() or not list((REPO / ".venv").glob(
            "lib/python*/site-packages/imagefs-bytecode.pth")):
        pytest.skip("no .venv made by scripts/setup.sh")
    before = set(REPO.joinpath("imagefs").rglob("*.pyc"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.run([str(venv_python), "-c", "import imagefs.cli.mount"], env=env,
                          capture_output=True, text=True, timeout=120)
    written = set(REPO.joinpath("imagefs").rglob("*.pyc")) - before
    for pyc in written:                    # a failing run leaves the tree as it was
        pyc.unlink()
    for folder in {pyc.parent for pyc in written}:
        if not any(folder.iterdir()):
            folder.rmdir()
    assert proc.returncode == 0, proc.stderr
    assert not written, f"bytecode written into the source tree: {sorted(written)[:3]}"
    cached = list((tmp_path / "imagefs" / "pycache").rglob("mount.cpython-*.pyc"))
    assert cached, "the bytecode went nowhere: every start compiles again"
