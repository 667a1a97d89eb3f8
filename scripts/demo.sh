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
(cd "$mnt" && ls -lR)
first_info=$(cd "$mnt" && find . -name '*.info' | sort | head -n 1)
if [ -n "$first_info" ]; then
  echo; echo "== $mnt/${first_info#./} =="; cat "$mnt/${first_info#./}"
fi
cat <<TXT

Try next:
  cat $mnt/2026-11-01-img/sda1.ext4-ptcl-img.info
  sudo mkdir -p /media/old && sudo mount -o loop,ro $mnt/2026-11-01-img/sda1.ext4-ptcl-img /media/old
  ls /media/old && cat /media/old/README.txt && sudo umount /media/old
  sudo e2fsck -fn $mnt/2026-11-01-img/sda1.ext4-ptcl-img
  $imagefs verify $src/2026-11-01-img/sda1.ext4-ptcl-img.zst.aa
Unmount with:  fusermount -u $mnt   (or: sudo umount $mnt)
TXT
