#!/usr/bin/env bash
# Runs `cargo build --manifest-path MANIFEST ARGS...` in a target directory kept in zvm's
# cache ($ZVM_CACHE_DIR/build/NAME, beside the cached guest kernel) and prints that
# directory. For the release builds of special flavours (static guest programs, the node
# image's static zvm, instrumented fuzz targets), which share nothing with target/: a
# fresh clone on a machine that built them before then compiles only the project's own
# crates, not every dependency again.
#
#   dir=$(bash scripts/cached-build.sh NAME MANIFEST [cargo build args...])
#
# Cargo names a path crate's artifacts the same in every checkout and judges them fresh
# by file times, so artifacts another checkout built could pass for this one's. The
# directory therefore remembers which checkout built in it last; when that changes, the
# fingerprints of every path crate the manifest uses are dropped first (they are rebuilt,
# as a fresh clone needs anyway), under a lock that spans the build. One directory per
# manifest. A directory past $ZVM_BUILD_CACHE_MIB (default 4096) is emptied first.
set -euo pipefail
name=${1:?usage: cached-build.sh NAME MANIFEST [cargo build args...]}
manifest=$(realpath "${2:?usage: cached-build.sh NAME MANIFEST [cargo build args...]}")
shift 2
cache_root=${ZVM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zvm}
dir="$cache_root/build/$name"
limit_mib=${ZVM_BUILD_CACHE_MIB:-4096}
mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9
if [ "$(du -sm "$dir" | cut -f1)" -gt "$limit_mib" ]; then
  echo "zvm: $dir is over $limit_mib MiB; starting it afresh" >&2
  find "$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi
stamp="$dir/.zvm-built-from"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$manifest" ]; then
  packages=$(cargo metadata --format-version 1 --manifest-path "$manifest" |
    python3 -c 'import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["source"] is None:
        print(p["name"])')
  while IFS= read -r fingerprints; do
    for package in $packages; do
      rm -rf "$fingerprints/$package"-*
    done
  done < <(find "$dir" -maxdepth 4 -type d -name .fingerprint)
  printf '%s\n' "$manifest" > "$stamp"
fi
cargo build --manifest-path "$manifest" --target-dir "$dir" "$@" >&2
echo "$dir"
