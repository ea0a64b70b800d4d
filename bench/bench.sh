#!/usr/bin/env bash
# make bench: spoolship against the bare syscalls (bench/baseline.c, bench/smallfiles.c,
# bench/crc.c) and an rsync daemon, in one run, on the same files, every transfer durable at the
# receiver where the row says so; and spoolship with TLS against a bare OpenSSL transfer
# (bench/tls_baseline.c) and rsync over ssh.
#
#   bash bench/bench.sh [--quick] [--only 1,2,3,4,5,6] [--rounds N] [--systems LIST | --tls] [--pause S]
#
# Systems (--systems, comma-separated; default all of them): c (bench/baseline.c; in workload
# 1 also bench/crc.c, in workloads 2 and 6 bench/smallfiles.c), rsync (an rsync daemon),
# spoolship; and with TLS: c-tls (bench/tls_baseline.c: TLS 1.3 with
# AES-128-GCM, and the same with AES-256-GCM and with the sender writing from a mapping),
# rsync-ssh (rsync over ssh into a private sshd on 127.0.0.1), spoolship-tls (mutual TLS
# with certificates made here by openssl). --tls is --systems c-tls,rsync-ssh,spoolship-tls.
# Workloads 3, 4 and 5 run only with spoolship. spoolship-tls is skipped, with a message, when the
# agent has no --tls-ca-file. --pause S sleeps S seconds before each transfer of workload 1 (the
# disk of the development machines writes a GiB or two at a burst rate, then slows down).
#
# Workloads (--quick: small sizes, to check that the benchmark runs and its output parses):
#   1  one 1 GiB file (quick: 64 MiB). Rows: C zc|rw [+ fdatasync] (bench/baseline.c); CRC-32
#      alone (bench/crc.c: pread 256 KiB + ISA-L, the CRC that rule R5 needs, its CPU put on
#      both sides); the TLS rows; rsync [--fsync]; spoolship and spoolship-tls
#   2  10,000 files of 4 KiB (quick: 300). Rows: C + syncfs and C, no sync (bench/smallfiles.c:
#      one process reads and writes every file, then one syncfs or none; its CPU is put on the
#      receiving side, 0 on the sending side); the TLS rows; rsync --fsync and rsync; spoolship
#      (archiving, as the others keep their sources) and spoolship, delete (no --archive-dir:
#      the agent deletes each file once acknowledged, from a fresh copy of the files made
#      before the run). Every row writes into a new directory. The notes give each side's CPU
#      seconds per 1,000 files.
#   3  200 agents at once into one collector, 50 files of 1 MiB each (quick: 4 agents x 5):
#      the agents run as daemons, all connected before the files appear in their spools
#   4  a log producer at full speed, rotated every second, for 10 s (quick: 3 s)
#   5  the same producer never reopening its file, which the agent follows (ranges cut every
#      second; issue 18), for as long as workload 4
#   6  100,000 files of 1 KiB (quick: 1,000): the rows of workload 2
# Workloads 1, 2 and 6 run N rounds (default 3), the systems taking turns within each round; the
# table shows each system's median round by wall time. Prints a table (wall time, throughput
# (files/s in workloads 2 and 6), CPU seconds per GiB on each side, peak RSS of each side) and
# the ratios the targets of docs/PERFORMANCE.md are stated in; writes bench/out/results.tsv,
# bench/out/results.md and bench/out/results.png.
#
# WORK (default /var/tmp/spoolship-bench) must be on a disk file system: tmpfs ignores fsync.
# BIN: a directory with the spoolship binaries to use instead of a fresh release build.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
only="1,2,3,4,5,6"
rounds=3
systems="c,rsync,spoolship,c-tls,rsync-ssh,spoolship-tls"
pause=0
usage="usage: bench/bench.sh [--quick] [--only 1,2,3,4,5,6] [--rounds N] [--systems c,rsync,spoolship,c-tls,rsync-ssh,spoolship-tls | --tls] [--pause SECONDS]"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1;;
    --only) only="$2"; shift;;
    --rounds) rounds="$2"; shift;;
    --systems) systems="$2"; shift;;
    --tls) systems="c-tls,rsync-ssh,spoolship-tls";;
    --pause) pause="$2"; shift;;
    *) echo "$usage" >&2; exit 64;;
  esac
  shift
done
for s in ${systems//,/ }; do
  case "$s" in c|rsync|spoolship|c-tls|rsync-ssh|spoolship-tls) ;; *) echo "bench: no system '$s'; $usage" >&2; exit 64;; esac
