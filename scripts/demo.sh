#!/usr/bin/env bash
# Set everything up, then mount the bundled sample backups and show them.
#   ./scripts/demo.sh            mount samples/backups (on /tmp/imagefs-demo as root,
#                                ~/imagefs-demo as an ordinary user)
#   ./scripts/demo.sh SRC MNT    mount another tree
# Setup needs root and asks sudo itself; the mount is made by whoever runs
# this, so an ordinary user can read it (FUSE lets no one else in).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh" >/dev/null
src=${1:-$here/samples/backups}
if [ "$(id -u)" -eq 0 ]; then default_mnt=/tmp/imagefs-demo; else default_mnt=$HOME/imagefs-demo; fi
mnt=${2:-$default_mnt}
imagefs="$here/.venv/bin/imagefs"

mkdir -p "$mnt"
if mountpoint -q "$mnt"; then fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt"; fi
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
info="$img/sda1.ext4-ptcl-img.info"
echo
echo "Try next:"
echo "  ls -lR $img/sda2.vfat-ptcl-img.files"
echo "  cat $info"
echo "  cat $img/sda.img.info          # the whole disk, rebuilt: fdisk -l $img/sda.img"
if [ -f "$info" ]; then
  # The .info's own command lines: they fit this user and this mount (a
  # user's own mount cannot be loop-mounted by root, for one).
  sed -n 's/^\(check it\|mount it\|copy files out\|loop device\): *//p' "$info" \
    | sed 's/^/  /'
fi
echo "  $imagefs verify $src/2026-11-01-img/sda1.ext4-ptcl-img.zst.aa"
echo "Unmount with:  fusermount3 -u $mnt"
