"""Codec messages and odd endings: trailing bytes are served with a note,
truncation is "incomplete" in one line, library stderr is held back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagefs.codecs import build_index, open_decompressed
from imagefs.errors import FormatError, ImageError, TruncatedError
from imagefs.io import FileSource
from imagefs.services.cache import BlockCache
from test_codecs import _original

TOOLS = {
    "gzip": ["gzip", "-c"],
    "pigz": ["pigz", "-c"],
    "zstd": ["zstd", "-q", "-T0", "-c"],
    "lz4": ["lz4", "-q", "-c"],
    "bzip2": ["bzip2", "-c"],
    "plzip": ["plzip", "-B", "1MiB", "-c"],
    "xz": ["xz", "-T0", "--block-size=1MiB", "-c"],
}
GARBAGE = b"trailing garbage, not a stream\n" * 3
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data() -> bytes:
    return _original()


def _compress(name: str, data: bytes, path: Path) -> Path:
    cmd = TOOLS[name]
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} is not installed")
    path.write_bytes(subprocess.run(cmd, input=data, stdout=subprocess.PIPE,
                                    check=True).stdout)
    return path


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_trailing_bytes_are_served_and_noted(name: str, data: bytes, tmp_path: Path) -> None:
    path = _compress(name, data, tmp_path / f"img.{name}")
    with open(path, "ab") as f:
        f.write(GARBAGE)
    stream = build_index(FileSource(path), cache=BlockCache(16 << 20))
    assert stream.size == len(data)
    assert stream.read_at(len(data) - 70000, 70000) == data[-70000:]
    assert stream.read_at(0, 4096) == data[:4096]
    assert f"{len(GARBAGE)} trailing bytes after" in stream.index_state()
    stream.close()
    # The head path (no index) stops at the same place.
    fresh = open_decompressed(FileSource(path), cache=BlockCache(16 << 20))
    assert fresh.read_at(0, 65536) == data[:65536]
    fresh.close()


@pytest.mark.parametrize("name", ["gzip", "bzip2"])
def test_a_pass_started_over_for_trailing_bytes_counts_its_progress_once(
        name: str, data: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rapidgzip fails on trailing bytes and the pass runs again up to the
    stream's end: a progress bar must end at that end, not past the file."""
    import contextlib

    from imagefs.codecs import source as source_mod

    told: list[int] = []

    @contextlib.contextmanager
    def recording_bar(total: int, desc: str, enabled: bool | None = None):
        yield told.append

    monkeypatch.setattr(source_mod, "progress_bar", recording_bar)
    clean = _compress(name, data, tmp_path / f"clean.{name}")
    build_index(FileSource(clean), cache=BlockCache(16 << 20)).close()
    once, told[:] = sum(told), []
    path = tmp_path / f"img.{name}"
    path.write_bytes(clean.read_bytes() + GARBAGE)
    stream = build_index(FileSource(path), cache=BlockCache(16 << 20))
    assert stream.size == len(data) and "trailing bytes" in stream.index_state()
    # The same stream in front of the garbage: the same progress in all.
    assert once > 0 and sum(told) == once, (once, told)
    stream.close()


@pytest.mark.parametrize("cut", [100_000, 8])
def test_truncated_gzip_is_incomplete_in_one_line(data: bytes, tmp_path: Path,
                                                  cut: int) -> None:
    full = _compress("gzip", data, tmp_path / "full.gz")
    path = tmp_path / "cut.gz"
    path.write_bytes(full.read_bytes()[:-cut])
    stream = open_decompressed(FileSource(path), cache=BlockCache(16 << 20))
    with pytest.raises(TruncatedError) as info:
        stream.build()
    text = str(info.value)
    assert "incomplete" in text and "\n" not in text and len(text) < 300
    stream.close()


def test_damaged_gzip_is_damaged_in_one_line(data: bytes, tmp_path: Path) -> None:
    raw = bytearray(_compress("gzip", data, tmp_path / "full.gz").read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(raw))
    stream = open_decompressed(FileSource(path), cache=BlockCache(16 << 20))
    with pytest.raises(ImageError) as info:
        stream.build()
    assert isinstance(info.value, FormatError) and not isinstance(info.value, TruncatedError)
    assert "damaged" in str(info.value) and "\n" not in str(info.value)
    stream.close()


def test_library_stderr_is_held_back(data: bytes, tmp_path: Path) -> None:
    """rapidgzip prints its own lines for a gzip stream cut in its footer."""
    full = _compress("gzip", data, tmp_path / "full.gz")
    path = tmp_path / "cut.gz"
    path.write_bytes(full.read_bytes()[:-8])
    script = (
        "import sys\n"
        "from imagefs.codecs import open_decompressed\n"
        "from imagefs.errors import ImageError\n"
        "from imagefs.io import FileSource\n"
        "from imagefs.services import libstderr\n"
        f"s = open_decompressed(FileSource({str(path)!r}))\n"
        "try:\n"
        "    s.build()\n"
        "except ImageError as exc:\n"
        "    print('imagefs:', exc, file=sys.stderr)  # as the CLI prints it\n"
        "print('held back', libstderr.library_lines(), flush=True)\n"
        "s.close()\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("imagefs: ") and "incomplete" in lines[0], \
        run.stderr


@pytest.mark.parametrize("threads", [1, 2])
def test_an_lz4_frame_failing_its_content_checksum_is_damaged(
        data: bytes, tmp_path: Path, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The checksum is taken on a helper thread beside the pass (inline with
    # --threads 1): either way a frame whose bytes do not match it is damage.
    from imagefs.codecs import tuning
    monkeypatch.setattr(tuning, "INDEX_THREADS", threads)
    path = _compress("lz4", data, tmp_path / "img.lz4")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x40                          # the frame's last 4 bytes: its XXH32
    path.write_bytes(bytes(raw))
    stream = open_decompressed(FileSource(path), cache=BlockCache(16 << 20), progress=False)
    with pytest.raises(ImageError, match="fails its content checksum"):
        stream.build()
    stream.close()


#: Zeros to compress: 128 KB of gzip, less for the others, all of it in the
#: first read of the file; decoded at once it is four times the bound below.
ZEROS = 128 << 20


@pytest.mark.parametrize("name", sorted(TOOLS) + ["lzop"])
def test_the_head_of_a_highly_compressed_stream_is_decoded_a_little_at_a_time(
        name: str, tmp_path: Path) -> None:
    """A few compressed bytes may stand for gigabytes (zeros): reading the
    head of such a stream must not decode all that a read of the file holds
    at once (100 KB of zstd held 3 GiB: a 4 KiB read took 17 s and 6 GiB)."""
    import tracemalloc

    cmd = TOOLS.get(name, ["lzop", "-c"])
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} is not installed")
    path = tmp_path / f"zeros.{name}"
    with open(path, "wb") as out:
        zeros = subprocess.Popen(["head", "-c", str(ZEROS), "/dev/zero"], stdout=subprocess.PIPE)
        subprocess.run(cmd, stdin=zeros.stdout, stdout=out, check=True)
        assert zeros.wait() == 0
    stream = open_decompressed(FileSource(str(path)), cache=BlockCache(16 << 20))
    tracemalloc.start()
    try:
        assert stream.read_at(0, 4096) == bytes(4096)
        assert stream.read_at((8 << 20) - 4096, 4096) == bytes(4096)   # the head's end
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        stream.close()
    assert peak < 32 << 20, f"{name}: {peak >> 20} MiB to read the head"
