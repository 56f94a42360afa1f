#!/usr/bin/env python3
"""The floor's table from floor.jsonl (tests/vm/floor-guest.sh): for each
latency and job, the medians over the runs of IOPS and of CPU per command
(the handler's own, and the whole guest's) for pscsi, the floor handler,
tcmu-sg and fio's own SG_IO; then what tcmu-sg's handler spends above the
floor: its CPU per command less the floor handler's and less the SG_IO's.

    floor_report.py floor.jsonl
"""
import json
import statistics
import sys
from collections import OrderedDict, defaultdict

LAT = {"delay=0": "inline", "ndelay=100000": "100 us", "delay=1": "4 ms"}


def med(rs, f):
    v = [f(r) for r in rs if r["iops"]]
    return statistics.median(v) if v else 0.0


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    by = defaultdict(list)
    for r in rows:
        by[(r["config"], r["latency"], r["job"])].append(r)
    lats = list(OrderedDict.fromkeys(r["latency"] for r in rows))
    jobs = list(OrderedDict.fromkeys(r["job"] for r in rows))
    own = lambda r: r["cpu_ticks"] * 10000 / (r["iops"] * r["seconds"])
    total = lambda r: r["busy_ticks"] * 10000 / (r["iops"] * r["seconds"])
    sw = lambda r: r["switches"] / (r["iops"] * r["seconds"])
    for lat in lats:
        print(f"\n**{LAT.get(lat, lat)}**: IOPS / handler CPU us per command / whole guest's "
              "CPU us per command (medians)\n")
        print("| job | pscsi | floor | tcmu-sg | fio's SG_IO | tcmu-sg above the floor |")
        print("|---|---:|---:|---:|---:|---:|")
        for j in jobs:
            cell = {}
            for c in ("pscsi", "floor", "tcmu-sg", "sg-io"):
                rs = by[(c, lat, j)]
                cell[c] = (med(rs, lambda r: r["iops"]), med(rs, own), med(rs, total), med(rs, sw))
            p, f, s, g = (cell[c] for c in ("pscsi", "floor", "tcmu-sg", "sg-io"))
            # fio's own SG_IO: its process is not the one counted, so the
            # whole guest's CPU per command is the command's cost.
            above = s[1] - f[1] - g[2]
            print(f"| {j} | {p[0]:.0f} / - / {p[2]:.0f} | {f[0]:.0f} / {f[1]:.0f} / {f[2]:.0f} "
                  f"({f[3]:.1f} cs) | {s[0]:.0f} / {s[1]:.0f} / {s[2]:.0f} ({s[3]:.1f} cs) "
                  f"| {g[0]:.0f} / - / {g[2]:.0f} | **{above:.0f}** |")
    print("\ncs: the handler's context switches per command. 'Above the floor': tcmu-sg's "
          "handler CPU per command less the floor handler's and less a whole SG_IO's.")


if __name__ == "__main__":
    main()
