#!/usr/bin/env bash
# Builds zvm's guest kernel from Debian's linux-source package, offline.
#
# The kernel is configured by `make allnoconfig` plus the fragment zvm-guest.config,
# patched with zvm-pvm-workarounds.patch (test/dev kernel only, see README.md here),
# and cached under $ZVM_CACHE_DIR/kernel/<key>/ where <key> hashes the fragment, the
# patch, this script and the linux-source version. A cached kernel is reused.
# With ZVM_KERNEL_FLAVOUR=tiny it builds the second, minimal kernel instead: `make
# tinyconfig` plus zvm-tiny.config (no ACPI, no paravirtual guest support), which the
# CPU bring-up test boots.
#
# Output: the path of the uncompressed vmlinux, as the last line on stdout.
# Progress (a line with the step and the elapsed time while a build runs) and the build
# log go to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${ZVM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zvm}
say() { echo "zvm-kernel: $*" >&2; }

need_pkgs=()
tarball=$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$tarball" ] || need_pkgs+=(linux-source)
for tool in bc bison flex make gcc xz; do
  command -v "$tool" >/dev/null || need_pkgs+=("$tool")
done
[ -e /usr/include/libelf.h ] || need_pkgs+=(libelf-dev)
[ -e /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  pkgs=()
  for p in "${need_pkgs[@]}"; do
    case "$p" in gcc|make) pkgs+=(build-essential) ;; xz) pkgs+=(xz-utils) ;; *) pkgs+=("$p") ;; esac
  done
  if [ "$(id -u)" != 0 ]; then
    say "missing packages: ${pkgs[*]}; install them with: sudo apt-get install ${pkgs[*]}"
    exit 1
  fi
  say "installing ${pkgs[*]} from Debian's packages"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}") >&2
  tarball=$(ls /usr/src/linux-source-*.tar.xz | sort -V | tail -n1)
fi

src_version=$(dpkg-query -W -f='${Version}' "$(basename "$tarball" .tar.xz)" 2>/dev/null || basename "$tarball")
case "${ZVM_KERNEL_FLAVOUR:-guest}" in
  guest) base_config=allnoconfig; fragment="$here/zvm-guest.config" ;;
  tiny) base_config=tinyconfig; fragment="$here/zvm-tiny.config" ;;
  *) say "unknown ZVM_KERNEL_FLAVOUR '${ZVM_KERNEL_FLAVOUR}' (guest or tiny)"; exit 2 ;;
esac
key=$( (cat "$fragment" "$here/zvm-pvm-workarounds.patch" "$here/build.sh"; echo "$src_version") \
  | sha256sum | cut -c1-16)
out="$cache_root/kernel/$key"
if [ -s "$out/vmlinux" ]; then
  say "cached kernel $key (linux-source $src_version)"
  echo "$out/vmlinux"
  exit 0
fi

say "building guest kernel $key from $tarball ($src_version); this takes a few minutes"
start=$(date +%s)
mkdir -p "$cache_root/kernel"
work=$(mktemp -d "$cache_root/kernel/build.XXXXXX")

# A progress line on stderr while the build runs: the step and the time so far, redrawn in
# place every 2 s on a terminal, one line every 30 s otherwise (logs). The sleeps hold none
# of our descriptors, so a caller reading stderr to its end does not wait for them.
phase() { echo "$1" > "$work/phase"; }
progress() {
  local every=30 now el
  [ -t 2 ] && every=2
  while sleep "$every" </dev/null >/dev/null 2>&1; do
    now=$(date +%s); el=$(( now - start ))
    printf -v el '%dm%02ds' $(( el / 60 )) $(( el % 60 ))
    if [ -t 2 ]; then
      printf '\r\033[Kzvm-kernel: %s ... %s elapsed' "$(cat "$work/phase" 2>/dev/null)" "$el" >&2
    else
      echo "zvm-kernel: $(cat "$work/phase" 2>/dev/null) ... $el elapsed" >&2
    fi
  done
}
phase "unpacking linux-source"
progress &
progress_pid=$!
stop_progress() {
  [ -n "${progress_pid:-}" ] || return 0
  kill "$progress_pid" 2>/dev/null || true
  wait "$progress_pid" 2>/dev/null || true
  progress_pid=
  if [ -t 2 ]; then printf '\r\033[K' >&2; fi
}
trap 'stop_progress; rm -rf "$work"' EXIT
tar -C "$work" -xf "$tarball"
tree=$(ls -d "$work"/linux-source-*)
patch -d "$tree" -p1 --quiet < "$here/zvm-pvm-workarounds.patch"
phase "configuring"
if [ "$base_config" = tinyconfig ]; then
  # What `make tinyconfig` does, with the fragment beside tiny-base.config.
  cat "$tree/kernel/configs/tiny-base.config" "$fragment" > "$work/allconfig"
  make -C "$tree" -s KCONFIG_ALLCONFIG="$work/allconfig" allnoconfig >&2
  make -C "$tree" -s tiny.config >&2
else
  make -C "$tree" -s KCONFIG_ALLCONFIG="$fragment" allnoconfig >&2
fi

# Every option the fragment asks for must have survived Kconfig's dependency solving.
missing=0
while IFS= read -r line; do
  case "$line" in CONFIG_*=*) ;; *) continue ;; esac
  opt=${line%%=*}; val=${line#*=}
  if [ "$val" = n ]; then
    grep -qx "$opt=y" "$tree/.config" && { say "option $opt is still set"; missing=1; }
  else
    grep -qxF "$line" "$tree/.config" || { say "option $line was not applied"; missing=1; }
  fi
done < "$fragment"
[ "$missing" = 0 ] || { say "the config fragment does not apply to $src_version"; exit 1; }

phase "compiling (make -j$(nproc) vmlinux bzImage)"
make -C "$tree" -s -j"$(nproc)" vmlinux bzImage >&2
stop_progress
staged="$work/out"
mkdir -p "$staged"
cp "$tree/vmlinux" "$tree/arch/x86/boot/bzImage" "$tree/.config" "$staged/"
echo "$src_version" > "$staged/linux-source-version"
rm -rf "$out"
mv "$staged" "$out"
say "built in $(( $(date +%s) - start )) s"
echo "$out/vmlinux"
