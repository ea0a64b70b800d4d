#!/usr/bin/env bash
# Builds spoolship_<version>_<arch>.deb with dpkg-deb: one binary, /usr/bin/spoolship (release
# build with the Swift runtime linked in statically, so that the package needs no Swift on the
# host; stripped), which runs as the agent or the collector when started under the names of its
# two symlinks, /usr/bin/spoolship-agent and /usr/bin/spoolship-collector; the systemd units,
# sysusers.d, tmpfiles.d and modules-load.d (kernel TLS) entries, the example configs as conffiles, and the docs. Depends:
# comes from dpkg-shlibdeps.
#
#   bash packaging/build-deb.sh [OUT_DIR]                  (default: .build/deb)
#   bash packaging/build-deb.sh --bin-dir DIR [OUT_DIR]    package a spoolship built elsewhere
#                                                          (the tests use the debug build)
# DEB_COMPRESSION (default zstd) and DEB_COMPRESSION_LEVEL (default 6) are passed to
# dpkg-deb -Z and -z; docs/OPERATIONS.md, "Installing", has the measurements behind them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=""
if [ "${1:-}" = "--bin-dir" ]; then bin=$2; shift 2; fi
out=${1:-.build/deb}
if [ -z "$bin" ]; then
  source scripts/setup.sh
  swift build -c release --static-swift-stdlib >&2  # stdout is the package's path alone
  bin=$(swift build -c release --static-swift-stdlib --show-bin-path)
  strict=1
else
  strict=0
fi
arch=$(dpkg --print-architecture)
version="0.1.0~git$(git log -1 --format=%cd --date=format:%Y%m%d).$(git rev-parse --short HEAD)"
stage=$(mktemp -d)
chmod 0755 "$stage"  # the package's ./ (mktemp makes it 0700)
trap 'rm -rf "$stage"' EXIT

# One copy of the runtime, Foundation and ICU's data (about 60 MB stripped) instead of three.
install -D -m 0755 "$bin/spoolship" "$stage/usr/bin/spoolship"
strip "$stage/usr/bin/spoolship"
ln -s spoolship "$stage/usr/bin/spoolship-agent"
ln -s spoolship "$stage/usr/bin/spoolship-collector"
for u in packaging/systemd/*; do install -D -m 0644 "$u" "$stage/lib/systemd/system/$(basename "$u")"; done
install -D -m 0644 packaging/sysusers.d/spoolship.conf "$stage/usr/lib/sysusers.d/spoolship.conf"
install -D -m 0644 packaging/tmpfiles.d/spoolship.conf "$stage/usr/lib/tmpfiles.d/spoolship.conf"
install -D -m 0644 packaging/modules-load.d/spoolship.conf "$stage/usr/lib/modules-load.d/spoolship.conf"
install -D -m 0644 etc/agent.toml "$stage/etc/spoolship/agent.toml"
install -D -m 0644 etc/collector.toml "$stage/etc/spoolship/collector.toml"
install -D -m 0644 README.md "$stage/usr/share/doc/spoolship/README.md"
for d in docs/*.md; do install -D -m 0644 "$d" "$stage/usr/share/doc/spoolship/$(basename "$d")"; done

# Depends: dpkg-shlibdeps, from the binaries' shared libraries (with minimum versions). It
# wants a debian/control to read; a minimal one in a scratch dir does.
scratch=$(mktemp -d)
mkdir -p "$scratch/debian"
printf 'Source: spoolship\n\nPackage: spoolship\nArchitecture: any\n' > "$scratch/debian/control"
extra=()
# The debug binaries load the Swift runtime from the toolchain, which no package provides.
[ "$strict" = 1 ] || extra=(--ignore-missing-info)
if ! shlibs=$(cd "$scratch" && dpkg-shlibdeps -O "${extra[@]}" "$stage/usr/bin/spoolship" 2>"$scratch/err"); then
  cat "$scratch/err" >&2
  echo "build-deb: dpkg-shlibdeps failed (a library that no Debian package provides?)" >&2
  exit 1
fi
depends=$(printf '%s\n' "$shlibs" | sed -n 's/^shlibs:Depends=//p')
rm -rf "$scratch"

mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: spoolship
Version: $version
Architecture: $arch
Maintainer: spoolship developers <spoolship@localhost>
Depends: $depends
Section: admin
Priority: optional
Description: log and blob shipper: zero-copy, and nothing acknowledged before it is durable
 spoolship-agent watches spool directories, rotates log files into sealed segments and
 ships them with sendfile(2); spoolship-collector splices them into files, makes them
 durable and acknowledges them. spoolship is the operator's tool.
CONTROL
printf '/etc/spoolship/agent.toml\n/etc/spoolship/collector.toml\n' > "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  systemd-sysusers /usr/lib/sysusers.d/spoolship.conf || true
  systemd-tmpfiles --create /usr/lib/tmpfiles.d/spoolship.conf || true
  # Kernel TLS now, as modules-load.d does at each boot (a kernel without it: nothing to do).
  modprobe tls 2>/dev/null || true
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
SCRIPT
cat > "$stage/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop spoolship-agent.service spoolship-collector.service spoolship-collector.socket || true
fi
SCRIPT
cat > "$stage/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
SCRIPT
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/spoolship_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-zstd}" -z"${DEB_COMPRESSION_LEVEL:-6}" --build "$stage" "$deb" >/dev/null
echo "$deb"
