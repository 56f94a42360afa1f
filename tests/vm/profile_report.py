#!/usr/bin/env python3
"""Breaks a QD1 command's time into steps from the traces that
tests/vm/profile-guest.sh writes.

Each command is the window from one scsi_dispatch_cmd_start on the
initiator's (tcm_loop) host to the next. In that window the report looks
for a sequence of markers, each the first matching event after the
previous marker, and prints the median time of each step, the CPU it ran
on, and how often the step was found.

    profile_report.py OUT_DIR
"""
import re
import statistics
import sys

LINE = re.compile(r"^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(.*)$")


def parse(path):
    evs = []
    for line in open(path, errors="replace"):
        if line.startswith("#"):
            continue
        m = LINE.match(line)
        if not m:
            continue
        comm, pid, cpu, ts, rest = m.groups()
        if rest.startswith(("sys_enter", "sys_exit", "sched_", "scsi_", "cpu_idle",
                            "reschedule_entry", "call_function_single_entry")):
            name, _, args = rest.partition(": ")
            name = name.rstrip(":")
        else:  # function tracer: "func <-parent"
            name, _, args = rest.partition(" <-")
            name = "fn:" + name.strip()
        evs.append((float(ts) * 1e6, comm, int(pid), int(cpu), name, args))
    return evs


def field(args, key):
    m = re.search(r"\b" + key + r"=(\S+)", args)
    return m.group(1) if m else None


def syscall_no(args):
    m = re.search(r"NR (\d+)", args)
    return int(m.group(1)) if m else None


def is_daemon(comm):
    return comm.startswith(("dev-uio", "sg-worker"))


def markers(kind, init_host, back_host):
    """(label, predicate) in the order they happen for one command."""
    def scsi(name, host):
        return lambda e: e[4] == name and field(e[5], "host_no") == str(host)

    def fn(f):
        return lambda e: e[4] == "fn:" + f

    def daemon_sys(which, nr=None):
        return lambda e: e[4] == which and is_daemon(e[1]) and (nr is None or syscall_no(e[5]) == nr)

    wake_daemon = lambda e: e[4] == "sched_wakeup" and re.search(r"comm=(dev-uio|sg-worker)", e[5])
    run_daemon = lambda e: e[4] == "sched_switch" and re.search(r"next_comm=(dev-uio|sg-worker)", e[5])
    wake_fio = lambda e: e[4] == "sched_wakeup" and "comm=fio" in e[5]
    fio_back = lambda e: e[4] == "sys_exit" and e[1] == "fio"
    common_head = [
        ("initiator dispatch (tcm_loop queuecommand)", scsi("scsi_dispatch_cmd_start", init_host)),
    ]
    common_tail = [
        ("target_complete_cmd", fn("target_complete_cmd")),
        ("kworker: target_complete_ok_work", fn("target_complete_ok_work")),
        ("tcm_loop_queue_data_in/status",
         lambda e: e[4] in ("fn:tcm_loop_queue_data_in", "fn:tcm_loop_queue_status")),
        ("initiator scsi_done", scsi("scsi_dispatch_cmd_done", init_host)),
        ("fio woken", wake_fio),
        ("fio back in userspace", fio_back),
    ]
    if kind == "sg":
        mid = [
            ("tcmu_queue_cmd", fn("tcmu_queue_cmd")),
            ("uio_event_notify", fn("uio_event_notify")),
            ("daemon thread woken", wake_daemon),
            ("daemon thread on CPU", run_daemon),
            ("daemon: poll returns", daemon_sys("sys_exit")),
            ("daemon: SG_IO ioctl entered", daemon_sys("sys_enter", 16)),
            ("backing dispatch", scsi("scsi_dispatch_cmd_start", back_host)),
            ("backing scsi_done", scsi("scsi_dispatch_cmd_done", back_host)),
            ("daemon: SG_IO returns", daemon_sys("sys_exit", 16)),
            ("daemon: uio write entered", daemon_sys("sys_enter", 1)),
            ("tcmu_irqcontrol", fn("tcmu_irqcontrol")),
            ("tcmu_handle_completions (then the data-in copy)", fn("tcmu_handle_completions")),
        ]
    else:
        mid = [
            ("pscsi_execute_cmd", fn("pscsi_execute_cmd")),
            ("backing dispatch", scsi("scsi_dispatch_cmd_start", back_host)),
            ("backing scsi_done", scsi("scsi_dispatch_cmd_done", back_host)),
            ("pscsi_req_done", fn("pscsi_req_done")),
        ]
    return common_head + mid + common_tail


def analyse(evs, kind, init_host, back_host):
    ms = markers(kind, init_host, back_host)
    start = ms[0][1]
    starts = [i for i, e in enumerate(evs) if start(e)]
    steps = {label: [] for label, _ in ms}
    cpus = {label: [] for label, _ in ms}
    cycles = []
    idle_exits = []
    ipis = []
    for a, b in zip(starts, starts[1:]):
        window = evs[a:b]
        t0 = window[0][0]
        cycles.append(evs[b][0] - t0)
        prev_t, j = t0, 1
        for label, pred in ms[1:]:
            for k in range(j, len(window)):
                if pred(window[k]):
                    steps[label].append(window[k][0] - prev_t)
                    cpus[label].append(window[k][3])
                    prev_t, j = window[k][0], k + 1
                    break
        idle_exits.append(sum(1 for e in window if e[4] == "cpu_idle" and "state=4294967295" in e[5]))
        ipis.append(sum(1 for e in window if e[4] in ("reschedule_entry", "call_function_single_entry")))
    return ms, steps, cpus, cycles, idle_exits, ipis


def main():
    out = sys.argv[1]
    meta = {}
    for line in open(f"{out}/profile-meta.txt"):
        k, _, v = line.strip().partition(" ")
        meta.setdefault(k, []).append(v)
    back = meta["backing_hosts"][0].split()
    job = meta["job"][0]
    print(f"QD1 {job}, one command = one tcm_loop dispatch to the next; "
          "medians over the traced commands (TCG: compare, don't read absolutely)\n")
    for kind, back_host in (("sg", back[0]), ("pscsi", back[1])):
        info = dict(kv.split("=", 1) for kv in meta[kind][0].split())
        traced = meta[kind][1].split("=", 1)[1]
        evs = parse(f"{out}/trace-{kind}.txt")
        ms, steps, cpus, cycles, idle_exits, ipis = analyse(evs, kind, info["host"], back_host)
        n = len(cycles)
        print(f"## {kind}: {info['lun']} (IOPS {info['iops_untraced']} untraced, {traced} traced; "
              f"{n} commands)\n")
        print("| step (time since the previous step) | median us | found | CPU (most often) |")
        print("|---|---:|---:|---:|")
        total = 0.0
        for label, _ in ms[1:]:
            v = steps[label]
            if not v:
                print(f"| {label} | - | 0 | - |")
                continue
            med = statistics.median(v)
            total += med
            cpu = statistics.mode(cpus[label])
            print(f"| {label} | {med:.1f} | {len(v)} | {cpu} |")
        if cycles:
            print(f"| **whole cycle** (dispatch to next dispatch) | **{statistics.median(cycles):.1f}** | {n} | |")
            print(f"\nsum of step medians {total:.1f} us; idle exits per command "
                  f"{statistics.median(idle_exits)}, IPIs per command {statistics.median(ipis)}\n")


if __name__ == "__main__":
    main()
