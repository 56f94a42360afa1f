#!/usr/bin/env python3
"""Turns bench.json into docs/performance.md and the ratio chart (SVG).

   bench_report.py BENCH_JSON OUT_MD OUT_SVG
"""
import json
import os
import sys

COLORS = ["#3366cc", "#dc3912", "#999999"]


def ratio(a, b):
    return a / b if b else float("nan")


def by_latency(d):
    """{job name: {latency: row}}, jobs in their order."""
    out = {}
    for j in d["jobs"]:
        out.setdefault(j["job"], {})[j["latency"]] = j
    return out


def svg_chart(d, path):
    lats = d["latencies"]
    jobs = by_latency(d)
    w_label, bar_h, gap = 170, 8, 9
    scale = 250  # pixels per 1.0
    max_r = max(ratio(r["sg"]["iops"], r["pscsi"]["iops"]) for rows in jobs.values()
                for r in rows.values())
    max_r = max(1.5, min(max_r, 4.0))
    width = w_label + int(scale * max_r) + 50
    height = 50 + len(jobs) * (len(lats) * bar_h + gap) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           '<text x="10" y="16" font-size="13">tcmu-sg IOPS / LIO pscsi IOPS, same VM run, '
           'by backing-device latency</text>']
    for k, lat in enumerate(lats):
        x = 10 + 110 * k
        out.append(f'<rect x="{x}" y="24" width="10" height="10" fill="{COLORS[k]}"/>')
        out.append(f'<text x="{x + 14}" y="33">{lat}</text>')
    y = 44
    for name, rows in jobs.items():
        out.append(f'<text x="{w_label - 6}" y="{y + len(lats) * bar_h / 2 + 4}" '
                   f'text-anchor="end">{name}</text>')
        for k, lat in enumerate(lats):
            r = rows.get(lat)
            if not r:
                continue
            v = ratio(r["sg"]["iops"], r["pscsi"]["iops"])
            by = y + k * bar_h
            bw = max(1, int(scale * min(v, max_r)))
            out.append(f'<rect x="{w_label}" y="{by}" width="{bw}" height="{bar_h - 1}" '
                       f'fill="{COLORS[k]}"/>')
            out.append(f'<text x="{w_label + bw + 4}" y="{by + bar_h - 1}" font-size="9">'
                       f'{v:.2f}</text>')
        y += len(lats) * bar_h + gap
    x1 = w_label + scale
    out.append(f'<line x1="{x1}" y1="40" x2="{x1}" y2="{y}" stroke="black" stroke-dasharray="4,3"/>')
    out.append(f'<text x="{x1}" y="{y + 14}" text-anchor="middle">1.0</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    src, md, svg = sys.argv[1:4]
    d = json.load(open(src))
    lats = d["latencies"]
    jobs = by_latency(d)
    svg_chart(d, svg)
    lines = [
        "# Performance",
        "",
        f"Measured {d['date']} on kernel {d['kernel']} inside the bundled VM "
        f"(QEMU TCG, 2 vCPUs), by `tests/vm/bench`: {d['runs']} runs of "
        f"{d['runtime_s']} s per job and LUN, LUNs interleaved, median run shown.",
        "",
        "**QEMU's TCG emulates every instruction: absolute IOPS, MB/s and "
        "latencies mean nothing outside this run. Only the ratios between LUNs "
        "measured in the same run carry information.**",
        "",
        "LUNs, all through tcm_loop, all over disks of one scsi_debug host: "
        "**sg** = tcmu-sg; **pscsi** = LIO's in-kernel passthrough; **qcow** = "
        "tcmu-runner's user:qcow over a qcow2 image (metadata preallocated) on a "
        "scsi_debug disk. fio: libaio, direct=1. Every job runs at three "
        "backing-device latencies, set at run time on scsi_debug: **4 ms** "
        "(`delay=1`, one jiffy, a spinning disk or a busy array), **100 us** "
        "(`ndelay=100000`, an SSD behind a SAN) and **inline** (`delay=0`: "
        "the device answers in the submitter's context, which measures the "
        "handler's own cost but hides whether commands overlap).",
        "",
        "## tcmu-sg / pscsi and tcmu-sg / qcow (IOPS ratios)",
        "",
        "| job | " + " | ".join(f"/ pscsi {lat}" for lat in lats) + " | "
        + " | ".join(f"/ qcow {lat}" for lat in lats) + " |",
        "|---|" + "---:|" * (2 * len(lats)),
    ]
    for name, rows in jobs.items():
        cells = []
        for other in ("pscsi", "qcow"):
            for lat in lats:
                r = rows.get(lat)
                cells.append(f"{ratio(r['sg']['iops'], r[other]['iops']):.2f}" if r else "-")
        cells = [f"**{c}**" if i < len(lats) else c for i, c in enumerate(cells)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    agg, jb = d.get("aggregate"), d.get("jbod")
    for row, what in ((agg, ""), (jb, " (a JBOD behind one gateway)")):
        if not row:
            continue
        s, p = row["sg"], row["pscsi"]
        lines += [
            "",
            f"**{row['job']}**{what}: tcmu-sg {s['iops']:.0f} IOPS (lat mean "
            f"{s['lat_mean_us']:.0f} us, p99 {s['lat_p99_us']:.0f} us), pscsi {p['iops']:.0f} IOPS "
            f"(lat mean {p['lat_mean_us']:.0f} us, p99 {p['lat_p99_us']:.0f} us): "
            f"**{ratio(s['iops'], p['iops']):.2f}**; the daemon peaked at "
            f"{row['sg_threads_peak']} threads. Runs: sg {s['iops_runs']}, pscsi {p['iops_runs']}.",
        ]
    lines += ["", "![ratios](performance.svg)", ""]
    lines += [
        "## Guest CPU per command",
        "",
        "Microseconds of guest CPU per command, median run, split three ways: the "
        "**daemon** (tcmu-sg's or tcmu-runner's process, kernel time in its "
        "syscalls included: SG_IO, TCMU's completion copy), the **initiator** "
        "(fio's processes, kernel time in their context included: the block "
        "layer, tcm_loop, LIO's submission, TCMU's queueing) and the rest of the "
        "**kernel** (interrupts, softirqs, kernel threads: LIO, TCMU, scsi_debug). "
        "pscsi has no daemon. d/i/k = daemon / initiator / kernel; the total "
        "decides what 2 vCPUs can carry. The CPU is counted over fio's whole run "
        "(start-up and the 1 s ramp included) and divided by the commands of the "
        "measured seconds, so every figure is about a quarter high, alike for all "
        "three: compare the columns, not the absolute values. At low rates (QD1 at "
        "4 ms) costs that come by the second, not by the command (fio's own "
        "timekeeping, idle devices' leaders), dominate.",
        "",
        "| job | latency | sg d/i/k | sg total | pscsi i/k | pscsi total | qcow d/i/k | qcow total |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def split(r, daemon=True):
        c = r.get("cpu_us")
        if not c:
            return "-", "-"
        parts = [c["daemon"]] if daemon else []
        parts += [c["initiator"], c["kernel"]]
        return " / ".join(f"{x:.0f}" for x in parts), f"{sum(parts):.0f}"

    for name, rows in jobs.items():
        for lat in lats:
            j = rows.get(lat)
            if not j:
                continue
            cells = [*split(j["sg"]), *split(j["pscsi"], daemon=False), *split(j["qcow"])]
            lines.append(f"| {name} | {lat} | " + " | ".join(cells) + " |")
    for label, row in (("8 devices", agg), ("64 devices", jb)):
        if row and row["sg"].get("cpu_us"):
            cells = [*split(row["sg"]), *split(row["pscsi"], daemon=False), "-", "-"]
            lines.append(f"| {label} | 4 ms | " + " | ".join(cells) + " |")
    lines.append("")
    for lat in lats:
        lines += [
            f"## {lat}",
            "",
            "Latency: mean total latency / 99th percentile completion latency (fio lat / clat), us. "
            "Threads: the daemon's peak thread count during the tcmu-sg runs.",
            "",
            "| job | sg IOPS | sg MB/s | sg lat mean/p99 | pscsi IOPS | pscsi lat mean/p99 "
            "| qcow IOPS | sg / pscsi | sg / qcow | sg CPU s / 100k I/O | runner CPU s / 100k I/O | threads |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, rows in jobs.items():
            j = rows.get(lat)
            if not j:
                continue
            s, p, q = j["sg"], j["pscsi"], j["qcow"]
            lines.append(
                f"| {name} | {s['iops']:.0f} | {s['mbps']:.1f} | {s['lat_mean_us']:.0f} / {s['lat_p99_us']:.0f} "
                f"| {p['iops']:.0f} | {p['lat_mean_us']:.0f} / {p['lat_p99_us']:.0f} | {q['iops']:.0f} "
                f"| **{ratio(s['iops'], p['iops']):.2f}** | {ratio(s['iops'], q['iops']):.2f} "
                f"| {s.get('cpu_s_per_100k_io', 0):.1f} | {q.get('cpu_s_per_100k_io', 0):.1f} "
                f"| {j.get('sg_threads_peak', '-')} |")
        lines.append("")
    rss = d.get("rss_kib")
    if rss:
        lines += [
            "## Memory and threads, idle",
            "",
            "Daemon memory (KiB), sampled after idle followers retired. Rss = "
            "/proc/PID/smaps_rollup, counted from the page tables; Rings = the "
            "resident part of the /dev/uioN ring mappings, from /proc/PID/smaps; "
            "the target counts Rss without them. VmRSS, RssAnon, RssFile and "
            "RssShmem are /proc/PID/status's counters, which lag behind the page "
            "tables in a process with many threads:",
            "",
            "| devices | threads | Rss | without rings | rings | VmRSS | RssAnon | RssFile | RssShmem |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n in ("1", "16", "jbod"):
            r = rss.get(n)
            if not r:
                continue
            devices = rss.get("devices_at_jbod", "-") if n == "jbod" else n
            lines.append(f"| {devices} | {r.get('Threads', '-')} | {r.get('SmapsRss', '-')} "
                         f"| **{r.get('WithoutRings', '-')}** | {r.get('Rings', '-')} | {r['VmRSS']} "
                         f"| {r['RssAnon']} | {r['RssFile']} | {r['RssShmem']} |")
        lines.append("")
    notes = os.path.join(os.path.dirname(md), "performance-notes.md")
    if os.path.exists(notes):
        lines += [open(notes).read()]
    # The release history (tests/vm/release-ab) survives a new bench.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from release_ab_report import history_lines
    lines += history_lines(os.path.join(os.path.dirname(md), "performance-history.jsonl"))
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
