#!/usr/bin/env bash
# Builds spoolship and runs the whole test suite: unit tests and the tests that start the real
# daemons on 127.0.0.1. The soak (SoakTests, row 18) is left to `make soak`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
swift build
SPOOLSHIP_BIN_DIR="$(swift build --show-bin-path)" exec swift test --disable-xctest --skip SoakTests "$@"
