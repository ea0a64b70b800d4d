#!/usr/bin/env bash
# Installs what spoolship needs to build and test on Debian (run as root), then checks Swift.
set -euo pipefail
# systemd: systemd-analyze, systemd-socket-activate and systemd-sysusers for the tests;
# gzip: zcat; util-linux: unshare and mount; dpkg-dev: dpkg-shlibdeps for packaging/build-deb.sh;
# make: make fuzz, make soak; python3 and python3-prometheus-client: the metrics tests read /metrics with
# prometheus_client's own parser (run as /usr/bin/python3, whatever python3 is first on the PATH).
# debootstrap and systemd-container (systemd-nspawn): the package under a real systemd in a
# Debian root (scripts/container-root.sh, RealSystemdTests). libssl-dev: TLS (OpenSSL 3.0, with
# kernel TLS); openssl: the tests make their certificates with it; tcpdump: the TLS tests capture
# loopback traffic to check that no payload crosses in clear. logrotate: the follow-mode tests run
# Debian's own logrotate beside the agent.
packages=(libsystemd-dev zlib1g-dev libisal-dev libssl-dev openssl tcpdump pkg-config strace e2fsprogs systemd gzip util-linux dpkg-dev make python3 python3-prometheus-client
          debootstrap systemd-container logrotate)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v swift >/dev/null 2>&1; then
  for d in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
    [ -x "$d/swift" ] && export PATH="$d:$PATH" && break
  done
fi
command -v swift >/dev/null 2>&1 || {
  echo "setup: no Swift toolchain found: install Swift 6 (https://www.swift.org/install/linux/) and put it on PATH" >&2
  exit 1
}
