#!/usr/bin/env bash
# make soak: row 18 of RELIABILITY.md, outside the normal suite. Runs SoakTests for DURATION
# (seconds, or with a suffix: 90s, 20m, 1h; 20 minutes by default) and prints its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
duration="${1:-20m}"
case "$duration" in
  *h) seconds=$(( ${duration%h} * 3600 ));;
  *m) seconds=$(( ${duration%m} * 60 ));;
  *s) seconds=${duration%s};;
  *) seconds=$duration;;
esac
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || { echo "soak: DURATION must be seconds or 20m/1h, got '$duration'" >&2; exit 64; }
swift build --build-tests
SPOOLSHIP_SOAK_SECONDS="$seconds" SPOOLSHIP_BIN_DIR="$(swift build --show-bin-path)" \
  exec swift test --skip-build --disable-xctest --filter SoakTests
