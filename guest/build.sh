#!/usr/bin/env bash
# Builds the guest programs (init, zvm-vsock-tool, zvm-init) as static binaries and prints the
# path of the init binary; the other programs land in the same directory.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
  --manifest-path "$here/Cargo.toml" --target "$target" >&2
# zvm-init, the node image's service manager (a host workspace crate, service-manager/),
# lands beside the init.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
  --manifest-path "$here/../service-manager/Cargo.toml" --target "$target" --target-dir "$here/target" >&2
echo "$here/target/$target/release/zvm-guest-init"
