"""The shipped examples under contrib/ are consistent with what imagefs accepts."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

from imagefs.config import load_config
from imagefs.cli.mount import split_options
from realimages import need

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
#: libfuse options the examples may pass on (everything else must be ours or dropped).
LIBFUSE_OK = {"max_read", "fsname", "subtype", "default_permissions"}


def _check_options(text: str) -> None:
    opts = split_options([text])
    unknown = set(opts.fuse) - LIBFUSE_OK
    assert not unknown, f"{text}: would reach libfuse as unknown options {unknown}"


def test_fstab_lines():
    lines = [ln.lstrip("#") for ln in (CONTRIB / "fstab.example").read_text().splitlines()
             if "fuse.imagefs" in ln and not ln.startswith("# ")]
    assert len(lines) >= 2
    for line in lines:
        fields = line.split()
        assert len(fields) == 6 and fields[2] == "fuse.imagefs", line
        _check_options(fields[3])


def test_systemd_units():
    mount = configparser.ConfigParser(strict=False)
    mount.optionxform = str  # type: ignore[assignment]
    mount.read(CONTRIB / "systemd" / "mnt-images.mount")
    auto = configparser.ConfigParser(strict=False)
    auto.optionxform = str  # type: ignore[assignment]
    auto.read(CONTRIB / "systemd" / "mnt-images.automount")
    where = mount["Mount"]["Where"]
    assert mount["Mount"]["Type"] == "fuse.imagefs"
    assert auto["Automount"]["Where"] == where
    # systemd requires the unit name to be the escaped mount point.
    assert where.strip("/").replace("/", "-") == "mnt-images"
    _check_options(mount["Mount"]["Options"])


def test_systemd_units_verify_without_an_ordering_cycle(tmp_path):
    """systemd-analyze verify, as boot would load them (it needs no running systemd).

    A target that wants both the mount and local-fs.target is what boot
    does; the old After=local-fs.target made a cycle there (the mount job
    was deleted, nothing mounted), which verify reports.
    """
    need("systemd-analyze")
    for unit in ("mnt-images.mount", "mnt-images.automount"):
        shutil.copy(CONTRIB / "systemd" / unit, tmp_path / unit)
    (tmp_path / "imagefs-boot.target").write_text(
        "[Unit]\nDescription=boot as far as mounts go\n"
        "Wants=mnt-images.mount mnt-images.automount local-fs.target\n")
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *(str(tmp_path / u) for u in ("imagefs-boot.target",
                                                         "mnt-images.mount",
                                                         "mnt-images.automount"))],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                if "mnt-images" in ln or "cycle" in ln or "imagefs-boot" in ln]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
    # The check can fail: the old ordering is reported as a cycle.
    old = (tmp_path / "mnt-images.mount").read_text().replace(
        "RequiresMountsFor=", "After=local-fs.target\nRequiresMountsFor=").replace(
        "nofail,", "")
    (tmp_path / "mnt-images.mount").write_text(old)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           str(tmp_path / "imagefs-boot.target")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "ordering cycle" in proc.stdout + proc.stderr


def test_autofs_map_and_master():
    master = (CONTRIB / "autofs" / "auto.master.d-imagefs.autofs").read_text()
    entry = [ln for ln in master.splitlines() if ln and not ln.startswith("#")]
    assert entry and entry[0].split()[1] == "/etc/auto.imagefs"
    keys = [ln.split() for ln in (CONTRIB / "autofs" / "auto.imagefs").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert keys
    for key, options, location in keys:
        assert options.startswith("-fstype=fuse.imagefs,"), options
        assert location.startswith(":/")
        _check_options(options.split(",", 1)[1])


def test_contrib_config_loads():
    settings = load_config(str(CONTRIB / "imagefs.yaml"))
    assert settings.sources and settings.allow_other