done
runs() { [[ ",$only," == *",$1,"* ]]; }
has() { [[ ",$systems," == *",$1,"* ]]; }
# Workloads 3, 4 and 5 are spoolship's alone (1, 2 and 6 are not).
has spoolship || only=$(echo ",$only," | sed 's/,3,/,/; s/,4,/,/; s/,5,/,/; s/^,//; s/,$//')
breathe() { [ "$pause" = 0 ] || sleep "$pause"; }

work=${WORK:-/var/tmp/spoolship-bench}
out=${OUT:-bench/out}
source scripts/setup.sh
need=()
# libisal-dev: bench/crc.c.
deps=(rsync time gnuplot-nox bc libisal-dev)
# openssl: the certificates; libssl-dev: tls_baseline.c; openssh-server: the sshd of rsync-ssh,
# run here on its own port and configuration (the package's own service plays no part).
if has c-tls || has spoolship-tls || has rsync-ssh; then deps+=(openssl libssl-dev); fi
if has rsync-ssh; then deps+=(openssh-server openssh-client); fi
for p in "${deps[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# numpy: for workload 4 (bench/logs.sh).
if runs 4; then python3 -c "import numpy" 2>/dev/null || pip install -q numpy; fi
if [ -z "${BIN:-}" ]; then
  swift build -c release >/dev/null
  BIN=$(swift build -c release --show-bin-path)
fi
rm -rf "$work"; mkdir -p "$work" "$out"
cc -O2 -Wall -o "$work/baseline" bench/baseline.c
cc -O2 -Wall -o "$work/smallfiles" bench/smallfiles.c
cc -O2 -Wall -o "$work/crc" bench/crc.c -lisal
if has spoolship-tls && ! "$BIN/spoolship-agent" --help 2>&1 | grep -q -- --tls-ca-file; then
  echo "bench: spoolship-tls skipped: this build's agent has no --tls-ca-file"
  systems=$(echo ",$systems," | sed 's/,spoolship-tls,/,/; s/^,//; s/,$//')
fi
# The certificates of the TLS rows: an EC P-256 CA, the collector's (SAN IP:127.0.0.1), the
# agent's (SAN DNS:bench, its --agent-id). The C transfer uses the same ones.
pki="$work/pki"
make_certs() {
  local ossl=/usr/bin/openssl who san
  mkdir -p "$pki"
  $ossl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$pki/ca.key" -out "$pki/ca.crt" \
    -days 2 -subj "/CN=spoolship bench CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  for who in collector agent; do
    if [ "$who" = collector ]; then san="IP:127.0.0.1"; else san="DNS:bench"; fi
    $ossl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$pki/$who.key" -out "$pki/$who.csr" \
      -subj "/CN=spoolship bench $who" 2>/dev/null
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
      "$san" > "$pki/$who.ext"
    $ossl x509 -req -in "$pki/$who.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 -sha256 \
      -extfile "$pki/$who.ext" -out "$pki/$who.crt" 2>/dev/null
  done
}
if has c-tls || has spoolship-tls; then make_certs; fi
if has c-tls; then cc -O2 -Wall -o "$work/tls_baseline" bench/tls_baseline.c -lssl -lcrypto; fi
tls_keys=(--ca "$pki/ca.crt" --server-cert "$pki/collector.crt" --server-key "$pki/collector.key"
          --client-cert "$pki/agent.crt" --client-key "$pki/agent.key" --client-name bench)

if [ "$quick" = 1 ]; then big_mib=64; small_n=300; tiny_n=1000; agents=4; per_agent=5; log_s=3
else big_mib=1024; small_n=10000; tiny_n=100000; agents=200; per_agent=50; log_s=10; fi

