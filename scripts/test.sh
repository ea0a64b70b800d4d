#!/usr/bin/env bash
# Builds spoolship and runs the whole test suite: unit tests, the tests that start the real
# daemons on 127.0.0.1, and the package under a real systemd in a container. The soak
# (SoakTests, row 18) is left to `make soak`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
swift build
# RealSystemdTests installs the package as users get it (the release build, packaged) in a
# Debian root booted with systemd-nspawn; the root is made once and cached.
start=$SECONDS
rm -rf .build/deb-test
deb=$(bash packaging/build-deb.sh .build/deb-test)
echo "test: release build and .deb in $((SECONDS - start)) s: $deb ($(du -h "$deb" | cut -f1))"
start=$SECONDS
root=$(bash scripts/container-root.sh)
echo "test: container root in $((SECONDS - start)) s: $root"
export SPOOLSHIP_DEB="$PWD/$deb" SPOOLSHIP_CONTAINER_ROOT="$root"
SPOOLSHIP_BIN_DIR="$(swift build --show-bin-path)" exec swift test --disable-xctest --skip SoakTests "$@"
