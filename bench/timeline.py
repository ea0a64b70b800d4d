#!/usr/bin/env python3
"""Where a small-files shipment leaves the cores idle: one agent `--once` ships FILES files of
SIZE bytes into a fresh collector (release builds in BIN_DIR), and every 100 ms this prints the
CPU ticks each daemon used (100 ticks a second per core, so 10 a line is one core busy).

    python3 bench/timeline.py BIN_DIR [archive|delete]      (FILES=10000 SIZE=4096 WORK=/var/tmp/spoolship-timeline)

Two daemons on two cores can overlap: lines where both are well under 10 show a pipeline that
waits (a sleep, a flush, a round trip), not one that computes.
"""
import os
import subprocess
import sys
import time

if len(sys.argv) < 2:
    sys.exit("usage: bench/timeline.py BIN_DIR [archive|delete]")
bin_dir = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else "archive"
files, size = int(os.environ.get("FILES", "10000")), int(os.environ.get("SIZE", "4096"))
work = os.environ.get("WORK", "/var/tmp/spoolship-timeline")
subprocess.run(["rm", "-rf", work], check=True)
os.makedirs(work + "/src")
for i in range(files):
    with open(f"{work}/src/f{i:06d}", "wb") as f:
        f.write(os.urandom(size))
open(work + "/empty.toml", "w").close()
os.sync()
time.sleep(5)
common = ["--config", work + "/empty.toml", "--control-socket", "none", "--log-level", "warning"]
collector = subprocess.Popen([bin_dir + "/spoolship-collector", *common, "--listen", "127.0.0.1:0",
                              "--data-dir", work + "/data", "--port-file", work + "/port"], stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 10
while not (os.path.exists(work + "/port") and open(work + "/port").read().strip()):
    if time.monotonic() > deadline:
        collector.kill()
        sys.exit("timeline: the collector wrote no port file in 10 s")
    time.sleep(0.01)
port = open(work + "/port").read().strip()
extra = ["--archive-dir", work + "/archive"] if mode == "archive" else []
start = time.monotonic()
agent = subprocess.Popen([bin_dir + "/spoolship-agent", *common, "--collector", "127.0.0.1:" + port, "--agent-id", "timeline",
                          "--state-dir", work + "/state", "--spool", "timeline=" + work + "/src", "--once", *extra],
                         stderr=subprocess.DEVNULL)


def ticks(pid):
    """User + system clock ticks of all of a process's threads."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                s = open(f"/proc/{pid}/task/{t}/stat").read()
                f = s[s.rindex(")") + 2:].split()
                total += int(f[11]) + int(f[12])
            except OSError:
                pass
    except OSError:
        pass
    return total


rows = []
before = (0, 0)
while agent.poll() is None:
    now = (ticks(agent.pid), ticks(collector.pid))
    rows.append((time.monotonic() - start, now[0] - before[0], now[1] - before[1]))
    before = now
    time.sleep(0.1)
wall = time.monotonic() - start
collector.terminate()
collector.wait()
print(f"agent exit {agent.returncode}, wall {wall:.2f} s, {files} files of {size} bytes, {mode}")
print("    s  agent  collector")
for t, a, c in rows[1:]:
    print(f"{t:5.2f}  {a:5d}  {c:9d}")
subprocess.run(["rm", "-rf", work], check=True)
