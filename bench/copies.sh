#!/usr/bin/env bash
# What the user-space copies cost here, i.e. what kernel TLS would take off spoolship's TLS path
# (issue 17; this machine's kernel has no kernel TLS, so it cannot be measured directly).
#
#   bash bench/copies.sh [ROUNDS] [MIB]     (defaults 7 rounds, 1024 MiB)
#
# One file of MIB MiB, source and destination on tmpfs (/dev/shm; WORK to change it), so that no
# disk and no fsync is in the figures: only CPU. Each round runs, in turn:
#   C zc        bench/baseline.c zc: sendfile -> splice -> file
#   C rw        bench/baseline.c rw: read/write 64 KiB on both sides
#   tls copy    bench/tls_baseline.c: pread 256 KiB + SSL_write -> SSL_read + write (TLS 1.3,
#               AES-128-GCM, mutual TLS), what spoolship does without kernel TLS
#   tls mmap    the same, the sender SSL_writes from a mapping of the file (no pread copy)
#   tls 256     tls copy with AES-256-GCM
#   tls fill    tls copy, the receiver reading ahead and writing 256 KiB at a time instead of
#               each 16 KiB record as it comes (tls_baseline --receive fill)
# and prints each one's median CPU seconds per GiB on each side, then the differences:
#   sender, tls copy - tls mmap: the pread copy alone;
#   sender, C rw - C zc: both of a sender's copies (file -> buffer, buffer -> socket), which
#     kernel TLS with sendfile does not make (it encrypts from the page cache into the socket);
#   receiver, C rw - C zc: the copy out of the socket into a buffer, which kernel TLS's receive
#     with splice does not make (it still copies into the page cache, as zc does);
#   receiver, tls copy - tls fill: what a read per record costs (two read(2) and a write(2)
#     for every 16 KiB).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
mib=${2:-1024}
work=${WORK:-/dev/shm/spoolship-copies}
rm -rf "$work"; mkdir -p "$work/pki"
trap 'rm -rf "$work"' EXIT
cc -O2 -Wall -o "$work/baseline" bench/baseline.c
cc -O2 -Wall -o "$work/tls_baseline" bench/tls_baseline.c -lssl -lcrypto
pki="$work/pki"
ossl=/usr/bin/openssl
$ossl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 2 \
  -subj "/CN=copies CA" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
for who in collector agent; do
  if [ "$who" = collector ]; then san="IP:127.0.0.1"; else san="DNS:bench"; fi
  $ossl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$pki/$who.key" -out "$pki/$who.csr" -subj "/CN=$who" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$pki/$who.ext"
  $ossl x509 -req -in "$pki/$who.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 -extfile "$pki/$who.ext" \
    -out "$pki/$who.crt" 2>/dev/null
done
keys=(--ca "$pki/ca.crt" --server-cert "$pki/collector.crt" --server-key "$pki/collector.key" --client-cert "$pki/agent.crt" --client-key "$pki/agent.key")
head -c $((mib << 20)) /dev/urandom > "$work/src.bin"
: > "$work/cpu.tsv"
run() { # run NAME COMMAND...: one transfer, its CPU per GiB on each side into cpu.tsv
  local name=$1 line; shift
  rm -f "$work/dst.bin"
  line=$("$@" "$work/src.bin" "$work/dst.bin")
  cmp -s "$work/src.bin" "$work/dst.bin" || { echo "copies: $name: the copy differs" >&2; exit 1; }
  get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  echo "$name $(get sender_cpu_s) $(get receiver_cpu_s)" >> "$work/cpu.tsv"
}
for r in $(seq "$rounds"); do
  run "C zc" "$work/baseline" zc
  run "C rw" "$work/baseline" rw
  run "tls copy" "$work/tls_baseline" "${keys[@]}" --send copy
  run "tls mmap" "$work/tls_baseline" "${keys[@]}" --send mmap
  run "tls 256" "$work/tls_baseline" "${keys[@]}" --send copy --cipher TLS_AES_256_GCM_SHA384
  run "tls fill" "$work/tls_baseline" "${keys[@]}" --send copy --receive fill
done
python3 - "$work/cpu.tsv" "$mib" "$rounds" <<'PY'
import statistics, sys
rows, mib, rounds = open(sys.argv[1]).read().split("\n"), int(sys.argv[2]), sys.argv[3]
gib = mib / 1024
cpu = {}
for line in filter(None, rows):
    *name, s, r = line.split()
    cpu.setdefault(" ".join(name), []).append((float(s) / gib, float(r) / gib))
med = {k: (statistics.median(s for s, _ in v), statistics.median(r for _, r in v)) for k, v in cpu.items()}
print(f"CPU s per GiB, median of {rounds} rounds ({mib} MiB, tmpfs, no fsync): sender / receiver  [every round's sender | receiver]")
for k, (s, r) in med.items():
    print(f"  {k:9} {s:.3f} / {r:.3f}   [{' '.join(f'{x:.3f}' for x, _ in cpu[k])} | {' '.join(f'{x:.3f}' for _, x in cpu[k])}]")
print(f"sender, the pread copy (tls copy - tls mmap): {med['tls copy'][0] - med['tls mmap'][0]:.3f}")
print(f"sender, both copies (C rw - C zc): {med['C rw'][0] - med['C zc'][0]:.3f}")
print(f"receiver, the copy out of the socket (C rw - C zc): {med['C rw'][1] - med['C zc'][1]:.3f}")
print(f"receiver, a write per record (tls copy - tls fill): {med['tls copy'][1] - med['tls fill'][1]:.3f}")
print(f"AES-256-GCM / AES-128-GCM: sender {med['tls 256'][0] / med['tls copy'][0]:.3f}, receiver {med['tls 256'][1] / med['tls copy'][1]:.3f}")
PY
