#!/usr/bin/env bash
# Boots zvm's demo guest: installs what is missing, builds zvm, the guest kernel (first
# time only) and a small initramfs, then runs the VM with its console on this terminal.
# The guest prints a marker from userspace, runs a system-call self-check, and powers off.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
cargo build --release --quiet -p zvm
kernel=$(./target/release/zvm kernel path | tail -n1)
init=$(bash guest/build.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/root/{dev,proc,sys,tmp,bin}
cp "$init" "$work/root/init"
./target/release/zvm initramfs --uncompressed "$work/root" -o "$work/initramfs.cpio"
echo "zvm: booting $kernel (on a KVM PVM host this takes a minute or two; on VMX/SVM well under a second)" >&2
./target/release/zvm run --kernel "$kernel" --initrd "$work/initramfs.cpio" --cpus 2 --memory 256M \
  --console-timestamps --cmdline "console=ttyS0 reboot=k panic=1 zvm.mode=syscalls" --verbose
