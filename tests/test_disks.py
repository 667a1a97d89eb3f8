"""The whole-disk view (imagefs.disks) of disks saved by the real Clonezilla.

Two disks are built and saved with ocs-sr once per session (realdisks.py):
a GPT disk (FAT32 ESP, ext4, NTFS, xfs, swap with LABEL and UUID) and an MBR
disk (a primary, an extended with two logicals, an LVM PV).  DISK.img is
assembled from the saved directory through imagefs's own partition stack
and checked with the kernel and the partitioning tools against the source.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from imagefs.disks import IMAGE, LVM_PV, SWAP, DiskImage, DiskPlan, assemble, find_disks, image_for
from imagefs.disks.tables import parse_sfdisk
from imagefs.errors import FormatError, ImageError
from realdisks import DiskFactory, SavedDisk, disk_device, opener_for, partition_path, write_disk
from mount_helpers import imagefs_mounted
from realimages import need, run

pytestmark = pytest.mark.root

KINDS = ["gpt", "mbr"]


# ------------------------------------------------------------------ helpers

def read_range(path: Path | str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def sha_range(path: Path | str, offset: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while size > 0:
            b = f.read(min(size, 4 << 20))
            if not b:
                break
            h.update(b)
            size -= len(b)
    return h.hexdigest()


def sf_rows(text: str) -> list[tuple]:
    table = parse_sfdisk(text, "dump")
    return [(int(re.search(r"(\d+)$", e.device).group(1)), e.start, e.size, e.type.upper(), (e.uuid or "").upper(), e.name, e.bootable)
            for e in table.entries]


class Assembled:
    def __init__(self, saved: SavedDisk, plan: DiskPlan, disk: DiskImage, img: Path) -> None:
        self.saved, self.plan, self.disk, self.img = saved, plan, disk, img


_assembled: dict[str, Assembled] = {}


def _assemble(disks: DiskFactory, kind: str) -> Assembled:
    """The saved disk, its plan, the DiskImage and DISK.img written to a file (cached)."""
    if kind not in _assembled:
        saved = disks.get(kind)
        plans = find_disks(str(saved.directory), saved.names)
        assert len(plans) == 1 and plans[0].problem is None, plans
        plan = plans[0]
        disk = assemble(plan, opener_for(plan))
        img = saved.directory.parent / plan.file_name
        write_disk(disk, img)
        _assembled[kind] = Assembled(saved, plan, disk, img)
    return _assembled[kind]


@pytest.fixture(params=KINDS)
def assembled(request: pytest.FixtureRequest, disks: DiskFactory) -> Assembled:
    return _assemble(disks, request.param)


@pytest.fixture(scope="session")
def mounted_disks(disks: DiskFactory, tmp_path_factory: pytest.TempPathFactory):
    """One real imagefs mount of both saved directories: DISK.img as users see it."""
    tree = tmp_path_factory.mktemp("disk-tree")
    for kind in KINDS:
        saved = disks.get(kind)
        dest = tree / saved.directory.name
        dest.mkdir()
        for name in saved.names:
            os.link(saved.directory / name, dest / name)
    # A copy of the MBR save whose table runs past the disk's end: no DISK.img then.
    saved = disks.get("mbr")
    bad = tree / "bad-table"
    bad.mkdir()
    for name in saved.names:
        if not name.endswith("-pt.sf"):
            os.link(saved.directory / name, bad / name)
    sf = (saved.directory / f"{saved.name}-pt.sf").read_text()
    last = max(re.findall(r"size=\s*(\d+)", sf), key=int)
    (bad / f"{saved.name}-pt.sf").write_text(sf.replace(f"size= {last:>11}",
                                                        f"size= {int(last) * 100:>11}"))
    with imagefs_mounted(tree, tmp_path_factory.mktemp("disk-mnt")) as mnt:
        yield mnt


def _shown(request: pytest.FixtureRequest, disks: DiskFactory, kind: str,
           via: str) -> Assembled:
    """The assembled disk, its DISK.img written by the API or served by a mount."""
    a = _assemble(disks, kind)
    if via == "file":
        return a
    mnt = request.getfixturevalue("mounted_disks")
    return Assembled(a.saved, a.plan, a.disk, mnt / a.saved.directory.name / a.plan.file_name)


@pytest.fixture(params=[(k, v) for k in KINDS for v in ("file", "mount")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def shown(request: pytest.FixtureRequest, disks: DiskFactory) -> Assembled:
    return _shown(request, disks, *request.param)


@pytest.fixture(params=["file", "mount"])
def gpt_shown(request: pytest.FixtureRequest, disks: DiskFactory) -> Assembled:
    return _shown(request, disks, "gpt", request.param)


@pytest.fixture
def gpt_disk(disks: DiskFactory) -> Assembled:
    return _assemble(disks, "gpt")


@pytest.fixture
def mbr_disk(disks: DiskFactory) -> Assembled:
    return _assemble(disks, "mbr")


# --------------------------------------------------------------- the checks

def test_what_ocs_sr_wrote(assembled: Assembled) -> None:
    """The save really is Clonezilla's: disk file, table dumps, one image per data partition."""
    names = set(assembled.saved.names)
    d = assembled.saved.name
    assert {"disk", "parts", f"{d}-pt.sf", f"{d}-pt.parted", f"{d}-mbr"} <= names
    if assembled.plan.table == "gpt":
        assert {f"{d}-gpt-1st", f"{d}-gpt-2nd", f"{d}-gpt.gdisk", f"swappt-{d}p5.info"} <= names
        assert os.path.getsize(assembled.saved.directory / f"{d}-gpt-2nd") == 32 * 512
    else:
        assert {f"{d}-hidden-data-after-mbr", f"{d}p2-ebr", "lvm_vg_dev.list"} <= names
    assert assembled.plan.size == os.path.getsize(assembled.saved.raw)


