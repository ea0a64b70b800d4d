#!/usr/bin/env bash
# Quick benchmark (issue 2 figures): a 1 GiB file shipped with `spoolship-agent --once`, durable
# at the collector, against the bare C sendfile->splice and read/write transfers of
# ../shared/bench/limit.c with fdatasync, in the same run on the same file; and 10,000 files of
# 4 KiB as files per second. Release build. Prints medians of ROUNDS rounds, and ratios.
#
#   bash bench/quick.sh [ROUNDS]        (default 3)
#
# WORK (default /var/tmp/spoolship-bench) must be on a real disk file system: tmpfs ignores fsync.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
work=${WORK:-/var/tmp/spoolship-bench}
limit_c=${LIMIT_C:-../shared/bench/limit.c}
source scripts/setup.sh
command -v bc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bc >/dev/null
swift build -c release >/dev/null
bin=$(swift build -c release --show-bin-path)
rm -rf "$work"; mkdir -p "$work"
cc -O2 -o "$work/limit" "$limit_c"
head -c $((1 << 30)) /dev/urandom > "$work/src.bin"

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

start_collector() {
  rm -f "$work/port"
  "$bin/spoolship-collector" --control-socket none --listen 127.0.0.1:0 --data-dir "$work/data" --port-file "$work/port" --log-level warning &
  collector=$!
  for _ in $(seq 500); do [ -s "$work/port" ] && break; sleep 0.01; done
  port=$(cat "$work/port")
}
stop_collector() { kill "$collector"; wait "$collector" || true; }

ship() { # ship the spool with --once; prints wall seconds. Extra arguments go to the agent.
  local t0 t1
  rm -rf "$work/state"
  t0=$(now)
  "$bin/spoolship-agent" --control-socket none --collector "127.0.0.1:$port" --agent-id bench --state-dir "$work/state" \
      --spool "bench=$work/spool" --once --log-level warning "$@"
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

: > "$work/zc"; : > "$work/rw"; : > "$work/ss"; : > "$work/small"
for r in $(seq "$rounds"); do
  rm -f "$work/dst"; sync
  "$work/limit" zc "$work/src.bin" "$work/dst" sync | sed -E 's/.*wall_s=([0-9.]+).*/\1/' >> "$work/zc"
  rm -f "$work/dst"; sync
  "$work/limit" rw "$work/src.bin" "$work/dst" sync | sed -E 's/.*wall_s=([0-9.]+).*/\1/' >> "$work/rw"
  rm -f "$work/dst"
  # Everything from the previous round is deleted before the sync, so that its freed blocks
  # are not discarded during the timed transfer. The agent archives its copy (a rename)
  # instead of deleting it: the C baseline does not delete its source either.
  rm -rf "$work/spool" "$work/data" "$work/archive"; mkdir -p "$work/spool"; cp "$work/src.bin" "$work/spool/big.bin"; sync
  start_collector
  ship --archive-dir "$work/archive" >> "$work/ss"
  cmp "$work/src.bin" "$work/data/bench/bench/big.bin"
  stop_collector

  rm -rf "$work/spool" "$work/data" "$work/archive"; mkdir -p "$work/spool"
  python3 - "$work/spool" <<'PY'
import os, sys
d = sys.argv[1]
for i in range(10000):
    with open(os.path.join(d, ".f%05d" % i), "wb") as f:
        f.write(os.urandom(4096))
    os.rename(os.path.join(d, ".f%05d" % i), os.path.join(d, "f%05d" % i))
PY
  sync
  start_collector
  ship >> "$work/small"
  [ "$(ls "$work/data/bench/bench" | wc -l)" = 10000 ] || { echo "small files: not all arrived" >&2; exit 1; }
  [ -z "$(ls "$work/spool")" ] || { echo "small files: spool not empty" >&2; exit 1; }
  stop_collector
done

echo "rounds (s): zc $(tr '\n' ' ' < "$work/zc")| rw $(tr '\n' ' ' < "$work/rw")| spoolship $(tr '\n' ' ' < "$work/ss")| small $(tr '\n' ' ' < "$work/small")"
zc=$(median < "$work/zc"); rw=$(median < "$work/rw"); ss=$(median < "$work/ss"); small=$(median < "$work/small")
mb() { echo "scale=0; 1073741824 / $1 / 1000000" | bc -l; }
printf '\n%-52s %8s %8s\n' "1 GiB, durable at the receiver (median of $rounds)" "wall s" "MB/s"
printf '%-52s %8.3f %8s\n' "limit.c zc sync  (sendfile -> splice, fdatasync)" "$zc" "$(mb "$zc")"
printf '%-52s %8.3f %8s\n' "limit.c rw sync  (read/write 64 KiB, fdatasync)" "$rw" "$(mb "$rw")"
printf '%-52s %8.3f %8s\n' "spoolship-agent --once --archive-dir" "$ss" "$(mb "$ss")"
printf 'ratio spoolship / zc sync (throughput): %.2f\n' "$(echo "$zc / $ss" | bc -l)"
printf 'ratio spoolship / rw sync (throughput): %.2f\n' "$(echo "$rw / $ss" | bc -l)"
printf '\n10,000 files of 4 KiB with --once: %.3f s median = %.0f files/s\n' "$small" "$(echo "10000 / $small" | bc -l)"
rm -rf "$work"
