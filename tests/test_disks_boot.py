"""End to end: a bootable disk saved by Clonezilla boots from DISK.img in qemu.

The disk (realdisks.py, ``boot``): syslinux's MBR code, an ext2 partition
with extlinux, a Debian kernel and a busybox initramfs whose /init prints
a marker on the serial console and powers off.  It is saved with ocs-sr,
mounted with imagefs, and booted from the mount's DISK.img with
``qemu-system-x86_64 -snapshot`` (TCG) until the marker appears: the whole
stack, from ocs-sr's files to a running kernel.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from imagefs.disks import find_disks
from mount_helpers import imagefs_mounted
from realdisks import BOOT_MARKER, DiskFactory
from realimages import need

pytestmark = pytest.mark.root

#: TCG on two shared cores booted this kernel to the marker in about 10-20 s here.
BOOT_TIMEOUT = 300


@pytest.fixture(scope="module")
def boot_disk_img(disks: DiskFactory, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Path]:
    """DISK.img of the saved boot disk, as a real imagefs mount serves it."""
    saved = disks.get("boot")
    plans = find_disks(str(saved.directory), saved.names)
    assert len(plans) == 1 and plans[0].problem is None
    with imagefs_mounted(saved.directory, tmp_path_factory.mktemp("bootmnt")) as mnt:
        yield mnt / plans[0].file_name


def test_disk_img_boots_in_qemu(boot_disk_img: Path, tmp_path: Path) -> None:
    need("qemu-system-x86_64")
    log = tmp_path / "serial.log"
    cmd = ["qemu-system-x86_64", "-snapshot", "-nographic", "-no-reboot", "-m", "256",
           "-monitor", "none", "-serial", f"file:{log}",
           "-drive", f"file={boot_disk_img},format=raw"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if BOOT_MARKER in text:
                break
            try:                       # bounded polling: qemu's exit or the marker
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
        text = log.read_text(errors="replace") if log.exists() else ""
        assert BOOT_MARKER in text, (
            f"no marker on the serial console (qemu exit {proc.poll()}):\n{text[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