def test_sfdisk_lists_the_saved_partitions(shown: Assembled) -> None:
    assembled = shown
    need("sfdisk")
    dumped = run(["sfdisk", "-d", str(assembled.img)]).stdout.decode()
    saved = (assembled.saved.directory / f"{assembled.saved.name}-pt.sf").read_text()
    assert sf_rows(dumped) == sf_rows(saved)
    a, b = parse_sfdisk(dumped, "img"), parse_sfdisk(saved, "saved")
    assert (a.label, a.label_id, a.first_lba, a.last_lba) == (b.label, b.label_id, b.first_lba, b.last_lba)


def test_sgdisk_finds_no_problems(gpt_shown: Assembled) -> None:
    need("sgdisk")
    out = run(["sgdisk", "-v", str(gpt_shown.img)]).stdout.decode()
    assert "No problems found" in out, out


def test_kernel_partitions_equal_ground_truth(shown: Assembled) -> None:
    """losetup -r -P of DISK.img: each partition is its restored image, then zeros."""
    assembled = shown
    plan, saved = assembled.plan, assembled.saved
    with disk_device(assembled.img, read_only=True) as dev:
        for p in plan.partitions:
            node = partition_path(dev, p.number)
            if p.role == "extended":
                continue
            assert os.path.exists(node), f"the kernel did not find {p.device} in DISK.img"
            if p.role == IMAGE:
                truth = saved.truths[p.device]
                assert os.path.getsize(truth) == p.size
                assert sha_range(node, 0, p.size) == sha_range(truth, 0, p.size), p.device
            elif p.role == SWAP:   # mkswap wrote into a zeroed partition: exactly the source
                assert sha_range(node, 0, p.size) == sha_range(saved.raw, p.start, p.size)
            elif p.role == LVM_PV:
                assert read_range(node, 0, p.size) == bytes(p.size)


