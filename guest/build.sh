#!/usr/bin/env bash
# Builds the guest programs (init, zvm-vsock-tool, zvm-init, zvm-oci-agent) as static binaries
# and prints the path of the init binary (always the last line); the other programs land in the
# same directory, e.g. target/x86_64-unknown-linux-gnu/release/zvm-oci-agent (the OCI guest
# agent, a host workspace crate built in target/host-ws and copied there).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
  --manifest-path "$here/Cargo.toml" --target "$target" >&2
# zvm-init, the node image's service manager (a host workspace crate, service-manager/),
# lands beside the init.
CARGO_PROFILE_RELEASE_STRIP=symbols RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
  --manifest-path "$here/../service-manager/Cargo.toml" --target "$target" --target-dir "$here/target" >&2
# zvm-oci-agent, PID 1 of OCI container VMs (host workspace crate oci-agent/).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p oci-agent \
  --manifest-path "$here/../Cargo.toml" --target "$target" --target-dir "$here/target/host-ws" >&2
cp -f "$here/target/host-ws/$target/release/zvm-oci-agent" "$here/target/$target/release/zvm-oci-agent"
echo "$here/target/$target/release/zvm-guest-init"