results="$out/results.tsv"
printf 'workload\tsystem\twall_s\trate\tunit\tsend_cpu_s_per_gib\trecv_cpu_s_per_gib\tsend_rss_mib\trecv_rss_mib\textra\n' > "$results"
pids=()
# pids are /usr/bin/time's, which does not pass signals on: stop its child first.
cleanup() { for p in "${pids[@]}"; do pkill -TERM -P "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
forget() { local keep=() p; for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; pids=("${keep[@]}"); }
trap cleanup EXIT

now() { date +%s.%N; }
calc() { echo "scale=6; $*" | bc -l; }
# TIMEFMT for /usr/bin/time: wall, user+sys CPU, peak RSS in KiB.
timefmt='%e %U %S %M'
# row WORKLOAD SYSTEM WALL BYTES FILES SEND_CPU RECV_CPU SEND_RSS_KB RECV_RSS_KB [EXTRA]
# Workloads 2 and 6 (small files): the rate in files/s, and the notes start with each side's CPU
# seconds per 1,000 files.
row() {
  local gib rate unit extra=${10:-}
  gib=$(calc "$4 / 1073741824")
  case "$1" in
    2|6)
      rate=$(calc "$5 / $3"); unit="files/s"
      extra=$(printf 'cpu_per_1000_files send=%.3f recv=%.3f' "$(calc "$6 * 1000 / $5")" "$(calc "$7 * 1000 / $5")")${extra:+ $extra};;
    *) rate=$(calc "$4 / $3 / 1000000"); unit="MB/s";;
  esac
  printf '%s\t%s\t%.3f\t%.1f\t%s\t%.3f\t%.3f\t%.1f\t%.1f\t%s\n' "$1" "$2" "$3" "$rate" "$unit" \
    "$(calc "$6 / $gib")" "$(calc "$7 / $gib")" "$(calc "$8 / 1024")" "$(calc "$9 / 1024")" "$extra" >> "$results"
}
# A /usr/bin/time output file: its last line (a first line says so if the command failed).
cpu_of() { tail -1 "$1" | awk '{print $2 + $3}'; }
rss_of() { tail -1 "$1" | awk '{print $4}'; }
wall_of() { tail -1 "$1" | awk '{print $1}'; }
fresh() { rm -rf "$@"; sync; }  # the previous round's files go before the sync, not during a run

# The collector, under /usr/bin/time so that its CPU and peak RSS are known when it stops.
start_collector() {
  rm -f "$work/port"
  /usr/bin/time -f "$timefmt" -o "$work/collector.time" \
    "$BIN/spoolship-collector" --config "$work/empty.toml" --control-socket none --listen 127.0.0.1:0 --data-dir "$data" \
      --port-file "$work/port" --log-level warning --max-connections 1000 ${collector_tls[@]+"${collector_tls[@]}"} &
  collector_time=$!; pids+=("$collector_time")
  for _ in $(seq 1000); do [ -s "$work/port" ] && break; sleep 0.01; done
  port=$(cat "$work/port")
}
stop_collector() { pkill -TERM -P "$collector_time"; wait "$collector_time" || true; forget "$collector_time"; }
: > "$work/empty.toml"

# Where each system writes. With keep=1 (workloads 2 and 6) every transfer writes into a new
# directory and the outputs are deleted only after the workload: a file system that has just
# deleted thousands of inodes spends its time skipping them when it allocates new ones (ext4's
# recently_deleted), which would make every row pay for the previous one's clean-up.
data="$work/data"; rdst="$work/rsync-dst"; keep=0; n=0
next_output() { # next_output VAR BASE
  n=$((n + 1))
  if [ "$keep" = 1 ]; then printf -v "$1" '%s-%d' "$2" "$n"; else printf -v "$1" '%s' "$2"; fresh "$2"; fi
}

# An rsync daemon on 127.0.0.1, likewise under /usr/bin/time (its per-connection children are
# counted in its CPU, and in its peak RSS as the largest of them).
rsync_port=$((20000 + RANDOM % 20000))
start_rsyncd() {
  printf 'use chroot = no\n[bench]\npath = %s\nread only = no\nuid = root\ngid = root\n' "$rdst" > "$work/rsyncd.conf"
  mkdir -p "$rdst"
  /usr/bin/time -f "$timefmt" -o "$work/rsyncd.time" rsync --daemon --no-detach --config="$work/rsyncd.conf" --port="$rsync_port" &
  rsyncd_time=$!; pids+=("$rsyncd_time")
  for _ in $(seq 500); do rsync "rsync://127.0.0.1:$rsync_port/" >/dev/null 2>&1 && break; sleep 0.01; done
}
stop_rsyncd() { pkill -TERM -P "$rsyncd_time"; wait "$rsyncd_time" || true; forget "$rsyncd_time"; }

# rsync_row WORKLOAD LABEL SRC BYTES FILES [--fsync]
rsync_row() {
  local w=$1 label=$2 src=$3 bytes=$4 files=$5; shift 5
  next_output rdst "$work/rsync-dst"
  sync
  start_rsyncd
  /usr/bin/time -f "$timefmt" -o "$work/rsync.time" rsync -a "$@" "$src/" "rsync://127.0.0.1:$rsync_port/bench/"
  stop_rsyncd
  [ "$(find "$rdst" -type f | wc -l)" = "$files" ] || { echo "bench: rsync did not copy every file" >&2; exit 1; }
  row "$w" "$label" "$(wall_of "$work/rsync.time")" "$bytes" "$files" "$(cpu_of "$work/rsync.time")" \
    "$(cpu_of "$work/rsyncd.time")" "$(rss_of "$work/rsync.time")" "$(rss_of "$work/rsyncd.time")"
}

