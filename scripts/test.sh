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
# The boot tests drive the zvm binary itself, and install it with zvm-runc (`zvm setup`).
cargo build -p zvm -p oci-runtime --bins 2>&1
cargo test --workspace --exclude zvm-integration-tests --no-fail-fast 2>&1
# Linux guests: as many at a time as the host has cores, up to 2, each test in its own
# process (cargo-nextest, which also reports each test's time). On hosts where guest kernel
# code is emulated (KVM PVM) more guests than cores starve each other's vCPUs. Without
# nextest, one at a time.
if cargo nextest --version >/dev/null 2>&1; then
  jobs=$(( $(nproc) < 2 ? 1 : 2 ))
  cargo nextest run -p zvm-integration-tests --no-fail-fast --test-threads "$jobs" \
    --status-level all --final-status-level slow 2>&1
else
  cargo test -p zvm-integration-tests --no-fail-fast -- --test-threads=1 2>&1
fi
