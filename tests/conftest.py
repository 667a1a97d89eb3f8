"""Shared pytest setup: the session's fixture factory and CI strictness."""

from __future__ import annotations

import faulthandler
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from realimages import IN_CI, Factory  # noqa: E402


@pytest.fixture(scope="session")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Factory:
    """Builds real images once per session under the session's temp dir."""
    return Factory(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def disks(tmp_path_factory: pytest.TempPathFactory):
    """Disks built and saved by the real Clonezilla once per session (realdisks.py)."""
    from realdisks import DiskFactory
    return DiskFactory(tmp_path_factory.mktemp("disks"))


@pytest.fixture(autouse=True)
def _private_index_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep persisted indexes out of the user's cache during tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a skipped test is a failure: real-image and mount tests must run."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (CI=true), which counts as a failure: {reason}"


#: How long the process may take to exit once the tests are done.
EXIT_GRACE = 120


def pytest_unconfigure(config: pytest.Config) -> None:
    """A test that leaves a thread blocked (a pass at a gate, a worker
    waiting for a reader) keeps the interpreter from exiting after the
    summary: CI then ran into its time limit.  Past EXIT_GRACE the stacks of
    every thread are printed and the process exits with an error."""
    faulthandler.dump_traceback_later(EXIT_GRACE, exit=True)
