#!/usr/bin/env bash
# Runs zvm's whole test suite: unit tests, tiny-guest tests, CLI tests, flist tests and
# the Linux boot tests (which build the guest kernel once per machine, ~5-8 minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
  echo "zvm: /dev/kvm is not usable here; the guest tests need it" >&2
  exit 1
fi
echo "zvm: guest kernel: $(bash guest-kernel/build.sh)" >&2
echo "zvm: guest init: $(bash guest/build.sh)" >&2
# The boot tests drive the zvm binary itself.
cargo build -p zvm 2>&1
cargo test --workspace --no-fail-fast 2>&1
