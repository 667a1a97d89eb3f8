#!/usr/bin/env bash
# Set everything up, then run the whole test suite (real images, real mounts).
# Run as root: the tests make file systems on loop devices and mount FUSE.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh"
cd "$here"
# Test files write only under pytest's temp dir; keep bytecode out of the tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$here/.venv/bin/python" -m pytest -p no:cacheprovider -q -ra "$@"
