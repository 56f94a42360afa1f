#!/usr/bin/env python3
"""Turns bench.json into docs/performance.md and the ratio chart (SVG).

   bench_report.py BENCH_JSON OUT_MD OUT_SVG
"""
import json
import os
import sys


def ratio(a, b):
    return a / b if b else float("nan")


def svg_chart(jobs, path):
    w_label, bar_h, gap = 190, 9, 8
    scale = 300  # pixels per 1.0
    max_r = max(max(ratio(j["sg"]["iops"], j["pscsi"]["iops"]), ratio(j["sg"]["iops"], j["qcow"]["iops"]))
                for j in jobs)
    max_r = max(2.0, min(max_r, 6.0))
    width = w_label + int(scale * max_r) + 60
    height = 40 + len(jobs) * (2 * bar_h + gap) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="16" font-size="13">tcmu-sg IOPS ratio, same VM run '
           f'(blue: / LIO pscsi, orange: / tcmu-runner qcow)</text>']
    y = 30
    for j in jobs:
        r1 = ratio(j["sg"]["iops"], j["pscsi"]["iops"])
        r2 = ratio(j["sg"]["iops"], j["qcow"]["iops"])
        out.append(f'<text x="{w_label - 6}" y="{y + bar_h + 3}" text-anchor="end">{j["job"]}</text>')
        for k, (r, color) in enumerate(((r1, "#3366cc"), (r2, "#ff9900"))):
            by = y + k * bar_h
            bw = max(1, int(scale * min(r, max_r)))
            out.append(f'<rect x="{w_label}" y="{by}" width="{bw}" height="{bar_h - 1}" fill="{color}"/>')
            out.append(f'<text x="{w_label + bw + 4}" y="{by + bar_h - 1}">{r:.2f}</text>')
        y += 2 * bar_h + gap
    x1 = w_label + scale
    out.append(f'<line x1="{x1}" y1="26" x2="{x1}" y2="{y}" stroke="black" stroke-dasharray="4,3"/>')
    out.append(f'<text x="{x1}" y="{y + 14}" text-anchor="middle">1.0</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    src, md, svg = sys.argv[1:4]
    d = json.load(open(src))
    jobs = d["jobs"]
    svg_chart(jobs, svg)
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
        "LUNs, all through tcm_loop: **sg** = tcmu-sg over a scsi_debug disk; "
        "**pscsi** = LIO's in-kernel passthrough over a second scsi_debug disk of "
        "the same geometry; **qcow** = tcmu-runner's user:qcow over a preallocated "
        "qcow2 image on tmpfs. scsi_debug runs with delay=0. fio: libaio, direct=1.",
        "",
        "Latency columns: mean total latency / 99th percentile completion latency (fio lat / clat), us.",
        "",
        "| job | sg IOPS | sg MB/s | sg lat mean/p99 us | pscsi IOPS | pscsi lat mean/p99 us "
        "| qcow IOPS | sg / pscsi | sg / qcow | tcmu-sg CPU s / 100k I/O | tcmu-runner CPU s / 100k I/O |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for j in jobs:
        s, p, q = j["sg"], j["pscsi"], j["qcow"]
        lines.append(
            f"| {j['job']} | {s['iops']:.0f} | {s['mbps']:.1f} | {s['lat_mean_us']:.0f} / {s['lat_p99_us']:.0f} "
            f"| {p['iops']:.0f} | {p['lat_mean_us']:.0f} / {p['lat_p99_us']:.0f} | {q['iops']:.0f} "
            f"| **{ratio(s['iops'], p['iops']):.2f}** | {ratio(s['iops'], q['iops']):.2f} "
            f"| {s.get('cpu_s_per_100k_io', 0):.1f} | {q.get('cpu_s_per_100k_io', 0):.1f} |")
    rss = d.get("rss_kib")
    if rss:
        lines += [
            "",
            "Daemon memory (KiB, /proc/PID/status; Rings = the resident part of "
            "the /dev/uioN ring mappings, from /proc/PID/smaps, counted in RssFile; "
            "the target counts VmRSS without them):",
            "",
            "| devices | VmRSS | without rings | rings | RssAnon | RssFile | RssShmem |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n in ("1", "16"):
            r = rss[n]
            lines.append(f"| {n} | {r['VmRSS']} | **{r.get('WithoutRings', '-')}** | {r.get('Rings', '-')} "
                         f"| {r['RssAnon']} | {r['RssFile']} | {r['RssShmem']} |")
        lines.append("")
        lines.append(f"With 16 devices the daemon had {rss['threads_at_16']} threads.")
    lines += ["", "![ratios](performance.svg)", ""]
    notes = os.path.join(os.path.dirname(md), "performance-notes.md")
    if os.path.exists(notes):
        lines += [open(notes).read()]
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
