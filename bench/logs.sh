#!/usr/bin/env bash
# Log spool benchmark (issue 3 figures): a real producer (Tests/LogProducer) appends 100-byte
# numbered, timestamped records to a log file as fast as it can; the agent rotates it every
# second (--rotate-age 1) and ships each segment; a watcher notes when each segment is renamed
# into place at the collector (its commit). Release build. Prints:
#   - the producer's rate (records and MB per second),
#   - the CPU share of the agent and the collector while the producer ran (CPU seconds / wall),
#   - how far behind the agent was when the producer stopped, and how long it took to drain,
#   - the latency from a record written to its segment committed: median, p99, max,
# after checking that the stream at the collector holds every record once, in order.
#
#   bash bench/logs.sh [SECONDS] [BATCH]    (defaults 10 and 1: one write(2) per record)
#
# MODE=follow: the same producer never reopens its file, and the agent follows it
# (--follow-logs, cut every second by age) instead of rotating it: the figures of follow mode
# against those of rotate-and-reopen, the same producer, the same method.
#
# WORK (default /var/tmp/spoolship-logs-bench) must be on a real disk file system. BIN: the
# binaries to use instead of a fresh release build. The last line, "RESULT key=value ...", is
# for bench/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
batch=${2:-1}
mode=${MODE:-rotate}
work=${WORK:-/var/tmp/spoolship-logs-bench}
source scripts/setup.sh
python3 -c "import numpy" 2>/dev/null || pip install -q numpy
if [ -n "${BIN:-}" ]; then bin=$BIN; else
  swift build -c release >/dev/null
  bin=$(swift build -c release --show-bin-path)
fi
rm -rf "$work"; mkdir -p "$work/spool"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$bin/spoolship-collector" --control-socket none --listen 127.0.0.1:0 --data-dir "$work/data" --port-file "$work/port" --log-level warning &
collector=$!; pids+=("$collector")
for _ in $(seq 500); do [ -s "$work/port" ] && break; sleep 0.01; done
if [ "$mode" = follow ]; then spool_flag="--follow-logs"; reopen=never; else spool_flag="--logs"; reopen=path; fi
"$bin/spoolship-agent" --control-socket none --collector "127.0.0.1:$(cat "$work/port")" --agent-id bench --state-dir "$work/state" \
    "$spool_flag" "app=$work/spool" --rotate-age 1 --rotate-size 1G --log-level warning &
agent=$!; pids+=("$agent")
mkdir -p "$work/data/bench/app"  # so that the watcher sees the very first commit
"$bin/log-producer" watch "$work/data/bench/app" > "$work/commits.txt" &
pids+=("$!")
for _ in $(seq 500); do [ -s "$work/commits.txt" ] && break; sleep 0.01; done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
a0=$(ticks "$agent"); c0=$(ticks "$collector"); t0=$(date +%s.%N)
"$bin/log-producer" write --file "$work/spool/api.log" --seconds "$seconds" --batch "$batch" --reopen "$reopen" > "$work/producer.txt"
t1=$(date +%s.%N); a1=$(ticks "$agent"); c1=$(ticks "$collector")
committed() { cat "$work/data/bench/app/"api.log.* 2>/dev/null | wc -c; }
if [ "$mode" = follow ]; then
  # Drained: the collector holds every byte of the file (the agent never renames it).
  written=$(stat -c %s "$work/spool/api.log")
  behind=$((written - $(committed)))
  for _ in $(seq 12000); do [ "$(committed)" -ge "$written" ] && break; sleep 0.01; done
else
  behind=$( (cat "$work/spool/api.log" "$work/spool/.spoolship/"* 2>/dev/null || true) | wc -c)
  # Drained: the active file rotated away and every rotated file committed and removed.
  for _ in $(seq 12000); do
    if [ ! -s "$work/spool/api.log" ] && [ -z "$(ls -A "$work/spool/.spoolship")" ]; then break; fi
    sleep 0.01
  done
fi
t2=$(date +%s.%N)
a2=$(ticks "$agent"); c2=$(ticks "$collector")
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
ahwm=$(hwm "$agent"); chwm=$(hwm "$collector")
sleep 0.2  # let the watcher print the last commit
hz=$(getconf CLK_TCK)
python3 - "$work" "$t0" "$t1" "$t2" "$a0" "$a1" "$c0" "$c1" "$hz" "$behind" "$batch" "$a2" "$c2" "$ahwm" "$chwm" "$mode" <<'PY'
import os, sys, numpy as np
work = sys.argv[1]
mode = sys.argv[16]
t0, t1, t2 = map(float, sys.argv[2:5])
a0, a1, c0, c1, hz, behind, batch, a2, c2, ahwm, chwm = map(int, sys.argv[5:16])
prod = open(f"{work}/producer.txt").read().split("\n")
last = [l for l in prod if l.startswith("records ")][-1].split()
records, nbytes, secs = int(last[1]), int(last[3]), float(last[5])
commits = {}
for line in open(f"{work}/commits.txt"):
    p = line.split()
    if len(p) == 2 and p[1].startswith("api.log."):
        commits[p[1]] = int(p[0])
d = f"{work}/data/bench/app"
names = sorted(n for n in os.listdir(d) if n.startswith("api.log."))
lat = []
expect = 0
for n in names:
    raw = np.fromfile(f"{d}/{n}", dtype=np.uint8)
    assert raw.size % 100 == 0, f"{n}: torn record"
    recs = raw.reshape(-1, 100)
    digits = recs[:, 0:16].astype(np.int64) - 48
    seq = (digits * (10 ** np.arange(15, -1, -1, dtype=np.int64))).sum(axis=1)
    assert np.array_equal(seq, np.arange(expect, expect + len(seq))), f"{n}: gap or repeat after record {expect}"
    expect += len(seq)
    ts_digits = recs[:, 17:36].astype(np.int64) - 48
    ts = (ts_digits * (10 ** np.arange(18, -1, -1, dtype=np.int64))).sum(axis=1)
    lat.append((commits[n] - ts) / 1e9)
assert expect == records, f"collector holds {expect} of {records} records"
lat = np.concatenate(lat)
wall = t1 - t0
print(f"producer: {records} records of 100 bytes in {secs:.2f} s, one write(2) per {batch} record(s): "
      f"{records/secs:,.0f} records/s, {nbytes/secs/1e6:.1f} MB/s")
print(f"segments: {len(names)} ({'ranges of the followed file cut' if mode == 'follow' else 'rotation'} every second), every record once and in order")
print(f"CPU share while the producer ran ({wall:.2f} s): agent {(a1-a0)/hz/wall*100:.1f}%, collector {(c1-c0)/hz/wall*100:.1f}% of one core")
print(f"behind when the producer stopped: {behind/1e6:.1f} MB; drained {t2-t1:.2f} s later")
print(f"record written -> segment committed: median {np.median(lat):.3f} s, p99 {np.percentile(lat, 99):.3f} s, max {lat.max():.3f} s")
# For bench/bench.sh: CPU from the producer's start to the drain, over the bytes shipped.
print(f"RESULT mode={mode} seconds={t2 - t0:.3f} bytes={nbytes} records_per_s={records/secs:.0f} agent_cpu_s={(a2-a0)/hz:.3f} "
      f"collector_cpu_s={(c2-c0)/hz:.3f} agent_hwm_kb={ahwm} collector_hwm_kb={chwm} "
      f"latency_median_s={np.median(lat):.3f} latency_p99_s={np.percentile(lat, 99):.3f}")
PY