def test_saved_areas_outside_partitions_are_exact(shown: Assembled) -> None:
    """Everything but the image-filled and PV slots equals the source disk byte for byte.

    That covers the MBR, the GPT (the backup one rebuilt from the primary),
    the hidden sectors after the MBR, the saved and the synthesised EBRs,
    the swap partition and every gap.
    """
    assembled = shown
    plan, saved = assembled.plan, assembled.saved
    skip = sorted((p.start, p.end) for p in plan.partitions if p.role in (IMAGE, LVM_PV))
    pos = 0
    for start, end in skip + [(plan.size, plan.size)]:
        if start > pos:
            assert sha_range(assembled.img, pos, start - pos) == \
                sha_range(saved.raw, pos, start - pos), (pos, start)
        pos = max(pos, end)
    assert os.path.getsize(assembled.img) == os.path.getsize(saved.raw)


def test_swap_uuid_and_label_as_on_the_source(gpt_shown: Assembled) -> None:
    assembled = gpt_shown
    with disk_device(assembled.img, read_only=True) as dev:
        out = run(["blkid", "-o", "export", partition_path(dev, 5)]).stdout.decode()
    tags = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    source = assembled.saved.blkid["p5"]
    assert (tags["TYPE"], tags["UUID"], tags["LABEL"]) == ("swap", source["UUID"], source["LABEL"])


def test_reads_across_boundaries_equal_the_file(assembled: Assembled) -> None:
    plan, disk = assembled.plan, assembled.disk
    edges = sorted({e.start for e in plan.extents} | {e.end for e in plan.extents}
                   | {p.start for p in plan.partitions} | {plan.size})
    rng = random.Random(5)
    with open(assembled.img, "rb") as f:
        for edge in edges:
            for _ in range(3):
                off = max(0, edge - rng.randrange(1, 70000))
                size = rng.randrange(1, 200000)
                f.seek(off)
                want = f.read(size)
                assert disk.read(off, size) == want, (edge, off, size)
                buf = bytearray(size + 7)
                n = disk.read_into(off, memoryview(buf)[3:3 + size])
                assert n == len(want) and bytes(buf[3:3 + n]) == want
    assert disk.read(plan.size, 10) == b""


def test_info_text(assembled: Assembled) -> None:
    text = assembled.disk.info_text("DISK.img")
    for needle in ("losetup -r -P --show -f DISK.img", "fdisk -l DISK.img",
                   "qemu-system-x86_64 -snapshot", "file=DISK.img,format=raw", "OVMF",
                   "Layout (sectors of 512 bytes"):
        assert needle in text
    for p in assembled.plan.partitions:
        assert p.device in text
        if p.image:
            assert p.image in text
    if assembled.plan.table == "gpt":
        assert "GPT" in text and "UUID 0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9" in text
        assert "backup GPT rebuilt from the primary" in text
    else:
        vg = assembled.saved.blkid["vg"]["VG"]
        assert f"LVM physical volume of VG {vg}" in text and f"{vg}/lvdata was not saved" in text
        assert "synthesised" in text and "hidden-data-after-mbr" in text


# ------------------------------------------------------------------ laziness

def _metadata_only(saved: SavedDisk, plan: DiskPlan, dest: Path) -> Path:
    images = {p.image for p in plan.partitions if p.image}
    dest.mkdir(parents=True)
    for name in saved.names:
        if name not in images:
            shutil.copy(saved.directory / name, dest / name)
    return dest


def test_find_disks_reads_no_image(assembled: Assembled, tmp_path: Path) -> None:
    """Without any image file present, find_disks gives the same plan: it opened none."""
    copy = _metadata_only(assembled.saved, assembled.plan, tmp_path / "meta")
    again = find_disks(str(copy), assembled.saved.names)[0]
    assert again.problem is None
    assert again.partitions == assembled.plan.partitions
    assert [(e.start, e.end, e.label) for e in again.extents] == \
        [(e.start, e.end, e.label) for e in assembled.plan.extents]


def test_partitions_open_on_first_touch_once(assembled: Assembled) -> None:
    plan = assembled.plan
    calls: list[str] = []
    disk = assemble(plan, opener_for(plan, calls))
    first = min(p.start for p in plan.partitions)
    disk.read(0, first)                               # tables and gaps only
    assert calls == []
    target = next(p for p in plan.partitions if p.role == IMAGE and p.number == 2
                  or p.role == IMAGE and p.number == 5)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for k in range(20):
                disk.read(target.start + k * 4096, 8192)
        except BaseException as exc:   # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and calls == [target.device]
    assert disk.opened(target.device)


