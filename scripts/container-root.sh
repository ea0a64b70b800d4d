#!/usr/bin/env bash
# Prints the path of a Debian 12 minbase root with systemd, made with debootstrap, for the test
# that boots it with systemd-nspawn (Tests/SpoolshipIntegrationTests/RealSystemdTests.swift).
# Made once and cached: under $SPOOLSHIP_TEST_CACHE (default /var/cache/spoolship-tests), in a
# directory named by a hash of this script, so that a change to the package list below makes a
# new one. The root is built beside its final place and renamed into it, so an interrupted run
# never leaves half a root to be found later; the test boots it with --volatile=overlay, so it
# is never written to.
#
# The mirror is the one this host's apt uses for its Debian release (from
# /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list); SPOOLSHIP_DEBIAN_MIRROR overrides it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

suite=bookworm
# What the package depends on (dpkg -i installs it offline), and systemd to boot. Not procps:
# the units must work without /bin/kill, which a minimal install does not have.
include=systemd,libsystemd0,libc6,libgcc-s1,libstdc++6,zlib1g,libisal2

cache=${SPOOLSHIP_TEST_CACHE:-/var/cache/spoolship-tests}
key=$(sha256sum "$here/container-root.sh" | cut -c1-12)
root="$cache/$suite-minbase-$key"
if [ -x "$root/usr/lib/systemd/systemd" ] && [ -f "$root/.complete" ]; then
  echo "$root"
  exit 0
fi

mirror() {
  if [ -n "${SPOOLSHIP_DEBIAN_MIRROR:-}" ]; then echo "$SPOOLSHIP_DEBIAN_MIRROR"; return; fi
  local f
  # deb822 stanzas: the URIs of the one whose Suites name the release itself.
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      /^[[:space:]]*$/ { if (uris != "" && found) { print uris; exit } uris = ""; found = 0; next }
      tolower($1) == "uris:" { uris = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) found = 1 }
      END { if (uris != "" && found) print uris }' "$f" | head -n1
  done | head -n1 | grep . && return
  # One-line style: deb [options] URI SUITE COMPONENTS...
  if [ -f /etc/apt/sources.list ]; then
    sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\)[[:space:]]\+'"$suite"'[[:space:]].*/\2/p' /etc/apt/sources.list | head -n1 | grep . && return
  fi
  echo "container-root: no apt source for Debian $suite found in /etc/apt; set SPOOLSHIP_DEBIAN_MIRROR" >&2
  return 1
}

command -v debootstrap >/dev/null || { echo "container-root: debootstrap is missing (scripts/setup.sh installs it)" >&2; exit 1; }
url=$(mirror)
mkdir -p "$cache"
work=$(mktemp -d "$cache/.making-XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
if ! debootstrap --variant=minbase --include="$include" "$suite" "$work/root" "$url" >"$work/log" 2>&1; then
  tail -n 20 "$work/log" >&2
  echo "container-root: debootstrap of $suite from $url failed" >&2
  exit 1
fi
# Boot quietly and quickly: no getty on the console (the test talks to systemd through nsenter),
# and a machine id, which systemd would otherwise have to make at each boot.
ln -sf /dev/null "$work/root/etc/systemd/system/console-getty.service"
systemd-machine-id-setup --root="$work/root" >/dev/null 2>&1 || true
touch "$work/root/.complete"
# Roots made by earlier versions of this script go.
for old in "$cache/$suite-minbase-"*; do [ "$old" = "$root" ] || rm -rf "$old"; done
rm -rf "$root"
mv "$work/root" "$root"
echo "container-root: made $root in $(( $(date +%s) - start )) s" >&2
echo "$root"
