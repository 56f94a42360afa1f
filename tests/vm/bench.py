#!/usr/bin/env python3
"""fio over the three LUNs of the benchmark (run inside the VM by
bench-guest.sh). Each job runs BENCH_RUNS times per LUN, LUNs interleaved
run by run so drift hits all three alike; the median run is reported."""
import argparse
import json
import os
import statistics
import subprocess
import time

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
RUNTIME = int(os.environ.get("BENCH_RUNTIME", "4"))

# name, rw, bs, iodepth
JOBS = [
    ("4k randread QD1", "randread", "4k", 1),
    ("4k randread QD16", "randread", "4k", 16),
    ("4k randread QD64", "randread", "4k", 64),
    ("4k randwrite QD1", "randwrite", "4k", 1),
    ("4k randwrite QD16", "randwrite", "4k", 16),
    ("4k randwrite QD64", "randwrite", "4k", 64),
    ("64k read QD4", "read", "64k", 4),
    ("64k write QD4", "write", "64k", 4),
    ("1M read QD4", "read", "1M", 4),
    ("1M write QD4", "write", "1M", 4),
    ("8M write QD2 (split)", "write", "8M", 2),
]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime are fields 14 and 15 (1-based); after the ')' split they
    # are at index 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fio(dev, rw, bs, qd):
    cmd = [
        "fio", "--name=b", f"--filename={dev}", f"--rw={rw}", f"--bs={bs}",
        f"--iodepth={qd}", "--ioengine=libaio", "--direct=1", "--size=256M",
        f"--runtime={RUNTIME}", "--ramp_time=1", "--time_based",
        "--randrepeat=0", "--norandommap", "--output-format=json",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    j = json.loads(out[out.index("{"):])["jobs"][0]
    side = j["read"] if rw in ("read", "randread") else j["write"]
    clat = side.get("clat_ns", {})
    return {
        "iops": side["iops"],
        "mbps": side["bw_bytes"] / 1e6,
        "lat_mean_us": side["lat_ns"]["mean"] / 1000,
        "lat_p99_us": clat.get("percentile", {}).get("99.000000", 0) / 1000,
        "ios": side["total_ios"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sg", required=True)
    ap.add_argument("--pscsi", required=True)
    ap.add_argument("--qcow", required=True)
    ap.add_argument("--sg-pid", type=int, required=True)
    ap.add_argument("--runner-pid", type=int, required=True)
    ap.add_argument("--tcmu-sg", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    luns = {"sg": a.sg, "pscsi": a.pscsi, "qcow": a.qcow}
    pids = {"sg": a.sg_pid, "qcow": a.runner_pid}
    results = []
    for name, rw, bs, qd in JOBS:
        split = "split" in name
        if split:
            # Below the 1 MiB commands the initiator sends: each is split.
            subprocess.run([a.tcmu_sg, "set-config", "--name", "b0",
                            f"sg/{sg_backing(a.sg)};max_xfer_kb=512"], check=True)
            time.sleep(1.5)
        runs = {k: [] for k in luns}
        cpu = {k: [] for k in pids}
        for _ in range(RUNS):
            for k, dev in luns.items():
                c0 = cpu_seconds(pids[k]) if k in pids else 0
                r = fio(dev, rw, bs, qd)
                if k in pids:
                    used = cpu_seconds(pids[k]) - c0
                    cpu[k].append(used / max(r["ios"], 1) * 100_000)
                runs[k].append(r)
        if split:
            subprocess.run([a.tcmu_sg, "set-config", "--name", "b0",
                            f"sg/{sg_backing(a.sg)}"], check=True)
            time.sleep(1.5)
        row = {"job": name}
        for k, rs in runs.items():
            med = sorted(rs, key=lambda r: r["iops"])[len(rs) // 2]
            row[k] = med
            row[k]["iops_runs"] = [round(r["iops"], 1) for r in rs]
        for k, c in cpu.items():
            row[k]["cpu_s_per_100k_io"] = statistics.median(c)
        results.append(row)
        print(f"{name:22s} sg {row['sg']['iops']:9.1f}  pscsi {row['pscsi']['iops']:9.1f}  "
              f"qcow {row['qcow']['iops']:9.1f}  sg/pscsi {row['sg']['iops'] / row['pscsi']['iops']:.2f}",
              flush=True)
    info = {
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%d"),
        "runs": RUNS,
        "runtime_s": RUNTIME,
        "jobs": results,
    }
    with open(a.out, "w") as f:
        json.dump(info, f, indent=1)


_backing = {}


def sg_backing(lun):
    """The backing device of the tcmu-sg LUN, from its uio name."""
    if "b" not in _backing:
        for u in os.listdir("/sys/class/uio"):
            name = open(f"/sys/class/uio/{u}/name").read().strip()
            if name.startswith("tcm-user/1/b0/sg/"):
                _backing["b"] = name.split("/sg/", 1)[1].split(";")[0]
    return _backing["b"]


if __name__ == "__main__":
    main()
