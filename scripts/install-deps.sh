#!/usr/bin/env bash
# Installs the Debian packages zvm's build, tests and demo need, if missing, through
# scripts/apt-install-safe.sh: nothing the machine has is removed or downgraded (if apt
# would, nothing is installed and the conflict is named). Everything comes from Debian's
# archive (podman with conmon, and containerd with its runc v2 shim and ctr: the engines
# tests/oci_engines.rs drives zvm-runc with). The benchmarks' QEMU peer is not here:
# benches/setup.sh sets it up. Then virtiofsd (zvm run --fs) is built once from crates.io
# into zvm's cache (scripts/install-virtiofsd.sh).
set -euo pipefail
pkgs=(linux-source bc bison flex libelf-dev libssl-dev xz-utils cpio busybox-static curl
      e2fsprogs redis-server zstd runc build-essential iproute2
      libseccomp-dev libcap-ng-dev pkg-config
      podman conmon containerd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "zvm: missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  bash "$(dirname "${BASH_SOURCE[0]}")/apt-install-safe.sh" "${missing[@]}"
fi
bash "$(dirname "${BASH_SOURCE[0]}")/install-virtiofsd.sh" >/dev/null
