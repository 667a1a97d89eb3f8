#!/usr/bin/env bash
# Put this checkout's imagefs, man page and bash completion where the system
# looks for them, without taking them from another checkout:
#   IMAGEFS_BIN_DIR         (default /usr/local/bin)         imagefs -> .venv/bin/imagefs
#   IMAGEFS_MAN_DIR         (default /usr/local/share/man/man1)   imagefs.1
#   IMAGEFS_COMPLETION_DIR  (default /usr/local/share/bash-completion/completions)  imagefs
# A link is made when the name is free, re-pointed when it already points
# into this checkout (or nowhere), and otherwise left alone with a word.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=${IMAGEFS_BIN_DIR:-/usr/local/bin}
man_dir=${IMAGEFS_MAN_DIR:-/usr/local/share/man/man1}
completion_dir=${IMAGEFS_COMPLETION_DIR:-/usr/local/share/bash-completion/completions}

link() {  # link TARGET DIR NAME
  local target=$1 dir=$2 name=$3
  local path="$dir/$name"
  mkdir -p "$dir"
  if [ -L "$path" ]; then
    local current
    current=$(readlink "$path")
    case "$current" in
      "$here"/*)
        [ "$current" = "$target" ] || ln -sfn "$target" "$path"
        echo "setup: $path -> $target" ;;
      *)
        if [ -e "$path" ]; then
          echo "setup: $path points to $current (another installation); left alone." \
               "This checkout's is $target (ln -sfn $target $path to use it)"
        else
          ln -sfn "$target" "$path"
          echo "setup: $path -> $target (it pointed to $current, which is gone)"
        fi ;;
    esac
  elif [ -e "$path" ]; then
    echo "setup: $path exists and is no link; left alone. This checkout's is $target"
  else
    ln -s "$target" "$path"
    echo "setup: $path -> $target"
  fi
}

link "$here/.venv/bin/imagefs" "$bin_dir" imagefs
link "$here/man/imagefs.1" "$man_dir" imagefs.1
link "$here/contrib/bash-completion/imagefs" "$completion_dir" imagefs
