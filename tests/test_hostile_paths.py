"""Error paths of issue 11.5 / 11.6: one line, never a traceback, never "unexpected error".

Real images (the Factory's ntfsclone and partclone images), cut or with one
header field changed by hand; plus the things a user may point imagefs at
that are no files at all (a FIFO, a directory, a device).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from imagefs.formats.checksums import pc_crc32

from mount_helpers import imagefs_mounted

IMAGEFS = [sys.executable, "-m", "imagefs"]


def _imagefs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(IMAGEFS + list(args), capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cut_ntfsclones(factory, tmp_path_factory) -> dict[str, Path]:
    data = factory.ntfsclone().path.read_bytes()
    d = tmp_path_factory.mktemp("ntfscut")
    out = {}
    for n in (55, 56, 57, 64, 4096 + 3, len(data) // 2, len(data) - 1):
        p = d / f"cut-{n}.ntfsclone"
        p.write_bytes(data[:n])
        out[str(n)] = p
    return out


def test_cut_ntfsclone_verify_and_info_are_one_line(cut_ntfsclones):
    for name, path in cut_ntfsclones.items():
        line = _one_line_error(_imagefs("verify", str(path)))
        assert path.name in line and "truncated" in line, (name, line)
        proc = _imagefs("info", "--full", str(path))
        assert "Traceback" not in proc.stderr, proc.stderr
        if proc.stdout:                          # readable in part: .info says so
            assert "DAMAGED" in proc.stdout and "truncated" in proc.stdout, proc.stdout
        else:
            assert "truncated" in _one_line_error(proc)


def test_the_55_byte_cut_is_a_truncated_header(cut_ntfsclones):
    line = _one_line_error(_imagefs("info", "--full", str(cut_ntfsclones["55"])))
    assert "ntfsclone header is truncated" in line


@pytest.mark.mount
def test_cut_ntfsclone_through_the_mount_logs_no_internal_error(cut_ntfsclones, tmp_path):
    src = next(iter(cut_ntfsclones.values())).parent
    log = tmp_path / "mount.log"
    with imagefs_mounted(src, tmp_path / "mnt", "-o", f"log={log},log_level=info") as mnt:
        for entry in sorted(mnt.iterdir()):
            if entry.is_dir():                       # VNAME.files/: not this test's subject
                continue
            if entry.name.endswith(".info"):
                assert entry.read_text()
                continue
            try:
                with open(entry, "rb") as f:
                    while f.read(1 << 20):
                        pass
            except OSError as exc:
                assert exc.errno == 5, exc          # EIO, the only answer for missing data
    text = log.read_text()
    assert "Traceback" not in text and "unexpected error" not in text, text


def _huge_device(good: bytes) -> bytes:
    head = bytearray(good)
    struct.pack_into("<Q", head, 52, 1 << 63)
    struct.pack_into("<I", head, 106, pc_crc32(bytes(head[:106])))
    return bytes(head)


def test_device_size_of_2_63_is_refused(factory, tmp_path):
    good = factory.partclone("ext4").path.read_bytes()[:1 << 20]
    path = tmp_path / "huge.img"
    path.write_bytes(_huge_device(good))
    assert "device size" in _one_line_error(_imagefs("info", str(path)))
    proc = _imagefs("ls", str(tmp_path))
    assert "BROKEN" in proc.stdout and "device size" in proc.stdout, proc.stdout


@pytest.mark.mount
def test_device_size_of_2_63_in_the_mount(factory, tmp_path):
    good = factory.partclone("ext4").path.read_bytes()[:1 << 20]
    src = tmp_path / "src"
    src.mkdir()
    (src / "huge.img").write_bytes(_huge_device(good))
    with imagefs_mounted(src, tmp_path / "mnt") as mnt:
        assert sorted(p.name for p in mnt.iterdir()) == ["huge.img.info"]
        assert "device size" in (mnt / "huge.img.info").read_text()


def test_things_that_are_no_files(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "named pipe"), (tmp_path, "directory"),
                       (Path("/dev/null"), "character device")):
        line = _one_line_error(_imagefs("info", str(path)))
        assert kind in line and "empty" not in line, line
        _one_line_error(_imagefs("verify", str(path)))


@pytest.mark.parametrize("how", ["shortened", "lengthened", "emptied"])
def test_a_piece_of_the_wrong_size_is_reported(factory, tmp_path, how):
    """split's rule: every piece but the last has the same size (pieces by the real split)."""
    img = factory.partclone("ext4")
    subprocess.run(["split", "-b", "1000000", str(img.path), str(tmp_path / "sda1.img.")],
                   check=True)
    victim = tmp_path / "sda1.img.ad"
    data = victim.read_bytes()
    victim.write_bytes({"shortened": data[:123_456], "lengthened": data + b"x" * 999,
                        "emptied": b""}[how])
    proc = _imagefs("info", str(tmp_path / "sda1.img.aa"))
    assert not proc.stderr, proc.stderr             # the status says DAMAGED (and the exit code)
    assert "sda1.img.ad" in proc.stdout and "pieces:" in proc.stdout, proc.stdout
    assert "DAMAGED" in proc.stdout and "truncated" in proc.stdout, proc.stdout
    keep = 3_000_000 + {"shortened": 123_456, "lengthened": 1_000_000, "emptied": 0}[how]
    assert f"up to byte {keep}" in proc.stdout
