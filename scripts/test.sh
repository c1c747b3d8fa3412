#!/usr/bin/env bash
# Runs zvm's whole test suite: unit tests, tiny-guest tests, CLI tests, flist tests and
# the Linux boot tests (which build the guest kernels once per machine, ~5-8 minutes for
# the project's, ~3 for the tinyconfig one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
  echo "zvm: /dev/kvm is not usable here; the guest tests need it" >&2
  exit 1
fi
echo "zvm: guest kernel: $(bash guest-kernel/build.sh)" >&2
echo "zvm: tiny guest kernel: $(ZVM_KERNEL_FLAVOUR=tiny bash guest-kernel/build.sh)" >&2
echo "zvm: guest init: $(bash guest/build.sh)" >&2
# The boot tests drive the zvm binary itself, and install it with zvm-runc (`zvm setup`).
# Built as shipped, they lack the host-process test double (a container backend with no
# isolation, the cargo feature oci-runtime/test-backend): checked here, before the unit
# tests, whose build turns the feature on (oci-runtime's dev-dependency on itself) and
# leaves zvm and zvm-runc built with it in target/debug; built again after them, so the
# boot tests run the shipped kind.
bins=${CARGO_TARGET_DIR:-target}/debug
cargo build -p zvm -p oci-runtime --bins 2>&1
bash scripts/check-no-test-backend.sh "$bins"
cargo test --workspace --exclude zvm-integration-tests --no-fail-fast 2>&1
cargo build -p zvm -p oci-runtime --bins 2>&1
bash scripts/check-no-test-backend.sh "$bins"
# Container VMs restore one template per VM shape made once for this run (the first test
# that needs it boots it); zvm-runc's installed-copy test and the node image boot their own.
export ZVM_TEMPLATE_DIR="${ZVM_TEMPLATE_DIR:-$PWD/target/test-templates}"
rm -rf "$ZVM_TEMPLATE_DIR"
# Linux guests run two at a time where that pays (.config/nextest.toml): on hosts where
# guest kernel code is emulated (KVM PVM) a one-vCPU guest keeps one core busy, so two of
# them share a two-core host, while a two-vCPU guest runs alone (guests sharing cores
# starve each other's vCPUs, and SMP boots stall at secondary CPU bring-up). The node
# image's static zvm and the fuzz targets build and run beside them, one job at a time,
# at the lowest priority, mostly on the core the two-vCPU guests (run first) leave idle
# once their CPUs are up (the two-vCPU tinyconfig boot took 133 s in CI beside the build
# at equal priority, 70 s without it).
alongside_log=$(mktemp)
(nice -n 19 bash zos-boot/build.sh >/dev/null && nice -n 19 bash fuzz/run.sh) \
  >"$alongside_log" 2>&1 &
alongside=$!
# cargo-nextest, when installed, runs each test in its own process, pairs them as its
# settings say and reports each one's time; cargo test runs them one at a time.
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p zvm-integration-tests --no-fail-fast --test-threads 2 \
    --status-level all --final-status-level slow 2>&1 || status=$?
else
  cargo test -p zvm-integration-tests --no-fail-fast -- --test-threads=1 2>&1 || status=$?
fi
echo "zvm: fuzz targets, ${ZVM_FUZZ_SECONDS:-6} s each on their corpus (run beside the guests)" >&2
wait "$alongside" || status=$?
cat "$alongside_log" >&2
rm -f "$alongside_log"
exit "$status"
