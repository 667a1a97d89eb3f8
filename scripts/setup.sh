#!/usr/bin/env bash
# Install everything imagefs and its tests need on Debian 12: the imaging
# tools, FUSE, the compressors, then a virtual environment in .venv with
# imagefs installed in it, and imagefs, its man page and bash completion
# linked into /usr/local (scripts/install-links.sh). Safe to run again.
# Needs root: from an ordinary user's shell it asks sudo itself, where
# there is one (a fresh Debian root shell has none and needs none).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
  exec sudo -- "$0" "$@"
fi

packages=(
  python3 python3-venv python3-dev gcc pkg-config
  fuse3 libfuse3-dev kmod util-linux mount
  partclone partimage ntfs-3g
  e2fsprogs xfsprogs btrfs-progs dosfstools exfatprogs exfat-fuse mtools
  gzip pigz zstd lz4 bzip2 pbzip2 lbzip2 xz-utils pixz lzop liblzo2-dev lzip plzip lrzip
  # whole-disk tests (DISK.img): the real Clonezilla saves the disks, the partitioning
  # tools check them, qemu boots one (extlinux, a Debian kernel, a busybox initramfs)
  clonezilla drbl parted gdisk fdisk lvm2 cryptsetup-bin cpio
  qemu-system-x86 extlinux syslinux-common busybox-static linux-image-cloud-amd64 ovmf
  # the man page's check (groff), the systemd units' check (systemd-analyze),
  # the ordinary-user test (setpriv, runuser: util-linux; useradd: passwd)
  groff-base systemd passwd
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${missing[*]}; run this script as root" \
         "(there is no sudo: su -c $0)" >&2
    exit 1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Loop devices and FUSE must be usable for the mount tests.
modprobe loop 2>/dev/null || true
modprobe fuse 2>/dev/null || true

venv="$here/.venv"
# Debian's own python3: every user can run it, so the /usr/local/bin/imagefs
# link works for ordinary users too (an interpreter under /root would not).
python=/usr/bin/python3
[ -x "$python" ] || python=python3
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true   # an old pip still works
# A failed install must stop here with pip's own message, not later with
# a confusing import error.
if ! "$venv/bin/pip" install -q -e "$here[test,lzo]" >"$venv/pip-install.log" 2>&1; then
  grep -v '^WARNING: Location' "$venv/pip-install.log" >&2
  echo "setup: pip install failed (log: $venv/pip-install.log)" >&2
  exit 1
fi
# The install is editable (the checkout is the package): Python would write
# its bytecode into the source tree, or, where the tree is not the user's,
# compile every module at every start (0.07 s of a mount's start-up,
# measured in bench/contenders.py).  A .pth line points the venv's bytecode
# at the user's cache instead (PYTHONPYCACHEPREFIX still wins).
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat >"$site/imagefs-bytecode.pth" <<'PTH'
import os, sys; sys.pycache_prefix = sys.pycache_prefix or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "imagefs", "pycache")
PTH
"$venv/bin/python" -c "import imagefs, mfusepy, rapidgzip, pyzstd, lz4, xxhash, yaml, tqdm, lzallright" \
  || { echo "setup: the Python dependencies did not install" >&2; exit 1; }
# mount(8) runs helpers with a fixed PATH, so `mount -t fuse.imagefs` and
# fstab lines need imagefs in /usr/local/bin (or /usr/bin); man and bash
# find the page and the completion under /usr/local/share.
if [ "$(id -u)" -eq 0 ]; then
  "$here/scripts/install-links.sh"
fi
echo "setup: done ($venv)"
