#!/usr/bin/env bash
# Builds the guest programs (init, zvm-vsock-tool, zvm-init, zvm-oci-agent) as static binaries
# and prints the path of the init binary (always the last line); the other programs land in the
# same directory, e.g. target/x86_64-unknown-linux-gnu/release/zvm-oci-agent (the OCI guest
# agent, a host workspace crate).
#
# They are compiled in cargo target directories kept in zvm's cache
# (scripts/cached-build.sh), so a fresh clone on a machine that built them before
# compiles only the project's own crates, and copied here when their content changed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=x86_64-unknown-linux-gnu
static="-C target-feature=+crt-static"
guest_build=$(RUSTFLAGS="$static" bash "$here/../scripts/cached-build.sh" guest \
  "$here/Cargo.toml" --quiet --release --target "$target")
# zvm-init, the node image's service manager (a host workspace crate, service-manager/).
init_build=$(CARGO_PROFILE_RELEASE_STRIP=symbols RUSTFLAGS="$static" bash "$here/../scripts/cached-build.sh" \
  service-manager "$here/../service-manager/Cargo.toml" --quiet --release --target "$target")
# zvm-oci-agent, PID 1 of OCI container VMs (host workspace crate oci-agent/).
agent_build=$(RUSTFLAGS="$static" bash "$here/../scripts/cached-build.sh" oci-agent \
  "$here/../Cargo.toml" --quiet --release -p oci-agent --target "$target")
out="$here/target/$target/release"
mkdir -p "$out"
install_program() { # FROM: replaced in one rename, and only when it changed
  local from=$1 to
  to="$out/$(basename "$from")"
  if ! cmp -s "$from" "$to"; then
    cp -f "$from" "$to.tmp-$$"
    mv -f "$to.tmp-$$" "$to"
  fi
}
for program in zvm-guest-init zvm-vsock-tool; do
  install_program "$guest_build/$target/release/$program"
done
install_program "$init_build/$target/release/zvm-init"
install_program "$agent_build/$target/release/zvm-oci-agent"
echo "$out/zvm-guest-init"
