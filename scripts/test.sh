#!/usr/bin/env bash
# Set everything up, then run the whole test suite (real images, real mounts).
# Run as root: the tests make file systems on loop devices and mount FUSE.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh"
cd "$here"
# Test files write only under pytest's temp dir; keep bytecode and linter
# caches out of the tree.
export PYTHONDONTWRITEBYTECODE=1
echo "test: ruff and mypy on imagefs/"
"$here/.venv/bin/ruff" check --no-cache imagefs
"$here/.venv/bin/mypy" --cache-dir=/dev/null
exec "$here/.venv/bin/python" -m pytest -p no:cacheprovider -q -ra "$@"
