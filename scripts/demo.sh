#!/usr/bin/env bash
# Builds spoolship and runs the demo: a collector and an agent on 127.0.0.1 ship blobs and a
# rotating log stream, shown as they arrive, then checked (spoolship demo --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
swift build -c release
exec "$(swift build -c release --show-bin-path)/spoolship" demo "$@"
