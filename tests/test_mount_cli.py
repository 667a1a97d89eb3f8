"""The mount command's own behaviour: errors, foreground mode, signals, options."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from imagefs.cli import mount as mount_mod
from mount_helpers import (IMAGEFS, imagefs_mounted, need_fuse, unmount, wait_until,
                                write_partclone)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(IMAGEFS + list(args), capture_output=True, text=True, timeout=60)


@pytest.fixture()
def src(tmp_path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    write_partclone(root / "sda1.img", seed=1)
    return root


def _shown(mnt: Path) -> list[str]:
    """The mount's entries without files views (the crafted images hold no file system;
    their VNAME.files directories are tested in test_mount_files.py)."""
    return sorted(n for n in os.listdir(mnt) if not n.endswith(".files"))


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("imagefs: ")
    for w in words:
        assert w in lines[0], lines[0]


def test_missing_mountpoint(src, tmp_path):
    _one_line_error(_run(str(src), str(tmp_path / "nope")), "does not exist", "mkdir -p")


def test_mountpoint_not_empty(src, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    _one_line_error(_run(str(src), str(tmp_path / "full")), "not empty")


def test_missing_source(tmp_path):
    (tmp_path / "mnt").mkdir()
    _one_line_error(_run(str(tmp_path / "gone"), str(tmp_path / "mnt")), "no such file")


def test_bad_config(src, tmp_path):
    (tmp_path / "mnt").mkdir()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cache_sise: 1G\n")
    _one_line_error(_run(str(src), str(tmp_path / "mnt"), "-c", str(cfg)),
                    str(cfg), "cache_sise", "unknown key")
    _one_line_error(_run(str(src), str(tmp_path / "mnt"), "-o", f"config={cfg}"), "cache_sise")


def test_fuse_unavailable_says_what_to_install(monkeypatch):
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/dev/fuse" else real_exists(p))
    with pytest.raises(mount_mod.MountError, match="apt-get install fuse3"):
        mount_mod.check_fuse(False)


def test_allow_other_refused_for_users_gives_the_hint(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    monkeypatch.setattr(mount_mod, "_user_allow_other", lambda: False)
    with pytest.raises(mount_mod.MountError, match="user_allow_other in /etc/fuse.conf"):
        mount_mod.check_fuse(True)
    monkeypatch.setattr(mount_mod, "_user_allow_other", lambda: True)
    mount_mod.check_fuse(True)


def test_libfuse_rejects_unknown_option(src, tmp_path):
    need_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        proc = _run(str(src), str(mnt), "-o", "no_such_fuse_option")
        assert proc.returncode != 0
        assert "no_such_fuse_option" in proc.stderr and "imagefs:" in proc.stderr
        assert not os.path.ismount(mnt)
    finally:
        unmount(mnt)


@contextlib.contextmanager
def _foreground(src, mnt):
    """``imagefs SRC MNT -f`` started, waited for until it mounts or exits; cleaned up."""
    need_fuse()
    mnt.mkdir()
    proc = subprocess.Popen(IMAGEFS + [str(src), str(mnt), "-f"], stderr=subprocess.PIPE)
    try:
        wait_until(lambda: os.path.ismount(mnt) or proc.poll() is not None, what="the mount")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        unmount(mnt)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foreground_unmounts_cleanly_on_signal(src, tmp_path, sig):
    mnt = tmp_path / "mnt"
    with _foreground(src, mnt) as proc:
        assert os.path.ismount(mnt), proc.stderr.read().decode() if proc.stderr else ""
        assert _shown(mnt) == ["sda1.img", "sda1.img.info"]
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        assert not os.path.ismount(mnt)


def test_background_returns_when_live_and_single_image_source(src, tmp_path):
    mnt = tmp_path / "mnt"
    with imagefs_mounted(src / "sda1.img", mnt, "-o", "cache_size=16M,umask=077") as m:
        assert _shown(m) == ["sda1.img", "sda1.img.info"]
        assert (m / "sda1.img").stat().st_mode & 0o777 == 0o400
        assert "partclone" in (m / "sda1.img.info").read_text()


def test_config_lists_the_sources(src, tmp_path):
    cfg = tmp_path / "imagefs.yaml"
    cfg.write_text(f"sources:\n  - path: {src}\n    name: laptop\n"
                   f"  - path: {src / 'sda1.img'}\n    name: root.ext4\n")
    with imagefs_mounted(None, tmp_path / "mnt", "-c", str(cfg)) as m:
        assert _shown(m) == ["laptop", "root.ext4", "root.ext4.info"]
        assert (m / "laptop" / "sda1.img").read_bytes() == (m / "root.ext4").read_bytes()


def test_fstab_placeholder_source_with_config(src, tmp_path):
    cfg = tmp_path / "imagefs.yaml"
    cfg.write_text(f"sources:\n  - path: {src}\n")
    with imagefs_mounted("none", tmp_path / "mnt", "-o", f"ro,config={cfg}") as m:
        assert _shown(m) == ["sda1.img", "sda1.img.info"]


def test_dead_mount_gets_a_hint(src, tmp_path):
    mnt = tmp_path / "mnt"
    with _foreground(src, mnt) as proc:
        proc.kill()                          # dies without unmounting
        proc.wait()
        _one_line_error(_run(str(src), str(mnt)), "dead FUSE mount", "fusermount3 -u")


def test_version_reports_libfuse():
    from imagefs.fuse.library import libfuse_version

    text = libfuse_version()
    assert text[0].isdigit() and "libfuse" in text, text
    out = _run("version").stdout
    assert "libfuse " + text in out, out


def test_request_threads_sized_to_the_cpus_where_libfuse_can():
    from imagefs.fuse.library import loop_options, worker_threads

    assert [worker_threads(n) for n in (1, 2, 4, 8, 64)] == [4, 4, 6, 10, 10]
    assert loop_options(3, 14, cpus=2) == {"max_threads": 4}
    assert loop_options(3, 12, cpus=6) == {"max_threads": 8}
    # libfuse 2 and 3.0-3.11 refuse the option: a mount there must not pass it.
    assert loop_options(3, 11, cpus=2) == {} and loop_options(2, 9, cpus=2) == {}


def test_request_threads_option_given_by_the_user_wins(src, tmp_path, monkeypatch):
    from imagefs.fuse import adapter
    from imagefs.fuse.library import loop_options

    seen: dict = {}

    class _Fake:                         # stands in for the libfuse session
        def __init__(self, ops, mountpoint, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(adapter, "ImageFUSE", _Fake)
    monkeypatch.setattr(adapter.mfusepy, "fuse_version_major", 3)
    monkeypatch.setattr(adapter.mfusepy, "fuse_version_minor", 14, raising=False)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount_mod.run_fuse(mount_mod.plan([str(src), str(mnt)]), None)
    assert seen["max_threads"] == loop_options(3, 14)["max_threads"], seen
    seen.clear()
    mount_mod.run_fuse(mount_mod.plan([str(src), str(mnt), "-o", "max_threads=2"]), None)
    assert str(seen["max_threads"]) == "2", seen


def test_fuse_workers_keep_their_python_thread_state(src, tmp_path, monkeypatch):
    """libfuse calls each operation on a C thread; ctypes used to build a
    Python thread state for every call and delete it after, and with it
    everything thread-local (verify on read's scratch buffers among it).
    Mounted in this process: a thread-local set in one read must still be
    there in the next read the same worker thread serves."""
    import threading

    from imagefs.fuse import adapter

    need_fuse()
    marks = threading.local()
    seen: dict[int, list[bool]] = {}
    original = adapter.ImageFS.read_into

    def spying(self, fh, dest, offset):  # type: ignore[no-untyped-def]
        seen.setdefault(threading.get_native_id(), []).append(getattr(marks, "set", False))
        marks.set = True
        return original(self, fh, dest, offset)

    monkeypatch.setattr(adapter.ImageFS, "read_into", spying)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ready = threading.Event()
    serving = threading.Thread(target=mount_mod.run_fuse,
                               args=(mount_mod.plan([str(src), str(mnt), "-f"]), ready.set),
                               daemon=True)
    serving.start()
    try:
        assert ready.wait(30), "the in-process mount did not come up"
        wait_until(lambda: (mnt / "sda1.img").exists(), what="the image in the mount")
        fd = os.open(mnt / "sda1.img", os.O_RDONLY | os.O_DIRECT)
        buf = __import__("mmap").mmap(-1, 4096)      # O_DIRECT: page-aligned
        try:
            for i in range(64):                         # each read reaches the daemon
                os.preadv(fd, [buf], (i % 8) * 4096)
        finally:
            os.close(fd)
            buf.close()
    finally:
        unmount(mnt)
        serving.join(30)
    assert not serving.is_alive()
    assert sum(map(len, seen.values())) >= 64, seen
    again = [calls for calls in seen.values() if len(calls) > 1]
    assert again, seen                       # some worker served more than one read
    for calls in again:
        assert not calls[0] and all(calls[1:]), calls
