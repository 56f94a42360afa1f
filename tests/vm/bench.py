#!/usr/bin/env python3
"""fio over the benchmark's LUNs (run inside the VM by bench-guest.sh).

Every job runs at three backing-device latencies, set at run time on
scsi_debug (which backs all three LUNs): about 4 ms (delay=1, one jiffy),
100 us (ndelay=100000) and inline (delay=0: the device answers in the
submitter's context, which measures the handler's own cost but hides
whether commands overlap). Each job runs BENCH_RUNS times per LUN, LUNs
interleaved run by run so drift hits all alike; the median run is reported.
Then 8 tcmu-sg LUNs against 8 pscsi LUNs at once, 4k randread QD32 each, at
4 ms: the aggregate."""
import argparse
import json
import os
import resource
import statistics
import subprocess
import threading
import time

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
RUNTIME = int(os.environ.get("BENCH_RUNTIME", "4"))
SDEBUG = "/sys/bus/pseudo/drivers/scsi_debug"

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

# name, scsi_debug attribute, value
LATENCIES = [
    ("4 ms", "delay", 1),
    ("100 us", "ndelay", 100000),
    ("inline", "delay", 0),
]


def set_latency(attr, value):
    """scsi_debug refuses a change while commands are queued (EBUSY)."""
    for _ in range(100):
        try:
            with open(f"{SDEBUG}/{attr}", "w") as f:
                f.write(str(value))
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"cannot set scsi_debug {attr}={value}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime are fields 14 and 15 (1-based); after the ')' split they
    # are at index 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


class ThreadPeak:
    """Samples a process's thread count every 0.2 s while active."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.t = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, threads(self.pid))
            time.sleep(0.2)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.t.join()


def fio_cmd(devs, rw, bs, qd, size="256M"):
    cmd = [
        "fio", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}", "--ioengine=libaio",
        "--direct=1", f"--size={size}", f"--runtime={RUNTIME}", "--ramp_time=1",
        "--time_based", "--randrepeat=0", "--norandommap", "--output-format=json",
        "--group_reporting",
    ]
    for i, d in enumerate(devs):
        cmd += [f"--name=j{i}", f"--filename={d}"]
    return cmd


def guest_busy_seconds():
    """CPU time the whole guest spent not idle, all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def children_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def fio(devs, rw, bs, qd, pid=None, cmd=None):
    """One fio run; with `pid` (the handler's daemon, if any) also the
    guest CPU it took, split into the daemon's, the initiator's (fio, and
    the kernel work done in its context: the block layer, tcm_loop, LIO's
    submission, TCMU's queueing) and the rest of the kernel's (LIO, TCMU,
    tcm_loop and scsi_debug in interrupts and kernel threads)."""
    g0, f0 = guest_busy_seconds(), children_seconds()
    d0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd or fio_cmd(devs, rw, bs, qd), check=True, capture_output=True,
                         text=True).stdout
    d1 = cpu_seconds(pid) if pid else 0.0
    g1, f1 = guest_busy_seconds(), children_seconds()
    j = json.loads(out[out.index("{"):])["jobs"][0]
    side = j["read"] if rw in ("read", "randread") else j["write"]
    clat = side.get("clat_ns", {})
    ios = max(side["total_ios"], 1)
    daemon, initiator = d1 - d0, f1 - f0
    kernel = max(0.0, (g1 - g0) - daemon - initiator)
    return {
        "iops": side["iops"],
        "mbps": side["bw_bytes"] / 1e6,
        "lat_mean_us": side["lat_ns"]["mean"] / 1000,
        "lat_p99_us": clat.get("percentile", {}).get("99.000000", 0) / 1000,
        "ios": side["total_ios"],
        # Guest CPU per command, microseconds (the ramp second included).
        "cpu_us": {"daemon": daemon / ios * 1e6, "initiator": initiator / ios * 1e6,
                   "kernel": kernel / ios * 1e6},
    }