# rsync over ssh, as rsync is encrypted today: a private sshd on 127.0.0.1 (its own host key,
# one authorized key, its own port; /usr/bin/time counts its per-connection children, which it
# reaps before it stops) and `rsync -a [--fsync] -e "ssh ..."` with ssh's default cipher.
sshd_dir="$work/ssh"
setup_sshd() {
  mkdir -p "$sshd_dir" /run/sshd; chmod 700 "$sshd_dir"
  ssh-keygen -q -t ed25519 -N '' -f "$sshd_dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$sshd_dir/client_key"
  cp "$sshd_dir/client_key.pub" "$sshd_dir/authorized_keys"
  ssh_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf '%s\n' "ListenAddress 127.0.0.1" "Port $ssh_port" "HostKey $sshd_dir/host_key" "AuthorizedKeysFile $sshd_dir/authorized_keys" \
    "PidFile $sshd_dir/sshd.pid" "PermitRootLogin prohibit-password" "PasswordAuthentication no" "KbdInteractiveAuthentication no" \
    "UsePAM no" "StrictModes no" > "$sshd_dir/sshd_config"
  ssh_cmd="ssh -F /dev/null -p $ssh_port -i $sshd_dir/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
}
start_sshd() {
  : > "$sshd_dir/sshd.log"
  /usr/bin/time -f "$timefmt" -o "$work/sshd.time" /usr/sbin/sshd -D -e -f "$sshd_dir/sshd_config" 2> "$sshd_dir/sshd.log" &
  sshd_time=$!; pids+=("$sshd_time")
  for _ in $(seq 500); do grep -q "Server listening on 127.0.0.1 port $ssh_port" "$sshd_dir/sshd.log" && break; sleep 0.01; done
  grep -q "Server listening" "$sshd_dir/sshd.log" || { echo "bench: sshd did not start:" >&2; cat "$sshd_dir/sshd.log" >&2; exit 1; }
  sshd_main=$(pgrep -P "$sshd_time")
}
stop_sshd() {
  # The connection's own sshd is done once the main one has reaped it (and counted its CPU).
  for _ in $(seq 500); do pgrep -P "$sshd_main" >/dev/null || break; sleep 0.01; done
  pkill -TERM -P "$sshd_time"; wait "$sshd_time" || true; forget "$sshd_time"
}
if has rsync-ssh; then setup_sshd; fi

# rsync_ssh_row WORKLOAD LABEL SRC BYTES FILES [--fsync]
rsync_ssh_row() {
  local w=$1 label=$2 src=$3 bytes=$4 files=$5; shift 5
  next_output rdst "$work/rsync-dst"
  mkdir -p "$rdst"; sync
  start_sshd
  /usr/bin/time -f "$timefmt" -o "$work/rsync.time" rsync -a "$@" -e "$ssh_cmd" "$src/" "root@127.0.0.1:$rdst/"
  stop_sshd
  [ "$(find "$rdst" -type f | wc -l)" = "$files" ] || { echo "bench: rsync over ssh did not copy every file" >&2; exit 1; }
  row "$w" "$label" "$(wall_of "$work/rsync.time")" "$bytes" "$files" "$(cpu_of "$work/rsync.time")" \
    "$(cpu_of "$work/sshd.time")" "$(rss_of "$work/rsync.time")" "$(rss_of "$work/sshd.time")" "ssh default cipher"
}

# c_small_row WORKLOAD LABEL SRC BYTES FILES syncfs|none: bench/smallfiles.c, one process that
# reads every file of SRC and writes it into a new directory, then makes them all durable with
# one syncfs (or leaves them in the page cache). Its CPU and RSS are put on the receiving side,
# 0 on the sending side. The syncs before and after keep other rows' writes out of its syncfs,
# and its unsynced files out of the next row's time.
c_small_row() {
  local w=$1 label=$2 src=$3 bytes=$4 files=$5 mode=$6 dst line note
  next_output dst "$work/c-dst"
  sync
  line=$("$work/smallfiles" "$mode" "$src" "$dst")
  sync
  get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  [ "$(get files)" = "$files" ] && [ "$(get bytes)" = "$bytes" ] || { echo "bench: smallfiles: $line" >&2; exit 1; }
  if [ "$mode" = syncfs ]; then note="one process: read + write + one syncfs"; else note="one process: read + write, no sync"; fi
  row "$w" "$label" "$(get wall_s)" "$bytes" "$files" 0 "$(get cpu_s)" 0 "$(get maxrss_kb)" "$note"
}

