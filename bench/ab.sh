#!/usr/bin/env bash
# Two builds of spoolship taking turns on the same files: before and after a change, in one
# run. Each round ships, with each build in turn, one agent `--once --archive-dir` into a fresh
# collector with a new data directory: a 1 GiB file, then 10,000 files of 4 KiB (FILES, SIZE).
# Prints per run the wall time of the agent and the CPU seconds (user + system) of each side.
#
#   bash bench/ab.sh OLD_BIN_DIR NEW_BIN_DIR [ROUNDS]     (default 3 rounds; PAUSE=S between runs;
#                                                          BIG=0: the small files only)
#
# Nothing is deleted while the rounds run (the outputs are removed at the end): see
# after_deletions in bench/bench.sh for why. WORK (default /var/tmp/spoolship-ab) must be on a
# disk file system.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: bench/ab.sh OLD_BIN_DIR NEW_BIN_DIR [ROUNDS]" >&2; exit 64; }
old=$1 new=$2 rounds=${3:-3} pause=${PAUSE:-10}
files=${FILES:-10000} size=${SIZE:-4096}
work=${WORK:-/var/tmp/spoolship-ab}
rm -rf "$work"; mkdir -p "$work/src1" "$work/src2"
: > "$work/empty.toml"
big=${BIG:-1}
[ "$big" = 0 ] || head -c $((1 << 30)) /dev/urandom > "$work/src1/big.bin"
python3 - "$work/src2" "$files" "$size" <<'PY'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(os.urandom(size))
PY
n=0
# run LABEL BIN SRC: one shipment; the spool is SRC itself, and the archived files go back.
run() {
  local label=$1 bin=$2 src=$3 w
  n=$((n + 1)); w="$work/run$n"
  mkdir -p "$w"; sync; sleep "$pause"
  /usr/bin/time -f '%e %U %S' -o "$w/c.time" "$bin/spoolship-collector" --config "$work/empty.toml" --control-socket none \
    --listen 127.0.0.1:0 --data-dir "$w/data" --port-file "$w/port" --log-level warning 2>/dev/null &
  local cp=$!
  for _ in $(seq 1000); do [ -s "$w/port" ] && break; sleep 0.01; done
  /usr/bin/time -f '%e %U %S' -o "$w/a.time" "$bin/spoolship-agent" --config "$work/empty.toml" --control-socket none \
    --collector "127.0.0.1:$(cat "$w/port")" --agent-id ab --state-dir "$w/state" --spool "ab=$src" --once \
    --archive-dir "$w/archive" --log-level warning 2>/dev/null
  pkill -TERM -P "$cp" || true
  wait "$cp" || true
  find "$w/archive" -mindepth 2 -maxdepth 2 -type f -exec mv -t "$src/" {} +
  read -r aw au as < "$w/a.time"
  read -r _ cu cs < "$w/c.time"
  printf '%s\t%s\twall_s=%s\tagent_cpu_s=%.2f\tcollector_cpu_s=%.2f\n' "$label" "$(basename "$src")" "$aw" \
    "$(echo "$au + $as" | bc)" "$(echo "$cu + $cs" | bc)"
}
for r in $(seq "$rounds"); do
  srcs=("$work/src1" "$work/src2"); [ "$big" = 0 ] && srcs=("$work/src2")
  for src in "${srcs[@]}"; do
    run old "$old" "$src"
    run new "$new" "$src"
  done
done
rm -rf "$work"
