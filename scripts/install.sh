#!/usr/bin/env bash
# Installs zvm as a tool, from this checkout:
#
#   bash scripts/install.sh [--prefix PREFIX]      # default /usr/local (as root)
#
# builds zvm, zvm-vmm and zvm-runc (release), the static guest programs (guest/build.sh) and the guest
# kernel (guest-kernel/build.sh, cached), then `zvm setup` copies them into PREFIX/lib/zvm
# and links PREFIX/bin/zvm and PREFIX/bin/zvm-runc there. The installed zvm finds its
# kernel and agent beside itself: no checkout, no ZVM_* variables. Run it again to upgrade;
# remove PREFIX/lib/zvm and the two links to uninstall.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
prefix=/usr/local
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "usage: bash $0 [--prefix PREFIX]" >&2; exit 2; }
              prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    *) echo "usage: bash $0 [--prefix PREFIX]" >&2; exit 2 ;;
  esac
done
bash scripts/install-deps.sh
echo "zvm: building zvm and zvm-runc (release: several minutes the first time)" >&2
cargo build --release --quiet -p zvm -p oci-runtime --bins
# zvm-vmm, the lean executable zvm run hands its VMs to, linked statically: without the
# dynamic loader and glibc's shared objects a VM's process keeps 2.3 MiB resident instead
# of 3.1 (benches/README.md, "The lean VMM in use"). Built after the line above, which
# would otherwise replace it.
cargo rustc --release --quiet -p zvm --bin zvm-vmm -- -C target-feature=+crt-static
# Shipped binaries never hold the host-process test double (no isolation; tests only).
bash scripts/check-no-test-backend.sh "${CARGO_TARGET_DIR:-target}/release"
init=$(bash guest/build.sh | tail -n1)
kernel=$(bash guest-kernel/build.sh | tail -n1)
"${CARGO_TARGET_DIR:-target}/release/zvm" setup --prefix "$prefix" --kernel "$kernel" \
  --agent "$(dirname "$init")/zvm-oci-agent"