# c_tls_row WORKLOAD LABEL SRC BYTES FILES [tls_baseline options]: the bare TLS transfer, every
# file fdatasync'ed at the receiver.
c_tls_row() {
  local w=$1 label=$2 src=$3 bytes=$4 files=$5 dst line; shift 5
  # Workload 1: the file to a file; workloads 2 and 6: the directory's files into a new directory.
  if [ "$w" = 1 ]; then src="$src/big.bin"; dst="$work/dst.bin"; fresh "$dst"; else next_output dst "$work/tls-dst"; fi
  line=$("$work/tls_baseline" "${tls_keys[@]}" "$@" "$src" "$dst" sync)
  get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  [ "$(get files)" = "$files" ] && [ "$(get bytes)" = "$bytes" ] || { echo "bench: tls_baseline: $line" >&2; exit 1; }
  if [ "$w" = 1 ]; then cmp "$src" "$dst"; fi
  row "$w" "$label" "$(get wall_s)" "$bytes" "$files" "$(get sender_cpu_s)" "$(get receiver_cpu_s)" "$(get sender_maxrss_kb)" \
    "$(get receiver_maxrss_kb)" "$(get version) $(get cipher) send=$(get mode)"
}

# spoolship_once SPOOL FILES [AGENT OPTIONS]: one agent --once, with a fresh state, into a fresh
# collector (started with collector_tls's options) writing into the next data directory; checks
# that the collector committed FILES files.
spoolship_once() {
  local spool=$1 files=$2; shift 2
  next_output data "$work/data"
  fresh "$work/state" "$work/archive"
  start_collector
  /usr/bin/time -f "$timefmt" -o "$work/agent.time" \
    "$BIN/spoolship-agent" --config "$work/empty.toml" --control-socket none --collector "127.0.0.1:$port" --agent-id bench \
      --state-dir "$work/state" --spool "bench=$spool" --once --log-level warning "$@"
  stop_collector
  [ "$(ls "$data/bench/bench" | wc -l)" = "$files" ] || { echo "bench: spoolship did not commit every file" >&2; exit 1; }
}

# spoolship_row WORKLOAD LABEL SPOOL BYTES FILES [AGENT OPTIONS]: one agent --once, archiving its
# files (as the baselines do not delete their sources either), which go back into SPOOL after.
spoolship_row() {
  local w=$1 label=$2 spool=$3 bytes=$4 files=$5; shift 5
  spoolship_once "$spool" "$files" --archive-dir "$work/archive" "$@"
  row "$w" "$label" "$(wall_of "$work/agent.time")" "$bytes" "$files" "$(cpu_of "$work/agent.time")" \
    "$(cpu_of "$work/collector.time")" "$(rss_of "$work/agent.time")" "$(rss_of "$work/collector.time")"
  # Put the files back for the next system (find: 100,000 names are more than one mv's arguments).
  find "$work/archive" -mindepth 2 -maxdepth 2 -type f -exec mv -t "$spool/" {} +
  [ "$(ls "$spool" | wc -l)" = "$files" ] || { echo "bench: the archived files did not go back into $spool" >&2; exit 1; }
  if [ "$w" = 1 ]; then cmp "$spool/big.bin" "$data/bench/bench/big.bin"; fi
}

# after_deletions: waits until files deleted just before no longer slow the creation of new
# ones. ext4 without a journal (the development machines' disk) skips, when it allocates an
# inode, those deleted within the last 60 s, or 360 s while their inode table block is still
# dirty (RECENTCY_MIN and RECENTCY_DIRTY in fs/ext4/ialloc.c), reading their inode blocks: the
# rows after a mass deletion would pay for it (seen: the C copy of 100,000 files took 28 s
# right after the delete row, 7.4 s otherwise). So: sync (the blocks are clean), then 65 s.
# Not with --quick.
after_deletions() {
  [ "$quick" = 1 ] && return
  sync
  sleep 65
}

# spoolship_delete_row WORKLOAD LABEL SRC BYTES FILES: one agent --once without --archive-dir,
# which deletes each file once the collector has acknowledged it, as spoolship runs by default.
# Its spool is a fresh copy of SRC in a new directory, made and synced before the run; after
# it the spool must be empty.
spoolship_delete_row() {
  local w=$1 label=$2 src=$3 bytes=$4 files=$5 spool
  next_output spool "$work/spool"
  cp -a "$src" "$spool"; sync
  spoolship_once "$spool" "$files"
  [ -z "$(ls -A "$spool")" ] || { echo "bench: spoolship, delete: the spool $spool is not empty" >&2; exit 1; }
  row "$w" "$label" "$(wall_of "$work/agent.time")" "$bytes" "$files" "$(cpu_of "$work/agent.time")" \
    "$(cpu_of "$work/collector.time")" "$(rss_of "$work/agent.time")" "$(rss_of "$work/collector.time")" \
    "the agent deletes each file once acknowledged"
}
# spoolship-tls: the same, both daemons with the TLS options (the agent's name for the
# collector is its address, 127.0.0.1, which the collector's certificate carries).
collector_tls=()
spoolship_tls_row() {
  collector_tls=(--tls-ca-file "$pki/ca.crt" --tls-cert-file "$pki/collector.crt" --tls-key-file "$pki/collector.key")
  spoolship_row "$@" --tls-ca-file "$pki/ca.crt" --tls-cert-file "$pki/agent.crt" --tls-key-file "$pki/agent.key"
  collector_tls=()
}

