#!/usr/bin/env bash
# Checks that zvm and zvm-runc as built for shipping lack the host-process test double (the
# container backend that runs a container's process on the host without isolation, compiled
# in only with the cargo feature oci-runtime/test-backend, which only test builds turn on):
#
#   bash scripts/check-no-test-backend.sh [BINDIR]     # default: the checkout's target/release
#
# BINDIR holds zvm and zvm-runc from `cargo build [--release] -p zvm -p oci-runtime --bins`
# (features do not depend on the profile, so a debug build answers for the release one; a
# later `cargo test` rebuilds them there with the test double, so check before that). It
# passes when both refuse ZVM_RUNC_BACKEND=host-process and a state record naming that
# backend, leave no container behind, and hold none of the test double's messages.
set -euo pipefail
if [ $# -gt 0 ]; then
  bindir=$1
else
  bindir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/${CARGO_TARGET_DIR:-target}/release
  case "${CARGO_TARGET_DIR:-}" in /*) bindir=$CARGO_TARGET_DIR/release ;; esac
fi
fail() { echo "check-no-test-backend: $*" >&2; exit 1; }
for bin in zvm zvm-runc; do
  [ -x "$bindir/$bin" ] || fail "$bindir/$bin is missing (cargo build -p zvm -p oci-runtime --bins)"
done
tmp=$(mktemp -d)
cleanup() {
  # A binary that has the test double created c1 for real: remove it and its process.
  local root
  for root in "$tmp"/root-*; do
    if [ -d "$root/c1" ]; then
      "$bindir/zvm-runc" --root "$root" delete --force c1 >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
refusal='unknown backend "host-process"'

# A string only the test double's code holds: absent when it is compiled out.
for bin in zvm zvm-runc; do
  if grep -a -q -F 'zvm-runc host-process: execve failed' "$bindir/$bin"; then
    fail "$bindir/$bin contains the host-process test backend"
  fi
done

mkdir -p "$tmp/bundle/rootfs"
"$bindir/zvm-runc" spec --bundle "$tmp/bundle"
sed -i 's/"terminal": true/"terminal": false/' "$tmp/bundle/config.json"

# expect_refusal NAME CMD...: CMD must exit 1 and name the missing test double.
expect_refusal() {
  local name=$1 code=0
  shift
  "$@" >"$tmp/out" 2>"$tmp/err" || code=$?
  [ "$code" -eq 1 ] || fail "$name: exit code $code, not 1 (stderr: $(cat "$tmp/err"))"
  grep -q -F "$refusal" "$tmp/err" || fail "$name: no refusal of host-process: $(cat "$tmp/err")"
  grep -q -F 'not built into this binary' "$tmp/err" || fail "$name: unclear refusal: $(cat "$tmp/err")"
}

# A new container with the test double selected by the environment.
for runc in "zvm-runc" "zvm oci"; do
  read -r bin sub <<<"$runc"
  root="$tmp/root-${bin}"
  # shellcheck disable=SC2086 # $sub is empty or one word
  ZVM_RUNC_BACKEND=host-process expect_refusal "$runc create" \
    "$bindir/$bin" $sub --root "$root" create --bundle "$tmp/bundle" c1
  [ ! -e "$root/c1" ] || fail "$runc create left $root/c1 behind"
done

# A record naming the test double (as a test build would have left it) is refused too.
root="$tmp/root-record"
mkdir -p -m 700 "$root/c2"
cp "$tmp/bundle/config.json" "$root/c2/config.json"
: >"$root/c2/lock"
cat >"$root/c2/state.json" <<EOF
{"id":"c2","status":"stopped","pid":null,"pidStartTime":null,"bundle":"$tmp/bundle",
 "rootfs":"$tmp/bundle/rootfs","created":"2026-01-01T00:00:00Z","annotations":{},
 "backend":"host-process","exitStatus":null,"ownerUid":0}
EOF
for cmd in state start delete; do
  expect_refusal "zvm-runc $cmd (record)" "$bindir/zvm-runc" --root "$root" "$cmd" c2
done
echo "check-no-test-backend: $bindir/zvm and $bindir/zvm-runc lack the host-process backend" >&2
