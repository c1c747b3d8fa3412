#!/usr/bin/env bash
# Builds virtiofsd (the Rust virtio-fs daemon, from crates.io) once into zvm's cache, for
# `zvm run --fs`: zvm looks for it there when neither --virtiofsd nor $ZVM_VIRTIOFSD names
# one. Needs cargo and Debian's libseccomp-dev and libcap-ng-dev (scripts/install-deps.sh
# installs them). Prints the binary's path as the last line on stdout.
set -euo pipefail
version=1.14.0
cache_root=${ZVM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zvm}
root=${ZVM_VIRTIOFSD_ROOT:-$cache_root/virtiofsd}
bin="$root/bin/virtiofsd"
if [ -x "$bin" ] && [ "$(cat "$root/version" 2>/dev/null)" = "$version" ]; then
  echo "$bin"
  exit 0
fi
echo "zvm: building virtiofsd $version into $root (a few minutes, once)" >&2
mkdir -p "$root"
cargo install --quiet --locked --force --version "$version" --root "$root" virtiofsd >&2
echo "$version" > "$root/version"
echo "$bin"
