"""scripts/install-links.sh: this checkout's links, never another installation's.

Run with temporary link directories (the IMAGEFS_*_DIR variables), so the
machine's /usr/local/bin/imagefs -- which other checkouts may own -- is
never touched.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from realimages import need

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-links.sh"


def _install(tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict[str, Path]]:
    dirs = {"bin": tmp_path / "bin", "man": tmp_path / "man1", "completion": tmp_path / "compl"}
    env = dict(os.environ, IMAGEFS_BIN_DIR=str(dirs["bin"]), IMAGEFS_MAN_DIR=str(dirs["man"]),
               IMAGEFS_COMPLETION_DIR=str(dirs["completion"]))
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    return proc, dirs


@pytest.fixture(autouse=True)
def _bash() -> None:
    need("bash", "readlink", "ln")


def test_free_names_are_linked(tmp_path):
    proc, dirs = _install(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(dirs["bin"] / "imagefs") == str(REPO / ".venv" / "bin" / "imagefs")
    assert os.readlink(dirs["man"] / "imagefs.1") == str(REPO / "man" / "imagefs.1")
    assert os.readlink(dirs["completion"] / "imagefs") == \
        str(REPO / "contrib" / "bash-completion" / "imagefs")


def test_a_link_into_this_checkout_is_re_pointed(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "imagefs").symlink_to(REPO / "old" / "imagefs")
    proc, dirs = _install(tmp_path)
    assert proc.returncode == 0
    assert os.readlink(dirs["bin"] / "imagefs") == str(REPO / ".venv" / "bin" / "imagefs")


def test_another_installation_is_left_alone_and_named(tmp_path):
    other = tmp_path / "other-checkout" / ".venv" / "bin" / "imagefs"
    other.parent.mkdir(parents=True)
    other.write_text("#!/bin/sh\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "imagefs").symlink_to(other)
    proc, dirs = _install(tmp_path)
    assert proc.returncode == 0
    assert os.readlink(dirs["bin"] / "imagefs") == str(other)
    assert f"points to {other} (another installation); left alone" in proc.stdout


def test_a_dangling_link_is_taken_and_a_real_file_left_alone(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "imagefs").symlink_to(tmp_path / "gone" / "imagefs")
    (tmp_path / "man1").mkdir()
    (tmp_path / "man1" / "imagefs.1").write_text(".TH OTHER 1\n")
    proc, dirs = _install(tmp_path)
    assert proc.returncode == 0
    assert os.readlink(dirs["bin"] / "imagefs") == str(REPO / ".venv" / "bin" / "imagefs")
    assert "which is gone" in proc.stdout
    assert (dirs["man"] / "imagefs.1").read_text() == ".TH OTHER 1\n"
    assert "exists and is no link; left alone" in proc.stdout


def test_setup_uses_the_link_script_and_debians_python():
    text = (REPO / "scripts" / "setup.sh").read_text()
    assert '"$here/scripts/install-links.sh"' in text and "ln -sfn" not in text
    assert "python=/usr/bin/python3" in text
