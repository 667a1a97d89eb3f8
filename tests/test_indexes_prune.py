"""The index directory: long builds are logged, stale indexes pruned, a size cap kept.

Indexes are built by the real ``imagefs index`` over real compressed
images (the bundled samples, copied so that the test may touch them).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imagefs.services import indexprune
from imagefs.services.progress import _LogProgress
from mount_helpers import IMAGEFS

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "backups"


def _index(tree: Path, idx: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(IMAGEFS + ["index", str(tree), "--index-dir", str(idx), *extra],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def tree(tmp_path) -> Path:
    dest = tmp_path / "backups"
    shutil.copytree(SAMPLES, dest)
    return dest


def _indexes(idx: Path) -> list[Path]:
    return sorted(idx.glob("*.idx"))


def test_each_index_records_its_backups(tree, tmp_path):
    idx = tmp_path / "idx"
    assert _index(tree, idx).returncode == 0
    files = _indexes(idx)
    assert files, "the compressed samples must leave indexes"
    for path in files:
        record = indexprune.read_record(str(path))
        assert record and all(p.startswith(str(tree)) for p, _, _ in record), record


def test_prune_removes_indexes_of_changed_and_gone_backups(tree, tmp_path):
    idx = tmp_path / "idx"
    assert _index(tree, idx).returncode == 0
    before = _indexes(idx)
    gz = tree / "2026-11-01-img" / "sda2.vfat-ptcl-img.gz"
    os.utime(gz, ns=(1, 1))                                  # touched: a new key
    assert _index(tree, idx).returncode == 0
    assert len(_indexes(idx)) == len(before) + 1             # the old one stays behind
    proc = _index(tree, idx, "--prune")
    assert proc.returncode == 0, proc.stderr
    assert f"{gz} changed" in proc.stdout and proc.stdout.count("removed ") == 1
    assert len(_indexes(idx)) == len(before)
    (tree / "2026-11-01-img" / "sda3.ntfs-img.gz").unlink()
    proc = _index(tree, idx, "--prune")
    gone = [ln for ln in proc.stdout.splitlines() if ln.startswith("removed ")]
    # Its gzip seek index and its ntfsclone run list both describe the file.
    assert gone and all("sda3.ntfs-img.gz is gone" in ln for ln in gone), proc.stdout
    assert len(_indexes(idx)) == len(before) - len(gone)
    assert not list(idx.glob("*.src")) or all(
        (idx / (p.stem + ".idx")).exists() for p in idx.glob("*.src"))


def test_prune_with_a_tree_leaves_other_trees_alone(tree, tmp_path):
    idx = tmp_path / "idx"
    other = tmp_path / "other"
    shutil.copytree(SAMPLES, other)
    assert _index(tree, idx).returncode == 0 and _index(other, idx).returncode == 0
    for gz in other.rglob("*.gz"):
        gz.unlink()
    for gz in tree.rglob("*.gz"):
        gz.unlink()
    proc = subprocess.run(IMAGEFS + ["index", "--prune", str(tree), "--index-dir", str(idx)],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert str(tree) in proc.stdout and str(other) not in proc.stdout


def test_index_max_evicts_the_least_recently_used(tree, tmp_path):
    idx = tmp_path / "idx"
    assert _index(tree, idx).returncode == 0
    files = _indexes(idx)
    assert len(files) >= 2
    sizes = {p: p.stat().st_size + Path(indexprune.record_path(str(p))).stat().st_size
             for p in files}
    oldest = files[0]
    for n, p in enumerate(files):
        os.utime(p, ns=(n * 10**9, n * 10**9))              # files[0] least recently used
    cap = sum(sizes.values()) - 1
    removed = indexprune.evict(str(idx), cap)
    assert [r.path for r in removed] == [str(oldest)]
    assert not oldest.exists() and indexprune.usage(str(idx)) <= cap
    # Through the option: another run, capped below one index, evicts what
    # earlier runs left; its own indexes (in use by it) stay.
    other = tmp_path / "other"
    shutil.copytree(SAMPLES, other)
    left = set(_indexes(idx))
    proc = _index(other, idx, "-o", "index_max=1")
    assert proc.returncode == 0, proc.stderr
    now = set(_indexes(idx))
    assert not (left & now) and now, (left, now)


def test_an_index_in_use_is_never_evicted(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    a, b = idx / "codec-x-a.idx", idx / "codec-x-b.idx"
    a.write_bytes(b"a" * 1000)
    b.write_bytes(b"b" * 1000)
    os.utime(a, ns=(1, 1))
    indexprune.mark_in_use(str(a))
    assert indexprune.evict(str(idx), 10, keep=str(b)) == []
    assert a.exists() and b.exists()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_long_pass_logs_start_progress_and_end(caplog):
    clock = _Clock()
    caplog.set_level(logging.INFO, logger="imagefs.progress")
    p = _LogProgress(100_000_000, "indexing big.gz", clock=clock)
    clock.now += 0.5
    p.update(10_000_000)
    assert not caplog.records                       # under a second: nothing
    clock.now += 1.0
    p.update(10_000_000)
    clock.now += 5.0
    p.update(30_000_000)
    p.close()
    text = [r.getMessage() for r in caplog.records]
    assert text[0] == "indexing big.gz: started, 100 MB to read"
    assert text[1].startswith("indexing big.gz: 50% (") and "s left)" in text[1]
    assert text[2].startswith("indexing big.gz: done in 6.5 s")


def test_a_short_pass_logs_nothing(caplog):
    clock = _Clock()
    caplog.set_level(logging.INFO, logger="imagefs.progress")
    p = _LogProgress(1000, "indexing small.gz", clock=clock)
    clock.now += 0.2
    p.update(1000)
    p.close()
    assert not caplog.records


@pytest.fixture()
def restored_logging():
    """The loggers that the CLI's log setup changes, as they were before the test
    (else every later test's caplog sees nothing: ``imagefs`` stops propagating)."""
    loggers = [logging.getLogger(name) for name in ("imagefs", "imagefs.progress", "fuse")]
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    yield
    for lg, level, propagate, handlers in saved:
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
        lg.setLevel(level)
        lg.propagate = propagate
        lg.handlers = handlers


def test_the_log_setup_lets_progress_through_at_the_default_level(restored_logging):
    from imagefs.cli.logsetup import setup
    setup(logging.WARNING, foreground=True)
    assert logging.getLogger("imagefs.progress").isEnabledFor(logging.INFO)
    setup(logging.ERROR, foreground=True)             # -q
    assert not logging.getLogger("imagefs.progress").isEnabledFor(logging.INFO)


def test_a_saved_index_replaces_older_ones_of_the_same_backups(tree, tmp_path):
    # An index left by an older imagefs (another format version, so another
    # key) over backups that are still there: prune would keep it forever.
    idx = tmp_path / "idx"
    assert _index(tree, idx).returncode == 0
    current = _indexes(idx)
    old = current[0]
    kind = old.name.rsplit("-", 1)[0]
    stale = idx / f"{kind}-{'0' * 40}.idx"
    shutil.copy(old, stale)
    shutil.copy(indexprune.record_path(str(old)), indexprune.record_path(str(stale)))
    other = [p for p in current if p != old]
    old.unlink()                                  # rebuilt and saved by the next run
    proc = _index(tree, idx, "-v")
    assert proc.returncode == 0, proc.stderr
    assert old.exists() and not stale.exists()
    assert not Path(indexprune.record_path(str(stale))).exists()
    assert all(p.exists() for p in other)         # other kinds and backups untouched
    assert "replaces it" in proc.stderr + proc.stdout


def test_files_vanishing_under_a_scan_are_skipped(tmp_path, monkeypatch):
    # Parallel saves in one `imagefs index` evict and supersede at the same
    # time, and a mount's save renames its temporary file while a prune
    # scans: an entry listed a moment ago may be gone when it is looked at.
    idx = tmp_path / "idx"
    idx.mkdir()
    for name in ("codec-gzip-a", "codec-gzip-b"):
        (idx / f"{name}.idx").write_bytes(b"x" * 100)
        (idx / f"{name}.src").write_text('{"version": 1, "kind": "codec-gzip", "files": []}')
    (idx / ".tmp-1.idx").write_bytes(b"x")
    listed = list(os.scandir(idx))
    for p in idx.iterdir():
        if p.name.startswith((".tmp-", "codec-gzip-a")):
            p.unlink()
    monkeypatch.setattr(indexprune, "_entries", lambda directory: list(listed))
    assert indexprune.usage(str(idx)) == 100 + len((idx / "codec-gzip-b.src").read_bytes())
    removed = indexprune.evict(str(idx), 1)
    assert [os.path.basename(r.path) for r in removed] == ["codec-gzip-b.idx"]
    indexprune.prune(str(idx))                    # raises nothing either


def test_supersede_parses_each_unchanged_record_once(tmp_path, monkeypatch):
    # Every save runs supersede over the records of its kind: `imagefs index`
    # of N images over a directory of M older records must not parse N x M.
    idx = tmp_path / "idx"
    idx.mkdir()
    old = [idx / f"codec-zstd-old{i}.idx" for i in range(4)]
    for i, path in enumerate(old):
        path.write_bytes(b"x")
        indexprune.write_record(str(path), "codec-zstd", [(f"/b/{i}.zst", 10, 1)])
    monkeypatch.setattr(indexprune, "_in_use", set())       # written by "another run"
    parsed: list[str] = []
    real = indexprune._read_record
    monkeypatch.setattr(indexprune, "_read_record",
                        lambda p: parsed.append(os.path.basename(p)) or real(p))
    for n in range(3):
        new = idx / f"codec-zstd-new{n}.idx"
        assert indexprune.supersede(str(new), "codec-zstd", [(f"/b/new{n}.zst", 1, 1)]) == []
    assert sorted(parsed) == sorted(p.name for p in old)
    # A rewritten record (os.replace: a new file) is read again and acted on.
    indexprune.write_record(str(old[0]), "codec-zstd", [("/b/new0.zst", 1, 1)])
    monkeypatch.setattr(indexprune, "_in_use", set())
    removed = indexprune.supersede(str(idx / "codec-zstd-new0.idx"), "codec-zstd",
                                   [("/b/new0.zst", 1, 1)])
    assert [os.path.basename(r.path) for r in removed] == [old[0].name]
    assert parsed.count(old[0].name) == 2 and not old[0].exists()
