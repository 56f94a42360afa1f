#!/usr/bin/env python3
"""The release A/B's report from rab.jsonl: for each latency and job, each
binary's ratio to pscsi, run by run (each tcmu-sg run divided by the pscsi
run of the same round, so that the boot's drift cancels), as the median
and the spread (lowest-highest) of the runs, with the daemon's CPU and
context switches per command (medians).

    release_ab_report.py rab.jsonl [--history FILE --label NAME --rev REV
                                    --of CONFIG --md docs/performance.md]

With --history, the medians of CONFIG (the working tree's, by default
"new") are appended to FILE (one JSON object per release) and the history
table in --md, between its markers, is rewritten from FILE.
"""
import argparse
import datetime
import json
import statistics
from collections import OrderedDict, defaultdict

LAT_NAMES = {"delay=1": "4 ms", "ndelay=100000": "100 us", "delay=0": "inline"}
BEGIN = "<!-- release history: written by tests/vm/release_ab_report.py -->"
END = "<!-- end of release history -->"


def lat_name(lat):
    return LAT_NAMES.get(lat, lat)


def load(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    rows = [r for r in rows if "profile" not in r]
    by = defaultdict(dict)
    for r in rows:
        by[(r["config"], r["latency"], r["job"])][r["run"]] = r
    lats = list(OrderedDict.fromkeys(r["latency"] for r in rows))
    jobs = list(OrderedDict.fromkeys(r["job"] for r in rows))
    configs = [c for c in OrderedDict.fromkeys(r["config"] for r in rows) if c != "pscsi"]
    return by, lats, jobs, configs


def ratios(by, config, lat, job):
    ref = by[("pscsi", lat, job)]
    return [r["iops"] / ref[run]["iops"] for run, r in sorted(by[(config, lat, job)].items())
            if run in ref and ref[run]["iops"]]


def per_cmd(by, config, lat, job, key, scale):
    vals = [r[key] * scale / (r["iops"] * r["seconds"])
            for r in by[(config, lat, job)].values() if r["iops"]]
    return statistics.median(vals) if vals else None


def summary(by, lats, jobs, config):
    """{latency: {job: (median ratio, low, high, cpu us, switches)}}"""
    out = {}
    for lat in lats:
        out[lat] = {}
        for job in jobs:
            rs = ratios(by, config, lat, job)
            if not rs:
                continue
            out[lat][job] = (statistics.median(rs), min(rs), max(rs),
                             per_cmd(by, config, lat, job, "cpu_ticks", 10000),
                             per_cmd(by, config, lat, job, "switches", 1))
    return out


def table(by, lats, jobs, configs):
    lines = []
    for lat in lats:
        lines += [f"**{lat_name(lat)}** (`{lat}`): tcmu-sg / pscsi, median of "
                  f"{len(by[('pscsi', lat, jobs[0])])} runs [lowest-highest]; daemon CPU us "
                  "and context switches per command (medians)", "",
                  "| job | " + " | ".join(configs) + " |",
                  "|---|" + "---:|" * len(configs)]
        for job in jobs:
            cells = []
            for c in configs:
                rs = ratios(by, c, lat, job)
                if not rs:
                    cells.append("-")
                    continue
                cpu = per_cmd(by, c, lat, job, "cpu_ticks", 10000)
                sw = per_cmd(by, c, lat, job, "switches", 1)
                cells.append(f"**{statistics.median(rs):.2f}** [{min(rs):.2f}-{max(rs):.2f}] "
                             f"{cpu:.0f} us {sw:.1f} cs")
            lines.append(f"| {job} | " + " | ".join(cells) + " |")
        ps = [round(r["iops"]) for r in by[("pscsi", lat, jobs[0])].values()]
        lines += ["", f"pscsi's IOPS, {jobs[0]}, run by run: {ps}", ""]
    return lines


def profiles(path):
    """The RAB_PROFILE pass: each binary's system calls per command."""
    rows = [r for r in (json.loads(line) for line in open(path) if line.strip()) if "profile" in r]
    if not rows:
        return []
    names = list(OrderedDict.fromkeys(k for r in rows for k in r["counts"]))
    lines = ["The daemon's system calls, context switches and CPU per command (`perf stat`, "
             "one run of the first job):", "",
             "| binary | latency | job | " + " | ".join(names) + " |",
             "|---|---|---|" + "---:|" * len(names)]
    for r in rows:
        n = max(1, r["commands"])
        cells = []
        for k in names:
            v = r["counts"].get(k, 0) / n
            cells.append(f"{v * 1000:.0f} us" if k == "task-clock" else f"{v:.2f}")
        lines.append(f"| {r['profile']} | {lat_name(r['latency'])} | {r['job']} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def history_lines(path):
    """The history table, one row per release, from the history file."""
    try:
        rows = [json.loads(line) for line in open(path) if line.strip()]
    except FileNotFoundError:
        rows = []
    if not rows:
        return []
    cols = list(OrderedDict.fromkeys((lat, job) for r in rows for lat in r["ratios"]
                                     for job in r["ratios"][lat]))
    lines = [BEGIN, "## Release history", "",
             "Queued small I/O, tcmu-sg / pscsi in one boot, the median of the runs "
             "(`tests/vm/release-ab`; each row measured beside the release before it).", "",
             "| release | date | " + " | ".join(f"{job} {lat_name(lat)}" for lat, job in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = [f"{r['ratios'][lat][job]:.2f}" if job in r["ratios"].get(lat, {}) else "-"
                 for lat, job in cols]
        lines.append(f"| {r['label']} (`{r['rev']}`) | {r['date']} | " + " | ".join(cells) + " |")
    return lines + ["", END]


def write_history(md, history):
    text = open(md).read()
    new = "\n".join(history_lines(history))
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + new + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    with open(md, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--history")
    ap.add_argument("--label")
    ap.add_argument("--rev", default="")
    ap.add_argument("--of", default="new")
    ap.add_argument("--md", default="docs/performance.md")
    a = ap.parse_args()
    by, lats, jobs, configs = load(a.jsonl)
    print("\n".join(table(by, lats, jobs, configs)))
    print("\n".join(profiles(a.jsonl)))
    if a.history:
        s = summary(by, lats, jobs, a.of)
        entry = {"label": a.label or a.of, "rev": a.rev,
                 "date": datetime.date.today().isoformat(),
                 "ratios": {lat: {job: round(v[0], 3) for job, v in s[lat].items()} for lat in s}}
        with open(a.history, "a") as f:
            f.write(json.dumps(entry) + "\n")
        write_history(a.md, a.history)
        print(f"release-ab: added {entry['label']} to {a.history} and {a.md}")


if __name__ == "__main__":
    main()
