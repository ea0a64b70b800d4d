#!/usr/bin/env bash
# make soak: row 18 of RELIABILITY.md, outside the normal suite. Runs SoakTests for DURATION
# (seconds, or with a suffix: 90s, 20m, 1h; 20 minutes by default) and prints its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/duration.sh
seconds=$(seconds_of soak "${1:-20m}")
swift build --build-tests
SPOOLSHIP_SOAK_SECONDS="$seconds" SPOOLSHIP_BIN_DIR="$(swift build --show-bin-path)" \
  exec swift test --skip-build --disable-xctest --filter SoakTests
