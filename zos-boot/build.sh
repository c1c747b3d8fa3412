#!/usr/bin/env bash
# Builds the static zvm for the node image (x86_64-unknown-linux-gnu, +crt-static) and the
# guest programs (guest/build.sh, which includes the service manager zvm-init), then
# prints the path of the static zvm as the last line; zvm-init is in the same directory.
#
# The static zvm is a release build without LTO (it is rebuilt whenever zvm changes, and
# LTO over the whole of zvm takes many minutes on a small machine), stripped, optimised for
# size (11.7 MB against 14.3 at opt-level 3: it lives in every node's initramfs, in RAM,
# and each MB costs ~5 s of unpacking where guest kernel code is emulated), with the
# hashing, cipher and compression crates still optimised for speed. Its cargo
# target directory lives in zvm's cache ($ZVM_CACHE_DIR/build/node-zvm), like the guest
# kernel (scripts/cached-build.sh), so a fresh clone on a machine that built it
# before compiles only the workspace's own crates, not every dependency again.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
target=x86_64-unknown-linux-gnu
bash "$repo/guest/build.sh" >/dev/null
speed=()
for crate in blake2b_simd sha2 aes aes-gcm ghash polyval snap miniz_oxide zstd-sys; do
  speed+=(--config "profile.release.package.$crate.opt-level=3")
done
build_dir=$(CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_STRIP=symbols \
  RUSTFLAGS="-C target-feature=+crt-static" \
  bash "$repo/scripts/cached-build.sh" node-zvm "$repo/zvm/Cargo.toml" --quiet --release \
  "${speed[@]}" --bin zvm --target "$target")
out="$repo/guest/target/$target/release"
mkdir -p "$out"
# Beside zvm-init, replaced in one rename (a test may be reading the old one).
cp -f "$build_dir/$target/release/zvm" "$out/.zvm.node-build.$$"
mv -f "$out/.zvm.node-build.$$" "$out/zvm"
echo "$out/zvm"