def test_broken_and_absent_partitions(assembled: Assembled) -> None:
    """A broken image answers ImageError in its range only; an absent one reads zeros."""
    plan = assembled.plan
    parts = [p for p in plan.partitions if p.role == IMAGE]
    broken, absent = parts[0], parts[1]
    normal = opener_for(plan)

    def open_partition(dev: str):
        if dev == broken.device:
            raise FormatError(str(Path(plan.directory) / broken.image), "bad bitmap CRC")
        if dev == absent.device:
            return None
        return normal(dev)

    disk = assemble(plan, open_partition)
    with pytest.raises(ImageError):
        disk.read(broken.start + 4096, 512)
    with pytest.raises(ImageError):                  # the error is kept, not retried
        disk.read(broken.start - 512, 1024)
    assert disk.read(absent.start, 65536) == bytes(65536)
    other = parts[2]
    assert disk.read(other.start, 4096) == read_range(assembled.img, other.start, 4096)
    text = disk.info_text()
    assert "BROKEN, reads fail: bad bitmap CRC" in text
    assert f"zeros: {absent.image} could not be opened" in text


def test_image_larger_than_its_slot(assembled: Assembled) -> None:
    plan = assembled.plan
    part = next(p for p in plan.partitions if p.role == IMAGE)
    bad = plan.check_sizes({part.device: part.size + 512})
    assert bad.problem and part.device in bad.problem and "more than" in bad.problem
    assert plan.check_sizes({part.device: part.size}).problem is None

    class Big:
        size = part.size + 4096

        def read(self, offset: int, size: int) -> bytes:
            return bytes(size)

        def read_into(self, offset: int, dest: memoryview) -> int:
            return len(dest)

    disk = assemble(plan, lambda dev: Big())
    with pytest.raises(ImageError, match="more than"):
        disk.read(part.start, 512)


# ----------------------------------------------------------- bad metadata

def _bad_copy(assembled: Assembled, tmp_path: Path, edit) -> DiskPlan:
    copy = _metadata_only(assembled.saved, assembled.plan, tmp_path / "bad")
    sf = copy / f"{assembled.saved.name}-pt.sf"
    sf.write_text(edit(sf.read_text()))
    plans = find_disks(str(copy), os.listdir(copy))
    assert len(plans) == 1
    return plans[0]


def _one_sentence(problem: str | None) -> str:
    assert problem and "\n" not in problem and len(problem) < 300
    return problem


def test_pt_sf_that_does_not_parse(assembled: Assembled, tmp_path: Path) -> None:
    plan = _bad_copy(assembled, tmp_path, lambda t: t.replace("start=", "begin=", 1))
    assert "-pt.sf line" in _one_sentence(plan.problem)
    assert "Problem:" in plan.info_text() and plan.extents == ()
    plan = _bad_copy(assembled, tmp_path / "2", lambda t: "garbage\n")
    assert "does not parse" in _one_sentence(plan.problem)


def test_overlapping_partitions(assembled: Assembled, tmp_path: Path) -> None:
    # the last two image partitions (logicals of one extended partition on the MBR disk)
    a, b = sorted((p for p in assembled.plan.partitions if p.role == IMAGE),
                  key=lambda p: p.start)[-2:]
    ss = assembled.plan.sector_size
    old = f"start= {b.start // ss:>11}"
    new = f"start= {a.end // ss - 8:>11}"

    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new)

    assert "overlap" in _one_sentence(_bad_copy(assembled, tmp_path, edit).problem)


def test_partition_past_the_disk_end(assembled: Assembled, tmp_path: Path) -> None:
    last = max(assembled.plan.partitions, key=lambda p: p.end)
    ss = assembled.plan.sector_size
    old = f"size= {last.size // ss:>11}"

    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, f"size= {assembled.plan.size // ss:>11}")

    assert "past the disk's end" in _one_sentence(_bad_copy(assembled, tmp_path, edit).problem)


