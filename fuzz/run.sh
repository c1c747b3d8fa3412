#!/usr/bin/env bash
# Builds zvm's fuzz targets with libFuzzer on the stable toolchain (coverage through
# LLVM's sanitizer-coverage passes, which stable rustc accepts as -C options) and runs
# each on a copy of its seed corpus.
#
#   fuzz/run.sh                   every target for $ZVM_FUZZ_SECONDS (default 6) each
#   fuzz/run.sh TARGET [ARGS...]  one target with libFuzzer's ARGS (e.g. -runs=1000000)
#
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the run; each one found
# becomes a regression test next to the code it broke.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
target=x86_64-unknown-linux-gnu
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
# --target keeps the instrumentation off build scripts; the target directory is kept in
# zvm's cache (scripts/cached-build.sh), so a fresh clone rebuilds only the
# project's own crates.
build=$(RUSTFLAGS="$flags" bash "$here/../scripts/cached-build.sh" fuzz "$here/Cargo.toml" \
  --release --quiet --target "$target")
bin="$build/$target/release"
run() {
  local name=$1; shift
  local work log
  work=$(mktemp -d)
  log=$(mktemp)
  mkdir -p "$here/artifacts/$name"
  if [ -d "$here/corpus/$name" ]; then cp -r "$here/corpus/$name/." "$work/"; fi
  echo "zvm-fuzz: $name" >&2
  local status=0
  "$bin/$name" "$work" -artifact_prefix="$here/artifacts/$name/" -rss_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 "$@" > "$log" 2>&1 || status=$?
  grep -E "stat::number_of_executed_units|^Done" "$log" >&2 || true
  if [ "$status" != 0 ]; then
    tail -n 40 "$log" >&2
    echo "zvm-fuzz: $name FAILED (exit $status); its input is in $here/artifacts/$name/" >&2
  fi
  rm -rf "$work" "$log"
  return "$status"
}
if [ $# -gt 0 ]; then
  run "$@"
  exit
fi
for name in http_request api_body agent_frame snapshot_state oci_config flist_meta \
  virtio_blk virtio_net virtio_net_mq virtio_vsock virtio_mmio oci_layout oci_layer; do
  run "$name" -max_total_time="${ZVM_FUZZ_SECONDS:-6}"
done
