#!/usr/bin/env bash
# Prints a cargo target directory for NAME kept in zvm's cache ($ZVM_CACHE_DIR/build/NAME,
# beside the cached guest kernel), for the release builds of special flavours (static
# guest programs, the node image's static zvm, instrumented fuzz targets) that share
# nothing with target/. A fresh clone on a machine that built them before then compiles
# only the workspace's own crates, not every dependency again. Every clone path leaves
# its own copies of the workspace crates, so a directory past $ZVM_BUILD_CACHE_MIB
# (default 4096) is emptied first.
#
#   dir=$(bash scripts/cached-target-dir.sh NAME)
set -euo pipefail
name=${1:?usage: cached-target-dir.sh NAME}
cache_root=${ZVM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zvm}
dir="$cache_root/build/$name"
limit_mib=${ZVM_BUILD_CACHE_MIB:-4096}
mkdir -p "$dir"
if [ "$(du -sm "$dir" | cut -f1)" -gt "$limit_mib" ]; then
  echo "zvm: $dir is over $limit_mib MiB; starting it afresh" >&2
  find "$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi
echo "$dir"