# ---- Workload 1: one big file ----
if runs 1; then
  echo "bench: workload 1, one file of $big_mib MiB"
  mkdir -p "$work/w1"
  head -c $((big_mib << 20)) /dev/urandom > "$work/w1/big.bin"
  bytes=$((big_mib << 20))
  for round in $(seq "$rounds"); do
  if has c; then
  for mode in zc rw; do
    for s in sync nosync; do
      fresh "$work/dst.bin"; breathe
      line=$("$work/baseline" "$mode" "$work/w1/big.bin" "$work/dst.bin" $([ $s = sync ] && echo sync))
      get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
      label="C $mode"; [ $s = nosync ] || label="$label + fdatasync"
      row 1 "$label" "$(get wall_s)" "$bytes" 1 "$(get sender_cpu_s)" "$(get receiver_cpu_s)" "$(get sender_maxrss_kb)" "$(get receiver_maxrss_kb)"
    done
  done
  # The CRC that rule R5 needs, measured alone (no transfer, no disk write): its CPU is put on
  # both sides, as both the agent and the collector compute it. Checked against zlib once.
  line=$(/usr/bin/time -f "$timefmt" -o "$work/crc.time" "$work/crc" "$work/w1/big.bin")
  get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  [ "$(get bytes)" = "$bytes" ] || { echo "bench: crc: $line" >&2; exit 1; }
  if [ "$round" = 1 ]; then
    want=$(python3 -c 'import sys, zlib
c = 0
with open(sys.argv[1], "rb") as f:
    while b := f.read(1 << 20): c = zlib.crc32(b, c)
print("%08x" % c)' "$work/w1/big.bin")
    [ "$(get crc)" = "$want" ] || { echo "bench: crc: $(get crc), zlib says $want" >&2; exit 1; }
  fi
  row 1 "CRC-32 alone (pread + ISA-L)" "$(get wall_s)" "$bytes" 1 "$(get cpu_s)" "$(get cpu_s)" "$(rss_of "$work/crc.time")" \
    "$(rss_of "$work/crc.time")" "crc=$(get crc), one process, its CPU on both sides"
  fi
  if has c-tls; then
    breathe; c_tls_row 1 "c-tls" "$work/w1" "$bytes" 1 --cipher TLS_AES_128_GCM_SHA256
    breathe; c_tls_row 1 "c-tls AES-256" "$work/w1" "$bytes" 1 --cipher TLS_AES_256_GCM_SHA384
    breathe; c_tls_row 1 "c-tls mmap" "$work/w1" "$bytes" 1 --cipher TLS_AES_128_GCM_SHA256 --send mmap
  fi
  if has rsync; then
    breathe; rsync_row 1 "rsync --fsync" "$work/w1" "$bytes" 1 --fsync
    breathe; rsync_row 1 "rsync" "$work/w1" "$bytes" 1
  fi
  if has rsync-ssh; then breathe; rsync_ssh_row 1 "rsync-ssh --fsync" "$work/w1" "$bytes" 1 --fsync; fi
  if has spoolship; then breathe; spoolship_row 1 "spoolship" "$work/w1" "$bytes" 1; fi
  if has spoolship-tls; then breathe; spoolship_tls_row 1 "spoolship-tls" "$work/w1" "$bytes" 1; fi
  done
  rm -rf "$work/w1" "$work/dst.bin" "$work/rsync-dst" "$work/data"
fi

# ---- Workloads 2 and 6: many small files ----
# small_files WORKLOAD FILES SIZE: FILES files of SIZE bytes, every system writing into a new
# directory each time (keep=1); all those directories go after the workload.
small_files() {
  local w=$1 files=$2 size=$3 src="$work/w$1" bytes
  mkdir -p "$src"
  python3 - "$src" "$files" "$size" <<'PY'
import os, sys
d, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(os.urandom(size))
PY
  bytes=$((files * size))
  keep=1
  for round in $(seq "$rounds"); do
    if has c; then
      c_small_row "$w" "C + syncfs" "$src" "$bytes" "$files" syncfs
      c_small_row "$w" "C, no sync" "$src" "$bytes" "$files" none
    fi
    if has c-tls; then c_tls_row "$w" "c-tls" "$src" "$bytes" "$files" --cipher TLS_AES_128_GCM_SHA256; fi
    if has rsync; then
      rsync_row "$w" "rsync --fsync" "$src" "$bytes" "$files" --fsync
      rsync_row "$w" "rsync" "$src" "$bytes" "$files"
    fi
    if has rsync-ssh; then rsync_ssh_row "$w" "rsync-ssh --fsync" "$src" "$bytes" "$files" --fsync; fi
    if has spoolship; then
      spoolship_row "$w" "spoolship" "$src" "$bytes" "$files"
      spoolship_delete_row "$w" "spoolship, delete" "$src" "$bytes" "$files"
      after_deletions
    fi
    if has spoolship-tls; then spoolship_tls_row "$w" "spoolship-tls" "$src" "$bytes" "$files"; fi
  done
  keep=0
  rm -rf "$src" "$work"/rsync-dst* "$work"/data* "$work"/tls-dst* "$work"/c-dst* "$work"/spool-*; sync
  after_deletions
}
if runs 2; then
  echo "bench: workload 2, $small_n files of 4 KiB"
  small_files 2 "$small_n" 4096
fi

# ---- Workload 3: many agents at once ----
if runs 3; then
  echo "bench: workload 3, $agents agents x $per_agent files of 1 MiB"
  mkdir -p "$work/w3src"
  for i in $(seq "$per_agent"); do head -c $((1 << 20)) /dev/urandom > "$work/w3src/f$i"; done
  data="$work/data"
  fresh "$data" "$work/w3" "$work/w3state" "$work/w3archive"
  # The disk's own ceiling for as many bytes: a workload of 10 GB runs past what the disk
  # takes at its burst rate (workload 1's 1 GiB may not), so the ratio to workload 1 alone
  # would measure the disk. dd writes the same bytes into one file and syncs it once.
  sync
  /usr/bin/time -f "$timefmt" -o "$work/dd.time" \
    dd if=/dev/zero of="$work/w3dd" bs=1M count=$((agents * per_agent)) conv=fdatasync status=none
  rm -f "$work/w3dd"; sync
  row 3 "disk: dd + fdatasync" "$(wall_of "$work/dd.time")" $((agents * per_agent << 20)) 1 "$(cpu_of "$work/dd.time")" 0 \
    "$(rss_of "$work/dd.time")" 0 "the same bytes into one file, one sync"
  start_collector
  # The agents run as daemons, started first with empty spools, and all connected before any
  # file appears: their start-up (a few seconds for 200 processes on 2 cores) is not part of
  # what is measured. Then the files appear in every spool at once, one round of hard links
  # (one source set of 50 MiB, page-cached) after the other, and each agent's completion is
  # when the last of its files is acknowledged and archived, from that common start. (A file
  # appears as producers should make it appear: linked under a hidden name, then renamed.)
  # 200 agents on one host need more inotify instances than the default 128 per user.
  need_instances=$((agents * 2 + 64))
  if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt "$need_instances" ]; then
    echo "bench: raising fs.inotify.max_user_instances to $need_instances (each agent watches its spool)"
    echo "$need_instances" > /proc/sys/fs/inotify/max_user_instances
  fi
  apids=()
  for a in $(seq "$agents"); do
    mkdir -p "$work/w3/a$a"
    /usr/bin/time -f "$timefmt" -o "$work/w3/a$a.time" \
      "$BIN/spoolship-agent" --config "$work/empty.toml" --control-socket none --collector "127.0.0.1:$port" --agent-id "a$a" \
        --state-dir "$work/w3state/a$a" --spool "bench=$work/w3/a$a" --archive-dir "$work/w3archive/a$a" \
        --log-level warning &
    apids+=("$!"); pids+=("$!")
  done
  python3 - "$work" "$agents" "$per_agent" "$port" > "$work/w3.times" <<'PY'
