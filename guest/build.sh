#!/usr/bin/env bash
# Builds the guest programs (init, zvm-vsock-tool) as static binaries and prints the
# path of the init binary; the other programs land in the same directory.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
  --manifest-path "$here/Cargo.toml" --target "$target" >&2
echo "$here/target/$target/release/zvm-guest-init"