def median_run(rs):
    return sorted(rs, key=lambda r: r["iops"])[len(rs) // 2]


def many_devices(sg_devs, pscsi_devs, qd, sg_pid):
    """4k randread at `qd` on every tcmu-sg LUN at once, then on as many
    pscsi LUNs; RUNS of each, medians."""
    runs = {"sg": [], "pscsi": []}
    peak = 0
    for _ in range(RUNS):
        for k, devs in (("sg", sg_devs), ("pscsi", pscsi_devs)):
            with ThreadPeak(sg_pid) as tp:
                runs[k].append(fio(devs, "randread", "4k", qd, sg_pid if k == "sg" else None))
            if k == "sg":
                peak = max(peak, tp.peak)
    row = {"job": f"{len(sg_devs)} devices, 4k randread QD{qd} each, 4 ms",
           "sg_threads_peak": peak}
    for k, rs in runs.items():
        row[k] = median_run(rs)
        row[k]["iops_runs"] = [round(r["iops"], 1) for r in rs]
        row[k]["cpu_us"] = {p: statistics.median(r["cpu_us"][p] for r in rs)
                            for p in ("daemon", "initiator", "kernel")}
    print(f"{len(sg_devs)} devices: sg {row['sg']['iops']:.1f} pscsi {row['pscsi']['iops']:.1f} "
          f"ratio {row['sg']['iops'] / row['pscsi']['iops']:.2f} threads {peak}", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sg", required=True)
    ap.add_argument("--pscsi", required=True)
    ap.add_argument("--qcow", required=True)
    ap.add_argument("--agg-sg", required=True, help="comma-separated tcmu-sg LUNs")
    ap.add_argument("--agg-pscsi", required=True, help="comma-separated pscsi LUNs")
    ap.add_argument("--jbod-sg", default="", help="comma-separated tcmu-sg LUNs (64)")
    ap.add_argument("--jbod-pscsi", default="", help="comma-separated pscsi LUNs (64)")
    ap.add_argument("--sg-pid", type=int, required=True)
    ap.add_argument("--runner-pid", type=int, required=True)
    ap.add_argument("--tcmu-sg", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    luns = {"sg": [a.sg], "pscsi": [a.pscsi], "qcow": [a.qcow]}
    pids = {"sg": a.sg_pid, "qcow": a.runner_pid}
    results = []
    for lat, attr, value in LATENCIES:
        set_latency(attr, value)
        for name, rw, bs, qd in JOBS:
            split = "split" in name
            if split:
                # Below the 1 MiB commands the initiator sends: each is split.
                set_sg_config(a.tcmu_sg, f"sg/{sg_backing()};max_xfer_kb=512")
            runs = {k: [] for k in luns}
            cpu = {k: [] for k in pids}
            peak = 0
            for _ in range(RUNS):
                for k, devs in luns.items():
                    with ThreadPeak(a.sg_pid) as tp:
                        r = fio(devs, rw, bs, qd, pids.get(k))
                    if k == "sg":
                        peak = max(peak, tp.peak)
                    if k in pids:
                        cpu[k].append(r["cpu_us"]["daemon"] / 10)
                    runs[k].append(r)
            if split:
                set_sg_config(a.tcmu_sg, f"sg/{sg_backing()}")
            row = {"latency": lat, "job": name, "sg_threads_peak": peak}
            for k, rs in runs.items():
                row[k] = median_run(rs)
                row[k]["iops_runs"] = [round(r["iops"], 1) for r in rs]
                row[k]["cpu_us"] = {p: statistics.median(r["cpu_us"][p] for r in rs)
                                    for p in ("daemon", "initiator", "kernel")}
            for k, c in cpu.items():
                row[k]["cpu_s_per_100k_io"] = statistics.median(c)
            results.append(row)
            print(f"{lat:6s} {name:22s} sg {row['sg']['iops']:8.1f}  pscsi {row['pscsi']['iops']:8.1f}  "
                  f"qcow {row['qcow']['iops']:8.1f}  sg/pscsi {row['sg']['iops'] / row['pscsi']['iops']:.2f}  "
                  f"threads {peak}", flush=True)
    # 8 devices at once, then a JBOD on one gateway (64 devices), 4 ms.
    set_latency("delay", 1)
    aggregate = many_devices(a.agg_sg.split(","), a.agg_pscsi.split(","), 32, a.sg_pid)
    jbod = many_devices(a.jbod_sg.split(","), a.jbod_pscsi.split(","), 8, a.sg_pid) \
        if a.jbod_sg else None
    set_latency("delay", 0)
    info = {
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%d"),
        "runs": RUNS,
        "runtime_s": RUNTIME,
        "latencies": [lat for lat, _, _ in LATENCIES],
        "jobs": results,
        "aggregate": aggregate,
        "jbod": jbod,
    }
    with open(a.out, "w") as f:
        json.dump(info, f, indent=1)


def set_sg_config(binary, cfg):
    subprocess.run([binary, "set-config", "--name", "b0", cfg], check=True)
    time.sleep(1.5)


_backing = {}


def sg_backing():
    """The backing device of the tcmu-sg LUN b0, from its uio name."""
    if "b" not in _backing:
        for u in os.listdir("/sys/class/uio"):
            name = open(f"/sys/class/uio/{u}/name").read().strip()
            if name.startswith("tcm-user/1/b0/sg/"):
                _backing["b"] = name.split("/sg/", 1)[1].split(";")[0]
    return _backing["b"]


if __name__ == "__main__":
    main()