import os, sys, time
work, agents, per, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def connected():  # established TCP connections to the collector's port, from /proc/net/tcp
    n = 0
    for line in open("/proc/net/tcp").readlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port and f[3] == "01":
            n += 1
    return n
deadline = time.monotonic() + 300
while connected() < agents:
    if time.monotonic() > deadline:
        sys.exit(f"only {connected()} of {agents} agents connected")
    time.sleep(0.05)
t0 = time.monotonic()
for i in range(1, per + 1):
    for a in range(1, agents + 1):
        # As producers should: under a hidden name, then renamed into place.
        os.link(f"{work}/w3src/f{i}", f"{work}/w3/a{a}/.f{i}")
        os.rename(f"{work}/w3/a{a}/.f{i}", f"{work}/w3/a{a}/f{i}")
done = {}
while len(done) < agents:
    if time.monotonic() > deadline + 600:
        sys.exit(f"only {len(done)} of {agents} agents finished")
    for a in range(1, agents + 1):
        if a not in done:
            d = f"{work}/w3archive/a{a}/bench"
            if os.path.isdir(d) and len(os.listdir(d)) == per:
                done[a] = time.monotonic() - t0
    time.sleep(0.05)
for a in sorted(done):
    print(f"{a} {done[a]:.3f}")
PY
  for p in "${apids[@]}"; do pkill -TERM -P "$p" || true; done
  failed=0
  for p in "${apids[@]}"; do wait "$p" || failed=1; forget "$p"; done
  collector_hwm=$(awk '/VmHWM/ {print $2}' "/proc/$(pgrep -P "$collector_time")/status")
  stop_collector
  [ "$failed" = 0 ] || { echo "bench: an agent of workload 3 did not stop cleanly" >&2; exit 1; }
  python3 - "$work" "$agents" "$per_agent" > "$work/w3.check" <<'PY'
