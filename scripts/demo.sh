#!/usr/bin/env bash
# Set everything up, then mount the bundled sample backups and show them.
#   sudo ./scripts/demo.sh            mount samples/backups on /tmp/imagefs-demo
#   sudo ./scripts/demo.sh SRC MNT    mount another tree
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh" >/dev/null
src=${1:-$here/samples/backups}
mnt=${2:-/tmp/imagefs-demo}
imagefs="$here/.venv/bin/imagefs"

mkdir -p "$mnt"
if mountpoint -q "$mnt"; then fusermount -u "$mnt" 2>/dev/null || umount "$mnt"; fi
"$imagefs" "$src" "$mnt"
echo "imagefs: $src is mounted read-only on $mnt"
echo
(cd "$mnt" && ls -l . 2026-11-01-img loose)
img="$mnt/2026-11-01-img"
if [ -d "$img/sda1.ext4-ptcl-img.files" ]; then
  echo; echo "== a file from inside the ext4 backup: $img/sda1.ext4-ptcl-img.files/README.txt =="
  cat "$img/sda1.ext4-ptcl-img.files/README.txt"
  echo; echo "== the NTFS backup's files: ls -l $img/sda3.ntfs-img.files =="
  ls -l "$img/sda3.ntfs-img.files"
fi
cat <<TXT

Try next:
  ls -lR $mnt/2026-11-01-img/sda2.vfat-ptcl-img.files
  cat $mnt/2026-11-01-img/sda1.ext4-ptcl-img.info
  cat $mnt/2026-11-01-img/sda.img.info          # the whole disk, rebuilt: fdisk -l $mnt/2026-11-01-img/sda.img
  sudo mkdir -p /media/old && sudo mount -o loop,ro $mnt/2026-11-01-img/sda1.ext4-ptcl-img /media/old
  ls /media/old && cat /media/old/README.txt && sudo umount /media/old
  sudo e2fsck -fn $mnt/2026-11-01-img/sda1.ext4-ptcl-img
  $imagefs verify $src/2026-11-01-img/sda1.ext4-ptcl-img.zst.aa
Unmount with:  fusermount -u $mnt   (or: sudo umount $mnt)
TXT
