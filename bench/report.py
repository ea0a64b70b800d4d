"""Turns bench/bench.sh's results.tsv into the printed table, the ratios to the baselines of
the same run (with the targets of docs/PERFORMANCE.md), results.md and results.png."""
import csv
import os
import re
import subprocess
import sys

results, out = sys.argv[1], sys.argv[2]
raw = list(csv.DictReader(open(results), delimiter="\t"))
if not raw:
    sys.exit("bench: no results")
# Several rounds of a system: keep its median round by wall time, and say what the others took.
rows = []
for key in dict.fromkeys((r["workload"], r["system"]) for r in raw):
    same = sorted((r for r in raw if (r["workload"], r["system"]) == key), key=lambda r: float(r["wall_s"]))
    pick = dict(same[(len(same) - 1) // 2])
    if len(same) > 1:
        pick["extra"] = (pick["extra"] + f" median of {len(same)}: " + "/".join(r["wall_s"] for r in same) + " s").strip()
    rows.append(pick)


def find(workload, system):
    for r in rows:
        if r["workload"] == workload and r["system"] == system:
            return r
    return None


def num(r, key):
    return float(r[key])


names = {"1": "1 GiB file", "2": "small files", "3": "many agents", "4": "log spool", "5": "followed log", "6": "1 KiB files"}
header = ["workload", "system", "wall s", "rate", "CPU s/GiB send", "CPU s/GiB recv", "RSS MiB send", "RSS MiB recv", "notes"]
table = [[f"{r['workload']} {names.get(r['workload'], '')}", r["system"], r["wall_s"], f"{r['rate']} {r['unit']}",
          r["send_cpu_s_per_gib"], r["recv_cpu_s_per_gib"], r["send_rss_mib"], r["recv_rss_mib"], r["extra"]] for r in rows]
widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
print()
for line in [header] + table:
    print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())

def median(vals):
    vals = sorted(vals)
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def rounds_of(r):
    return [x for x in raw if (x["workload"], x["system"]) == (r["workload"], r["system"])]


# CPU figures are, where a ratio says so, each system's median over its rounds, column by column
# (the median round by wall time can be a round whose CPU was not typical: CPU moves less with
# the disk than wall).
def cpu(r, key):
    return median(float(x[key]) for x in rounds_of(r))


# Workloads 2 and 6: CPU seconds per 1,000 files of one side ("send" or "recv"), from the
# notes, median of the rounds.
def cpu_per_1000(r, side):
    group = 1 if side == "send" else 2
    return median(float(re.search(r"cpu_per_1000_files send=(\S+) recv=(\S+)", x["extra"]).group(group)) for x in rounds_of(r))


# The ratios, each with its target: (label, value, target, higher is better); a target of None
# is a figure without one, which notes says what it is.
checks = []
notes = {}
ss1, zc, rs1 = find("1", "spoolship"), find("1", "C zc + fdatasync"), find("1", "rsync --fsync")
if ss1 and zc:
    checks.append(("1: spoolship / C sendfile+splice+fdatasync, throughput", num(ss1, "rate") / num(zc, "rate"), 0.9, True))
    checks.append(("1: spoolship / C, CPU per GiB on the sending side", num(ss1, "send_cpu_s_per_gib") / num(zc, "send_cpu_s_per_gib"), 1.3, False))
    checks.append(("1: spoolship / C, CPU per GiB on the receiving side", num(ss1, "recv_cpu_s_per_gib") / num(zc, "recv_cpu_s_per_gib"), 1.3, False))
# Rule R5's CRC, measured alone: spoolship against the bare transfer plus the CRC it must compute.
crc1 = find("1", "CRC-32 alone (pread + ISA-L)")
if ss1 and zc and crc1:
    for side, key in (("sending", "send_cpu_s_per_gib"), ("receiving", "recv_cpu_s_per_gib")):
        checks.append((f"1: spoolship / (C zc + fdatasync + CRC alone), CPU per GiB on the {side} side (medians of the rounds)",
                       cpu(ss1, key) / (cpu(zc, key) + cpu(crc1, key)), 1.3, False))
if crc1:
    label = "1: CRC-32 alone (pread + ISA-L), CPU s per GiB"
    checks.append((label, cpu(crc1, "send_cpu_s_per_gib"), None, False))
    notes[label] = "what rule R5's CRC costs each side; median of the rounds"
if ss1 and rs1:
    checks.append(("1: spoolship / rsync --fsync, throughput", num(ss1, "rate") / num(rs1, "rate"), 1.5, True))
# Workloads 2 and 6: spoolship (archiving) and spoolship, delete against the disk's own ceiling
# (bench/smallfiles.c: one process, read + write, one syncfs); no-target figures against rsync
# and the copy without any sync, and each spoolship row's CPU per 1,000 files.
for w in ("2", "6"):
    csf, cns, rsf, rsn = find(w, "C + syncfs"), find(w, "C, no sync"), find(w, "rsync --fsync"), find(w, "rsync")
    ssrows = [r for r in rows if r["workload"] == w and r["system"] in ("spoolship", "spoolship, delete")]
    for r in ssrows:
        if csf:
            checks.append((f"{w}: {r['system']} / C + syncfs, files per second", num(r, "rate") / num(csf, "rate"), 0.9, True))
    for r in ssrows:
        for base, what in ((rsf, "how far ahead of rsync --fsync"), (rsn, "how far ahead of rsync without --fsync"),
                           (cns, "against a copy that makes nothing durable")):
            if base:
                label = f"{w}: {r['system']} / {base['system']}, files per second"
                checks.append((label, num(r, "rate") / num(base, "rate"), None, True))
                notes[label] = what
    for r in rows:
        if r["workload"] == w and r["system"].startswith("spoolship"):
            for side, who in (("send", "agent"), ("recv", "collector")):
                label = f"{w}: {r['system']}, CPU s per 1,000 files of the {who}"
                checks.append((label, cpu_per_1000(r, side), None, False))
                notes[label] = "median of the rounds"
ss3 = next((r for r in rows if r["workload"] == "3" and r["system"].startswith("spoolship")), None)
dd3 = find("3", "disk: dd + fdatasync")
if ss3:
    if ss1:
        checks.append(("3: many agents / workload 1, throughput", num(ss3, "rate") / num(ss1, "rate"), 0.8, True))
    if dd3:
        checks.append(("3: many agents / the disk's own write of as many bytes (dd), throughput", num(ss3, "rate") / num(dd3, "rate"), None, True))
    checks.append(("3: collector peak RSS, MiB", num(ss3, "recv_rss_mib"), 150, False))
    extra = dict(kv.split("=", 1) for kv in ss3["extra"].split() if "=" in kv)
    checks.append(("3: slowest / fastest agent", float(extra["slowest/fastest"]), 3.0, False))

# TLS (issue 17): spoolship-tls against the bare TLS transfer (c-tls, TLS 1.3 AES-128-GCM, pread +
# SSL_write, fdatasync) and rsync over ssh, in workloads 1, 2 and 6; no-target figures after them.
for w, rate in (("1", "throughput"), ("2", "files per second"), ("6", "files per second")):
    st, ct, rst = find(w, "spoolship-tls"), find(w, "c-tls"), find(w, "rsync-ssh --fsync")
    if st and ct:
        checks.append((f"{w}: spoolship-tls / c-tls, {rate}", num(st, "rate") / num(ct, "rate"), 0.9, True))
        checks.append((f"{w}: spoolship-tls / c-tls, CPU per GiB on the sending side (medians of the rounds)", cpu(st, "send_cpu_s_per_gib") / cpu(ct, "send_cpu_s_per_gib"), 1.3, False))
        checks.append((f"{w}: spoolship-tls / c-tls, CPU per GiB on the receiving side (medians of the rounds)", cpu(st, "recv_cpu_s_per_gib") / cpu(ct, "recv_cpu_s_per_gib"), 1.3, False))
    if st and rst:
        checks.append((f"{w}: spoolship-tls / rsync-ssh --fsync, {rate}", num(st, "rate") / num(rst, "rate"), 1.5, True))
    ss = find(w, "spoolship")
    if st and ss:
        label = f"{w}: spoolship-tls / spoolship, {rate}"
        checks.append((label, num(st, "rate") / num(ss, "rate"), None, True))
        notes[label] = "what TLS costs spoolship"
ct, c256, cmm = find("1", "c-tls"), find("1", "c-tls AES-256"), find("1", "c-tls mmap")
for side, key in (("sending", "send_cpu_s_per_gib"), ("receiving", "recv_cpu_s_per_gib")):
    if ct and c256:
        label = f"1: c-tls AES-256-GCM / AES-128-GCM, CPU per GiB on the {side} side"
        checks.append((label, cpu(c256, key) / cpu(ct, key), None, False))
        notes[label] = f"{cpu(c256, key):.3f} against {cpu(ct, key):.3f} s, medians of the rounds"
if ct and cmm:
    label = "1: c-tls, CPU s per GiB of the sender's pread copy (pread + SSL_write less SSL_write from a mapping)"
    checks.append((label, cpu(ct, "send_cpu_s_per_gib") - cpu(cmm, "send_cpu_s_per_gib"), None, False))
    notes[label] = "what kernel TLS's sendfile would not pay on the sender, besides the copy into the socket; medians of the rounds"
zc, rw = find("1", "C zc + fdatasync"), find("1", "C rw + fdatasync")
if zc and rw:
    for side, key in (("sending", "send_cpu_s_per_gib"), ("receiving", "recv_cpu_s_per_gib")):
        label = f"1: C rw / zc + fdatasync, CPU s per GiB of the user-space copies on the {side} side (rw less zc)"
        checks.append((label, cpu(rw, key) - cpu(zc, key), None, False))
        notes[label] = "the copies kernel TLS would spare a sendfile/splice path; medians of the rounds, disk writes included: bench/copies.sh measures it without"
dd3_label = "3: many agents / the disk's own write of as many bytes (dd), throughput"
notes.setdefault(dd3_label, "what the disk allows")

lines = []
if checks:
    print()
    for label, value, target, higher in checks:
        if target is None:
            line = f"{label}: {value:.3f} (no target: {notes.get(label, 'a figure')})"
            lines.append(line)
            print(line)
            continue
        ok = value >= target if higher else value <= target
        line = f"{label}: {value:.3f} (target {'>=' if higher else '<='} {target:g}) {'met' if ok else 'NOT met'}"
        lines.append(line)
        print(line)

with open(os.path.join(out, "results.md"), "w") as f:
    f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
    for line in table:
        f.write("| " + " | ".join(str(x) for x in line) + " |\n")
    if lines:
        f.write("\n" + "\n".join(f"- {l}" for l in lines) + "\n")

# The plot: throughput of each system, one panel per workload (files/s for workloads 2 and 6).
panels = sorted({r["workload"] for r in rows})
script = [f"set terminal pngcairo size {420 * len(panels)},420 font ',9'", f"set output '{os.path.join(out, 'results.png')}'",
          f"set multiplot layout 1,{len(panels)}", "set style fill solid 0.8", "set boxwidth 0.6", "set yrange [0:*]",
          "set xtics rotate by -35", "unset key", "set grid ytics", "set termoption noenhanced"]
for w in panels:
    data = os.path.join(out, f"plot-{w}.dat")
    these = [x for x in rows if x["workload"] == w]
    with open(data, "w") as f:
        for i, r in enumerate(these):
            f.write(f'{i} "{r["system"]}" {r["rate"]}\n')
    script.append(f"set xrange [-0.8:{max(len(these), 2) - 0.2}]")
    unit = next(r["unit"] for r in rows if r["workload"] == w)
    script += [f"set title 'workload {w}: {names.get(w, '')}'", f"set ylabel '{unit}'",
               f"plot '{data}' using 1:3:xtic(2) with boxes lc rgb '#4a7ab5'"]
script.append("unset multiplot")
try:
    subprocess.run(["gnuplot"], input="\n".join(script), text=True, check=True)
    for w in panels:
        os.remove(os.path.join(out, f"plot-{w}.dat"))
    print(f"\nwrote {out}/results.tsv, results.md and results.png")
except (OSError, subprocess.CalledProcessError) as e:
    print(f"\nwrote {out}/results.tsv and results.md; no plot ({e})")