import hashlib, os, sys
work, agents, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
want = {f"f{i}": hashlib.sha256(open(f"{work}/w3src/f{i}", "rb").read()).digest() for i in range(1, per + 1)}
bad = [f"a{a}/{n}" for a in range(1, agents + 1) for n, h in want.items()
       if not os.path.exists(p := f"{work}/data/a{a}/bench/{n}") or hashlib.sha256(open(p, "rb").read()).digest() != h]
print(len(bad))
PY
  [ "$(cat "$work/w3.check")" = 0 ] || { echo "bench: workload 3: $(cat "$work/w3.check") files not identical" >&2; exit 1; }
  fastest=$(awk '{print $2}' "$work/w3.times" | sort -g | head -1)
  slowest=$(awk '{print $2}' "$work/w3.times" | sort -g | tail -1)
  agent_cpu=$(for a in $(seq "$agents"); do cpu_of "$work/w3/a$a.time"; done | paste -sd+ | bc -l)
  agent_rss=$(for a in $(seq "$agents"); do rss_of "$work/w3/a$a.time"; done | sort -g | tail -1)
  bytes=$((agents * per_agent << 20))
  row 3 "spoolship, $agents agents" "$slowest" "$bytes" $((agents * per_agent)) "$agent_cpu" \
    "$(cpu_of "$work/collector.time")" "$agent_rss" "$collector_hwm" \
    "slowest/fastest=$(calc "$slowest / $fastest" | xargs printf '%.2f') fastest_s=$fastest slowest_s=$slowest identical=all"
  rm -rf "$work/w3" "$work/w3src" "$work/w3state" "$work/w3archive" "$data"
fi

# ---- Workload 4: a log producer at full speed, rotated every second ----
if runs 4; then
  echo "bench: workload 4, a log producer for $log_s s, rotation every second"
  WORK="$work/w4" BIN="$BIN" bash bench/logs.sh "$log_s" > "$work/w4.out"
  cat "$work/w4.out"
  r=$(grep '^RESULT ' "$work/w4.out")
  get() { echo "$r" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  row 4 "spoolship, log spool" "$(get seconds)" "$(get bytes)" 1 "$(get agent_cpu_s)" "$(get collector_cpu_s)" \
    "$(get agent_hwm_kb)" "$(get collector_hwm_kb)" "records_per_s=$(get records_per_s) latency_median_s=$(get latency_median_s) latency_p99_s=$(get latency_p99_s)"
fi

# ---- Workload 5: the same producer, never reopening, its file followed ----
if runs 5; then
  echo "bench: workload 5, the same log producer for $log_s s, never reopening; the agent follows the file"
  WORK="$work/w5" BIN="$BIN" MODE=follow bash bench/logs.sh "$log_s" > "$work/w5.out"
  cat "$work/w5.out"
  r=$(grep '^RESULT ' "$work/w5.out")
  get() { echo "$r" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  row 5 "spoolship, followed log" "$(get seconds)" "$(get bytes)" 1 "$(get agent_cpu_s)" "$(get collector_cpu_s)" \
    "$(get agent_hwm_kb)" "$(get collector_hwm_kb)" "records_per_s=$(get records_per_s) latency_median_s=$(get latency_median_s) latency_p99_s=$(get latency_p99_s)"
fi

# ---- Workload 6: many smaller files ----
if runs 6; then
  echo "bench: workload 6, $tiny_n files of 1 KiB"
  small_files 6 "$tiny_n" 1024
fi

python3 bench/report.py "$results" "$out"
