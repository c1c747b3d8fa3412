#!/usr/bin/env bash
# Installs Debian packages only if that removes and downgrades nothing the machine has.
#
#   bash scripts/apt-install-safe.sh PKG...
#
# apt first simulates the install (apt-get -s); if the simulation would remove a package
# (e.g. a newer tool from backports that conflicts with Debian's version of a dependency)
# or install an older version of one, nothing is changed: the script lists those packages
# on stderr and exits 3. Otherwise the packages are installed (--no-install-recommends, and
# --no-remove as a second guard). Run as root. Exit codes: 0 installed (or nothing to do),
# 3 refused, anything else: apt failed.
#
#   bash scripts/apt-install-safe.sh --check < SIMULATION
#
# only reads an `apt-get -s` transcript and reports what it would remove or downgrade
# (exit 3 if anything), for tests of the check itself.
set -euo pipefail

# Reads an `apt-get -s install` transcript on stdin; prints one line per package it would
# remove ("remove PKG VERSION") or downgrade ("downgrade PKG OLD -> NEW").
harmful() {
  local line pkg old new
  while IFS= read -r line; do
    case "$line" in
      "Remv "*)
        read -r _ pkg old _ <<< "$line"
        echo "remove $pkg ${old//[\[\]]/}"
        ;;
      "Inst "*" ["*"] ("*)
        # Inst PKG [OLD] (NEW SUITE [ARCH])
        pkg=$(awk '{print $2}' <<< "$line")
        old=$(sed -n 's/^Inst [^ ]* \[\([^]]*\)\].*/\1/p' <<< "$line")
        new=$(sed -n 's/^Inst [^(]*(\([^ ]*\) .*/\1/p' <<< "$line")
        if [ -n "$old" ] && [ -n "$new" ] && dpkg --compare-versions "$new" lt "$old"; then
          echo "downgrade $pkg $old -> $new"
        fi
        ;;
    esac
  done
}

if [ "${1:-}" = --check ]; then
  found=$(harmful)
  [ -z "$found" ] && exit 0
  echo "$found"
  exit 3
fi

[ $# -gt 0 ] || { echo "usage: $0 PKG... | --check < SIMULATION" >&2; exit 2; }
if [ "$(id -u)" != 0 ]; then
  echo "zvm: installing $* needs root (run as root, or: sudo bash $0 $*)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
sim=$(apt-get -s install -y --no-install-recommends "$@" 2>&1) || {
  echo "$sim" >&2
  echo "zvm: apt cannot install $*" >&2
  exit 1
}
found=$(harmful <<< "$sim")
if [ -n "$found" ]; then
  {
    echo "zvm: not installing $*: apt would change packages this machine already has:"
    sed 's/^/zvm:   /' <<< "$found"
    echo "zvm: nothing was changed."
  } >&2
  exit 3
fi
echo "zvm: installing $*" >&2
apt-get install -y -qq --no-install-recommends --no-remove "$@" >&2