def test_saveparts_and_foreign_directories_have_no_disk(assembled: Assembled,
                                                        tmp_path: Path) -> None:
    copy = _metadata_only(assembled.saved, assembled.plan, tmp_path / "parts")
    (copy / "disk").unlink()                 # what saveparts writes: parts, no disk
    assert find_disks(str(copy), os.listdir(copy)) == []
    assert find_disks(str(tmp_path), ["notes.txt", "sda1.img"]) == []


def test_gpt_rebuilt_without_second_dump(gpt_disk: Assembled, tmp_path: Path) -> None:
    """Without DISK-gpt-2nd the rebuilt backup GPT is still the source's, byte for byte."""
    assembled = gpt_disk
    copy = _metadata_only(assembled.saved, assembled.plan, tmp_path / "no2nd")
    (copy / f"{assembled.saved.name}-gpt-2nd").unlink()
    plan = find_disks(str(copy), os.listdir(copy))[0]
    disk = assemble(plan, lambda dev: None)
    tail = 33 * 512
    assert disk.read(plan.size - tail, tail) == read_range(assembled.saved.raw, plan.size - tail, tail)
    assert disk.read(0, 34 * 512) == read_range(assembled.saved.raw, 0, 34 * 512)


# ------------------------------------------------------- raw (dd) images

