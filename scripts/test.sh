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
swift build --build-tests
# A run that executes fewer tests than the build holds (none at all has been seen right after
# a build, reported as a pass) must not pass: the whole suite's count is checked against the
# tests `swift test list` names (SoakTests aside). With arguments (a filter), it is not.
expected=$(swift test list --skip-build | grep -vc '\.SoakTests/' || true)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
SPOOLSHIP_BIN_DIR="$(swift build --show-bin-path)" swift test --skip-build --disable-xctest --skip SoakTests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -eq 0 ] && [ $# -eq 0 ]; then
  ran=$(sed -n 's/.*Test run with \([0-9][0-9]*\) tests\{0,1\} .*/\1/p' "$log" | tail -1)
  if [ "${ran:-0}" -ne "$expected" ]; then
    echo "test: the run executed ${ran:-no} tests, but the build holds $expected (swift test list, SoakTests aside): not a pass" >&2
    exit 1
  fi
  echo "test: $ran tests ran, as many as the build holds"
fi
exit "$status"
