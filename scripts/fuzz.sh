#!/usr/bin/env bash
# make fuzz: builds the fuzz target (Tests/Fuzz) with libFuzzer and runs it for a bounded time,
# starting from Tests/FuzzCorpus. Afterwards, inputs that reached new code are merged into
# Tests/FuzzCorpus (commit them: the suite replays that directory), and a crash or a hang is
# kept in .fuzz/crashes with the command that reproduces it. Usage: scripts/fuzz.sh [DURATION]
# with DURATION in seconds or with a suffix (90s, 10m, 1h); 60 s by default.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/duration.sh
seconds=$(seconds_of fuzz "${1:-60}")

# The whole build is instrumented; it lives apart from the normal build. lld, because gold
# fails on the entry point SwiftPM gives the program.
swift build -c release --scratch-path .build-fuzz --product spoolship-fuzz \
  -Xswiftc -sanitize=fuzzer -Xswiftc -DSPOOLSHIP_LIBFUZZER -Xswiftc -use-ld=lld
fuzzer="$(swift build -c release --scratch-path .build-fuzz --show-bin-path)/spoolship-fuzz"

work=.fuzz
rm -rf "$work/corpus"
mkdir -p "$work/corpus" "$work/crashes"
cp Tests/FuzzCorpus/* "$work/corpus/"
before=$(ls "$work/crashes" | wc -l)
echo "fuzz: ${seconds}s from $(ls Tests/FuzzCorpus | wc -l) corpus inputs"
set +e
# Swift's own crash backtracer would take the signal before libFuzzer could save the input.
export SWIFT_BACKTRACE=enable=no
# -timeout: an input that takes over 10 s is a hang. -rss_limit_mb: memory is bounded too.
"$fuzzer" "$work/corpus" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$work/crashes/" -print_final_stats=1 2>&1 | tee "$work/last-run.log" | grep -E "^#[0-9]+ *(INITED|DONE|pulse)|stat::|ERROR|==[0-9]+==|Done" 
status=${PIPESTATUS[0]}
set -e
"$fuzzer" -merge=1 Tests/FuzzCorpus "$work/corpus" >"$work/merge.log" 2>&1 || true
runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/last-run.log" | grep -o '[0-9]*$' || echo 0)
crashes=$(( $(ls "$work/crashes" | wc -l) - before ))
echo "fuzz: $runs executions in ${seconds}s; $crashes new crash or hang inputs; corpus now $(ls Tests/FuzzCorpus | wc -l) inputs"
if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
  echo "fuzz: FAILED; reproduce with: $fuzzer $work/crashes/<file> (full log: $work/last-run.log)" >&2
  exit 1
fi