class RawReader:
    """A partition's raw bytes from a decompressed ``dd-ptcl-img`` (the opener's job later)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = os.path.getsize(path)
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, max(0, min(size, self.size - offset)), offset)

    def read_into(self, offset: int, dest: memoryview) -> int:
        data = self.read(offset, len(dest))
        dest[:len(data)] = data
        return len(data)


def test_dd_ptcl_img_partition(mbr_disk: Assembled, tmp_path: Path) -> None:
    """A partition saved by partclone.dd (Clonezilla's raw fallback) fills its slot raw."""
    need("partclone.dd", "zstd")
    saved, plan = mbr_disk.saved, mbr_disk.plan
    part = plan.partition(f"{saved.name}p5")
    assert part is not None
    copy = _metadata_only(saved, plan, tmp_path / "dd")
    for p in plan.partitions:
        if p.image and p is not part:
            os.symlink(saved.directory / p.image, copy / p.image)
    image = copy / f"{part.device}.dd-ptcl-img.zst"
    src = run(["losetup", "-f", "--show", "-r", "-o", str(part.start), "--sizelimit",
               str(part.size), str(saved.raw)]).stdout.decode().strip()
    try:              # the pipeline ocs-sr runs for a file system partclone does not know
        with open(image, "wb") as f:
            dd = subprocess.Popen(["partclone.dd", "-z", "10485760", "-s", src, "--output", "-"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            subprocess.run(["zstd", "-c", "-3"], stdin=dd.stdout, stdout=f, check=True)
            dd.stdout.close()  # type: ignore[union-attr]
            assert dd.wait(120) == 0
    finally:
        run(["losetup", "-d", src])
    plan2 = find_disks(str(copy), os.listdir(copy))[0]
    assert plan2.partition(part.device).image == image.name      # type: ignore[union-attr]
    raw = tmp_path / "p5.raw"
    run(["zstd", "-d", "-q", "-o", str(raw), str(image)])
    normal = opener_for(plan2)
    disk = assemble(plan2, lambda dev: RawReader(raw) if dev == part.device else normal(dev))
    assert disk.read(part.start, part.size) == read_range(saved.raw, part.start, part.size)
    assert "partclone.dd" in disk.info_text()


# ---------------------------------------------------------------- 4Kn disk

def test_4kn_disk_from_the_gdisk_backup(disks: DiskFactory) -> None:
    """4096-byte sectors: the GPT comes from DISK-gpt.gdisk, and the disk checks out
    on a loop device with 4096-byte sectors (sgdisk -v, sfdisk -d, the partition)."""
    need("sgdisk")
    saved = disks.get("gpt4k")
    plan = find_disks(str(saved.directory), saved.names)[0]
    assert plan.problem is None and plan.sector_size == 4096
    assert any("gpt.gdisk" in n for n in plan.notes), plan.notes
    disk = assemble(plan, opener_for(plan))
    img = saved.directory.parent / plan.file_name
    write_disk(disk, img)
    head = 6 * 4096                       # protective MBR, header, 4 sectors of entries
    assert read_range(img, 0, head) == read_range(saved.raw, 0, head)
    assert read_range(img, plan.size - 5 * 4096, 5 * 4096) == \
        read_range(saved.raw, plan.size - 5 * 4096, 5 * 4096)
    dev = run(["losetup", "-f", "--show", "-r", "-b", "4096", str(img)]).stdout.decode().strip()
    try:
        assert "No problems found" in run(["sgdisk", "-v", dev]).stdout.decode()
        dumped = run(["sfdisk", "-d", dev]).stdout.decode()
        assert sf_rows(dumped) == sf_rows((saved.directory / f"{saved.name}-pt.sf").read_text())
        run(["partx", "-a", dev])
        p = plan.partitions[0]
        assert sha_range(partition_path(dev, 1), 0, p.size) == \
            sha_range(saved.truths[p.device], 0, p.size)
    finally:
        subprocess.run(["partx", "-d", dev], stderr=subprocess.DEVNULL, check=False)
        run(["losetup", "-d", dev])


# ------------------------------------------------------------ names (pure)

def test_image_for_clonezilla_names() -> None:
    names = ["sda1.ext4-ptcl-img.zst.aa", "sda1.ext4-ptcl-img.zst.ab", "sda10.ext4-ptcl-img.zst",
             "sda2.ntfs-img", "sda3.dd-ptcl-img.gz", "sda4.dd-img.aa", "sda5", "sda6.000",
             "sda6.001", "sda7.aa", "sda2-ebr", "nvme0n1p2.xfs-ptcl-img.lzip",
             "sda8.ext4-ptcl-img.uncomp", "sda9.vfat-ptcl-img.zst.sha1"]
    assert image_for("sda1", names) == "sda1.ext4-ptcl-img.zst.aa"
    assert image_for("sda10", names) == "sda10.ext4-ptcl-img.zst"
    assert image_for("sda2", names) == "sda2.ntfs-img"
    assert image_for("sda3", names) == "sda3.dd-ptcl-img.gz"
    assert image_for("sda4", names) == "sda4.dd-img.aa"
    assert image_for("sda5", names) == "sda5"
    assert image_for("sda6", names) == "sda6.000"
    assert image_for("sda7", names) == "sda7.aa"
    assert image_for("nvme0n1p2", names) == "nvme0n1p2.xfs-ptcl-img.lzip"
    assert image_for("sda8", names) == "sda8.ext4-ptcl-img.uncomp"
    assert image_for("sda9", names) is None
    assert image_for("sdb1", names) is None


# ------------------------------------------------------- through the mount

def test_mount_lists_disk_img_and_names_a_problem(mounted_disks: Path, disks: DiskFactory) -> None:
    """DISK.img + DISK.img.info beside the images; bad metadata leaves only the .info."""
    for kind in KINDS:
        a = _assemble(disks, kind)
        d = mounted_disks / a.saved.directory.name
        shown = os.listdir(d)
        assert a.plan.file_name in shown and a.plan.file_name + ".info" in shown
        assert os.path.getsize(d / a.plan.file_name) == a.plan.size
        info = (d / (a.plan.file_name + ".info")).read_text()
        assert "losetup -r -P --show -f" in info and str(d / a.plan.file_name) in info
    bad = mounted_disks / "bad-table"
    name = _assemble(disks, "mbr").plan.file_name
    assert name not in os.listdir(bad) and name + ".info" in os.listdir(bad)
    info = (bad / (name + ".info")).read_text()
    assert "Problem:" in info and "past the disk's end" in info
    # the partition images of that directory are still there, one by one
    assert any(n.endswith("-ptcl-img") for n in os.listdir(bad))


def test_listing_reads_metadata_only_and_partitions_open_on_touch(
        disks: DiskFactory, tmp_path: Path) -> None:
    """The catalog lists DISK.img without opening a partition; a read opens only its own."""
    from imagefs.catalog import Catalog
    from imagefs.config import Settings

    a = _assemble(disks, "mbr")
    cat = Catalog(Settings(index_dir=str(tmp_path / "idx")), str(a.saved.directory))
    try:
        node = cat.lookup("/" + a.plan.file_name)
        entry = node.entry
        assert not any(e.opened for e in entry.images.values())
        opened = node.open()
        assert opened.read(0, 512) == read_range(a.img, 0, 512)      # the MBR: no partition
        assert not any(e.opened for e in entry.images.values())
        first = min((p for p in a.plan.partitions if p.role == IMAGE), key=lambda p: p.start)
        assert opened.read(first.start, 4096) == read_range(a.img, first.start, 4096)
        assert [dev for dev, e in entry.images.items() if e.opened] == [first.device]
    finally:
        cat.close()


def test_ls_and_info_name_the_disk(disks: DiskFactory) -> None:
    """``imagefs ls`` lists DISK.img; ``imagefs info DIR/DISK.img`` and ``info DIR`` print it."""
    import sys
    a = _assemble(disks, "gpt")
    d = a.saved.directory
    cmd = [sys.executable, "-m", "imagefs"]
    out = run(cmd + ["ls", str(d)]).stdout.decode()
    assert f"/{a.plan.file_name}" in out and "whole disk" in out
    for target in (d / a.plan.file_name, d):
        text = run(cmd + ["info", str(target)]).stdout.decode()
        assert "Layout" in text and "losetup -r -P" in text
        assert str(d / a.plan.file_name) in text


def test_a_partition_backup_replaced_under_disk_img_fails_and_says_so(
        disks: DiskFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """DISK.img reads a changed partition image as VNAME does: EIO, logged once,
    and the image's ``.info`` says it changed (DISK.img read the partition
    directly and did neither)."""
    import logging

    from imagefs.catalog import Catalog
    from imagefs.config import Settings
    from imagefs.errors import SourceChangedError

    a = _assemble(disks, "mbr")
    saved = tmp_path / "saved"
    shutil.copytree(a.saved.directory, saved, copy_function=os.link)   # the fixture stays as it is
    # No cache: these small images would otherwise be served whole from the
    # bytes decoded before the change (old bytes, never mixed, but untested).
    cat = Catalog(Settings(index_dir=str(tmp_path / "idx"), cache_size=0), str(saved))
    try:
        node = cat.lookup("/" + a.plan.file_name)
        target = min((p for p in a.plan.partitions if p.role == IMAGE), key=lambda p: p.start)
        image_entry = node.entry.images[target.device]
        opened = node.open()
        assert opened.read(target.start, 4096) == read_range(a.img, target.start, 4096)
        image = image_entry.partition().image
        stored = [b for b in range(image.total_blocks) if image.bitmap.is_set(b)]
        for piece in image_entry.pieces:                   # replaced by rename: a new file
            shutil.copyfile(piece, piece + ".new")
            os.replace(piece + ".new", piece)
        caplog.set_level(logging.WARNING, logger="imagefs")
        failures = 0
        for block in stored[len(stored) // 2::max(1, len(stored) // 40)]:   # not cached yet
            try:
                opened.read(target.start + block * image.block_size, 4096)
            except SourceChangedError:
                failures += 1               # the first read after the change ...
            except ImageError as exc:
                assert "changed since mounted" in str(exc)     # ... and every one after
                failures += 1
        assert failures > 0
        info = image_entry.info_text().decode()
        assert "changed since mounted" in info
        said = [r for r in caplog.records if "changed since mounted" in r.getMessage()]
        assert len(said) == 1, [r.getMessage() for r in said]
    finally:
        cat.close()
