#!/usr/bin/env bash
# Rebuild samples/backups: a small real Clonezilla-style tree made with the
# real tools (run as root on Debian 12 with scripts/setup.sh's packages).
# The result is committed so the demo works without building anything.
#
#   samples/backups/2026-11-01-img/   a whole-disk Clonezilla image directory
#       disk parts sda-pt.sf sda-pt.parted sda-mbr clonezilla-img Info-saved-by-cmd.txt
#       sda1.ext4-ptcl-img.zst.aa ...   partclone ext4, zstd -T0, split (-z9p, -i)
#       sda2.vfat-ptcl-img.gz           partclone FAT16 through pigz (-z1p)
#       sda3.ntfs-img.gz                ntfsclone through gzip (Clonezilla's default)
#   samples/backups/loose/old-laptop.ext2-ptcl-img   uncompressed partclone
#   samples/backups/loose/notes.txt                  not an image: shown as is
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/backups"
work=$(mktemp -d)
loops=()   # only the loop devices this script attached are detached on exit
cleanup() {
  umount "$work/mnt" 2>/dev/null || true
  for dev in "${loops[@]}"; do losetup -d "$dev" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/mnt"

fill() {  # fill a mounted tree with a few recognisable files
  local dir=$1 seed=$2
  mkdir -p "$dir/photos" "$dir/documents/2026"
  printf 'Hello from imagefs sample %s.\nThis file came out of a backup image without a restore.\n' "$seed" > "$dir/README.txt"
  seq 1 20000 | sed "s/^/entry $seed /" > "$dir/documents/2026/ledger.txt"
  head -c 300000 /dev/urandom > "$dir/photos/holiday.jpg"
  printf 'shopping: bread, milk\n' > "$dir/documents/todo.txt"
}

rm -rf "$out"
img="$out/2026-11-01-img"
mkdir -p "$img" "$out/loose"

# A 3-partition disk: ext4, FAT16, NTFS.
truncate -s 64M "$work/disk.raw"
printf 'label: dos\n,24M,83\n,16M,c\n,,7\n' | sfdisk -q "$work/disk.raw"
D=$(losetup -f --show -P "$work/disk.raw"); loops+=("$D")
[ -e "${D}p1" ] || partx -a "$D"
mkfs.ext4 -q -F -L samples "${D}p1"
mount "${D}p1" "$work/mnt"; fill "$work/mnt" ext4; umount "$work/mnt"
mkfs.vfat -F 16 -n SAMPLES "${D}p2" >/dev/null 2>&1
mkdir -p "$work/fat"; fill "$work/fat" fat
mcopy -s -i "${D}p2" "$work/fat"/* ::
mkntfs -q -F -f -L samples "${D}p3"
ntfs-3g "${D}p3" "$work/mnt"; fill "$work/mnt" ntfs; umount "$work/mnt"

d=${D#/dev/}
echo sda > "$img/disk"
echo "sda1 sda2 sda3" > "$img/parts"
# The loop device's partitions are ${D}p1 ...; on the saved machine they were /dev/sda1 ...
sfdisk -d "$D" | sed "s#${D}p#/dev/sda#g; s#$D#/dev/sda#g" > "$img/sda-pt.sf"
parted -s "$D" unit s print 2>/dev/null | sed "s#${D}p#/dev/sda#g; s#$D#/dev/sda#g" \
  > "$img/sda-pt.parted" || true
dd if="$D" of="$img/sda-mbr" bs=512 count=1 status=none
cat > "$img/clonezilla-img" <<TXT
This image was saved by the imagefs sample builder in the layout of Clonezilla live.
Running: partclone.ext4 -z 10485760 -N -L /var/log/partclone.log -c -s /dev/sda1 --output - | zstd -c -T0 -3 | split -a 2 -b 100kB - sda1.ext4-ptcl-img.zst.
TXT
echo "ocs-sr -q2 -c -j2 -z9p -i 1 -sfsck -senc -p choose savedisk 2026-11-01-img sda" > "$img/Info-saved-by-cmd.txt"

partclone.ext4 -z 10485760 -c -s "${D}p1" --output - 2>/dev/null | zstd -q -c -T0 -3 \
  | split -a 2 -b 100kB - "$img/sda1.ext4-ptcl-img.zst."   # Clonezilla: -b ${N}MB; small here to get pieces
partclone.fat -c -s "${D}p2" --output - 2>/dev/null | pigz -c --fast -b 1024 --rsyncable \
  > "$img/sda2.vfat-ptcl-img.gz"
ntfsclone --save-image --output - "${D}p3" 2>/dev/null | gzip -c --fast > "$img/sda3.ntfs-img.gz"
losetup -d "$D"

# A loose, uncompressed partclone image and a non-image file.
truncate -s 8M "$work/e2.raw"
mkfs.ext2 -q -F -L oldlaptop "$work/e2.raw"
L=$(losetup -f --show "$work/e2.raw"); loops+=("$L")
mount "$L" "$work/mnt"; fill "$work/mnt" ext2; umount "$work/mnt"
partclone.ext2 -c -s "$L" -o "$out/loose/old-laptop.ext2-ptcl-img" >/dev/null 2>&1
losetup -d "$L"
printf 'These backups are samples for imagefs.\n' > "$out/loose/notes.txt"
chmod -R a+rX "$out"
du -sh "$out"
