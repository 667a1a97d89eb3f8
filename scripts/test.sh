#!/usr/bin/env bash
# Set everything up, then run the whole test suite (real images, real mounts).
# Needs root (the tests make file systems on loop devices and mount FUSE):
# from an ordinary user's shell it asks sudo itself, where there is one.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -- "$0" "$@"
  fi
  echo "test: the tests need root (loop devices, mounts) and there is no sudo: su -c $0" >&2
  exit 1
fi
"$here/scripts/setup.sh"
cd "$here"
# Test files write only under pytest's temp dir; keep bytecode and linter
# caches out of the tree.
export PYTHONDONTWRITEBYTECODE=1
echo "test: ruff and mypy on imagefs/"
"$here/.venv/bin/ruff" check --no-cache imagefs
"$here/.venv/bin/mypy" --cache-dir=/dev/null
exec "$here/.venv/bin/python" -m pytest -p no:cacheprovider -q -ra "$@"
