#!/usr/bin/env python3
"""Prints the levers table from levers.jsonl: IOPS per configuration and
job, and each tcmu-sg configuration's ratio to pscsi (the mean of the
pscsi runs of the same boot). A configuration run several times shows its
mean.

    levers_report.py levers.jsonl
"""
import json
import sys
from collections import OrderedDict, defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
jobs = list(OrderedDict.fromkeys(r["job"] for r in rows))
by = defaultdict(list)
for r in rows:
    by[(r["config"], r["job"])].append(r)
ref = {j: sum(r["iops"] for r in by[("pscsi", j)]) / max(1, len(by[("pscsi", j)])) for j in jobs}
configs = list(OrderedDict.fromkeys(r["config"] for r in rows))
print("| config | " + " | ".join(jobs) + " |")
print("|---|" + "---:|" * len(jobs))
for c in configs:
    cells = []
    for j in jobs:
        rs = by[(c, j)]
        if not rs:
            cells.append("-")
            continue
        iops = sum(r["iops"] for r in rs) / len(rs)
        cell = f"{iops:.0f}"
        if not c.startswith("pscsi") and ref[j]:
            cell += f" (**{iops / ref[j]:.2f}**)"
        cells.append(cell)
    print(f"| {c} | " + " | ".join(cells) + " |")
print("\nIOPS, means over a configuration's runs (tcmu-sg / pscsi in bold); pscsi runs:",
      ", ".join(f"{j} {' / '.join(str(round(r['iops'])) for r in by[('pscsi', j)])}" for j in jobs))
def per_cmd(c, j, key, scale):
    rs = [r for r in by[(c, j)] if key in r and r["iops"]]
    if not rs:
        return "-"
    return f"{sum(r[key] * scale / (r['iops'] * r.get('seconds', 3)) for r in rs) / len(rs):.2f}"


print("\ndaemon context switches per command:")
for c in configs:
    if not c.startswith("pscsi"):
        print(f"  {c}: " + ", ".join(per_cmd(c, j, "switches", 1) for j in jobs))
print("\ndaemon CPU per command (us):")
for c in configs:
    if not c.startswith("pscsi"):
        print(f"  {c}: " + ", ".join(per_cmd(c, j, "cpu_ticks", 10000) for j in jobs))
print("\ndaemon CPU ticks per job (10 ms each):")
for c in configs:
    if c.startswith("pscsi"):
        continue
    print(f"  {c}: " + ", ".join(str(round(sum(r['cpu_ticks'] for r in by[(c, j)]) / len(by[(c, j)])))
                                 for j in jobs if by[(c, j)]))
