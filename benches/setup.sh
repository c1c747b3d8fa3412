#!/usr/bin/env bash
# Sets up the benchmarks' peer, QEMU `-M microvm` from Debian's qemu-system-x86, and prints
# the path of its qemu-system-x86_64 as the last line on stdout (zvm-bench --qemu PATH).
# Progress goes to stderr. Only the benchmarks need it: scripts/test.sh and scripts/demo.sh
# never install QEMU.
#
# It never removes or downgrades a package the machine has:
# 1. a qemu-system-x86_64 on PATH is used as it is;
# 2. else qemu-system-x86 is installed through scripts/apt-install-safe.sh, which simulates
#    the install first and refuses if apt would remove or downgrade anything;
# 3. if it refuses (seen here: installing Debian 12's qemu-system-x86 7.2 removed the
#    machine's qemu-utils 10.0 from bookworm-backports, and qemu-img with it), Debian's
#    qemu-system-x86, qemu-system-common, qemu-system-data, seabios and ipxe-qemu are
#    unpacked (dpkg-deb -x, no dpkg state touched) into
#    ${ZVM_CACHE_DIR:-~/.cache/zvm}/qemu-peer/<version>/, and only their library
#    dependencies are installed, checked the same way. QEMU finds its firmware relative to
#    its executable, so that copy runs as the package would.
# `--unpack` goes to step 3 at once (a private copy even where the package would install).
# Needs root for apt (the unpacked copy, once made, does not).
set -euo pipefail
unpack_only=false
case "${1:-}" in
  --unpack) unpack_only=true ;;
  "") ;;
  *) echo "usage: bash $0 [--unpack]" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
safe_install="$here/../scripts/apt-install-safe.sh"
cache_root=${ZVM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/zvm}
say() { echo "zvm-bench setup: $*" >&2; }

# 1. Already there.
if ! $unpack_only && qemu=$(command -v qemu-system-x86_64); then
  say "using $qemu ($("$qemu" --version | head -n1))"
  echo "$qemu"
  exit 0
fi
for bin in "$cache_root"/qemu-peer/*/usr/bin/qemu-system-x86_64; do
  [ -e "$bin" ] || continue
  if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
    say "using the unpacked peer $bin ($("$bin" --version | head -n1))"
    echo "$bin"
    exit 0
  fi
done

if [ "$(id -u)" != 0 ]; then
  say "QEMU is not installed; run this as root (sudo bash $0) to set up the peer"
  exit 1
fi

# 2. The package, if that changes nothing the machine has.
rc=3
$unpack_only || { rc=0; bash "$safe_install" qemu-system-x86 || rc=$?; }
if [ "$rc" = 0 ]; then
  qemu=$(command -v qemu-system-x86_64)
  say "installed $qemu ($("$qemu" --version | head -n1))"
  echo "$qemu"
  exit 0
fi
[ "$rc" = 3 ] || exit "$rc"

# 3. An unpacked copy beside the machine's own packages.
unpacked=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
version=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
[ -n "$version" ] && [ "$version" != "(none)" ] || { say "apt has no qemu-system-x86"; exit 1; }
dest="$cache_root/qemu-peer/${version//[:~+]/_}"
if $unpack_only; then
  say "unpacking Debian's ${unpacked[*]} ($version) into $dest"
else
  say "installing qemu-system-x86 $version would change this machine's packages (above);"
  say "unpacking Debian's ${unpacked[*]} into $dest instead"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q -o APT::Sandbox::User=root "${unpacked[@]}" >&2)
deps=()
for deb in "$work"/*.deb; do
  # The first alternative of each dependency, without its version; the unpacked ones out.
  while IFS= read -r dep; do
    dep=${dep%%|*}; dep=${dep%%(*}; dep=${dep// /}
    [ -n "$dep" ] || continue
    case " ${unpacked[*]} " in *" $dep "*) continue ;; esac
    dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q "install ok installed" || deps+=("$dep")
  done < <(dpkg-deb -f "$deb" Depends | tr ',' '\n')
done
if [ ${#deps[@]} -gt 0 ]; then
  mapfile -t deps < <(printf '%s\n' "${deps[@]}" | sort -u)
  bash "$safe_install" "${deps[@]}" || {
    say "the peer's libraries cannot be installed without changing this machine's packages either;"
    say "no QEMU peer can be set up here from Debian's packages (zvm-bench --qemu PATH takes any other build)"
    exit 1
  }
fi
rm -rf "$dest.partial"
mkdir -p "$dest.partial"
for deb in "$work"/*.deb; do
  dpkg-deb -x "$deb" "$dest.partial"
done
rm -rf "$dest"
mv "$dest.partial" "$dest"
bin="$dest/usr/bin/qemu-system-x86_64"
"$bin" --version >&2
# Its firmware (qboot for microvm) must come from the copy.
"$bin" -L help 2>/dev/null | grep -qxF "$dest/usr/bin/../share/qemu" || {
  say "$bin does not look for its firmware in $dest/usr/share/qemu"
  exit 1
}
say "the QEMU peer is $bin"
echo "$bin"
