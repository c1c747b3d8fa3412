#!/usr/bin/env bash
# Installs the Debian packages zvm's build, tests, demo and benchmarks need, if missing.
# Everything comes from Debian's archive; nothing else is downloaded.
set -euo pipefail
pkgs=(linux-source bc bison flex libelf-dev libssl-dev xz-utils cpio busybox-static curl
      e2fsprogs redis-server zstd runc qemu-system-x86 build-essential iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "zvm: missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "zvm: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
