#!/usr/bin/env bash
# The release A/B, inside one VM boot: the queued small-I/O jobs through a
# tcmu-sg LUN served by each binary given (the previous release's, this
# tree's, ...), each run next to LIO pscsi over a second scsi_debug disk,
# at each backing latency, several runs each; the binaries' order turns
# from run to run. Results: one JSON object per job in /vm-out/rab.jsonl,
# which tests/vm/release_ab_report.py turns into medians and spreads.
# Run with tests/vm/release-ab.
#
#   release-ab-guest.sh LIO_HELPER LABEL=BINARY...
#   (/vm-out/rab.env: RAB_RUNS, RAB_RUNTIME, RAB_LATENCIES, RAB_JOBS)
set -euo pipefail
LIO=$1; shift
[ -f /vm-out/rab.env ] && . /vm-out/rab.env
RUNS=${RAB_RUNS:-5}
RUNTIME=${RAB_RUNTIME:-4}
LATENCIES=${RAB_LATENCIES:-delay=1 ndelay=100000 delay=0}
IFS=, read -r -a JOBS <<< "${RAB_JOBS:-randread 4k 1,randread 4k 16,randwrite 4k 16,randwrite 4k 64}"
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
LABELS=(); BINS=()
for a in "$@"; do LABELS+=("${a%%=*}"); BINS+=("${a#*=}"); done
scsi_debug_luns dev_size_mb=512 max_luns=2 delay=0
PS=$("$LIO" pscsi p1 "${ADDRS[1]}" naa.5001405dddddddd1)
OUT=/vm-out/rab.jsonl
: > $OUT
SD=/sys/bus/pseudo/drivers/scsi_debug
# A thread may retire between the glob and its read.
switches() { { cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/ctxt_switches/{s += $2} END {print s + 0}'; }
# measure CONFIG LATENCY RUN LUN PID|-
measure() {
    local config=$1 latency=$2 run=$3 lun=$4 pid=$5 j
    echo 1024 > /sys/block/${lun#/dev/}/queue/max_sectors_kb 2>/dev/null || true
    for j in "${JOBS[@]}"; do
        set -- $j
        local c0=0 c1=0 s0=0 s1=0 r
        [ "$pid" != - ] && c0=$(awk '{print $14+$15}' /proc/$pid/stat) && s0=$(switches "$pid")
        r=$(fio --name=r --filename="$lun" --rw="$1" --bs="$2" --iodepth="$3" --ioengine=libaio \
            --direct=1 --runtime="$RUNTIME" --time_based --size=256M --output-format=terse \
            | awk -F';' -v rw="$1" '{ if (rw ~ /read/) print $8, $40; else print $49, $81 }')
        [ "$pid" != - ] && c1=$(awk '{print $14+$15}' /proc/$pid/stat) && s1=$(switches "$pid")
        set -- $j $r
        printf '{"config":"%s","latency":"%s","run":%s,"job":"%s %s QD%s","iops":%s,"lat_us":%s,"cpu_ticks":%s,"switches":%s,"seconds":%s}\n' \
            "$config" "$latency" "$run" "$1" "$2" "$3" "$4" "$5" "$((c1 - c0))" "$((s1 - s0))" "$RUNTIME" >> $OUT
    done
}
# with_sg LABEL BINARY LATENCY RUN
with_sg() {
    local pid lun
    "$2" run --no-dbus > "/vm-out/rab-$1.log" 2>&1 &
    pid=$!
    sleep 0.5
    lun=$("$2" export --name ab "${DISKS[0]}")
    measure "$1" "$3" "$4" "$lun" $pid
    "$2" unexport --name ab
    kill -TERM $pid; wait $pid || true
}
for lat in $LATENCIES; do
    echo "${lat#*=}" > "$SD/${lat%%=*}"
    echo "release-ab: scsi_debug $lat"
    for ((run = 1; run <= RUNS; run++)); do
        measure pscsi "$lat" $run "$PS" -
        n=${#BINS[@]}
        for ((k = 0; k < n; k++)); do
            i=$(( (k + run) % n ))
            with_sg "${LABELS[$i]}" "${BINS[$i]}" "$lat" $run
        done
        echo "release-ab: $lat run $run done"
    done
done
# RAB_PROFILE=1: once more per binary and latency, the first job with the
# daemon's system calls counted by perf (one line per binary).
if [ -n "${RAB_PROFILE:-}" ]; then
    echo -1 > /proc/sys/kernel/perf_event_paranoid
    SYSCALLS=ioctl,epoll_wait,epoll_pwait,futex,read,write,ppoll,poll,clock_gettime,sched_yield,timerfd_settime
    events=$(echo "$SYSCALLS" | tr ',' '\n' | sed 's/^/syscalls:sys_enter_/' | paste -sd, -)
    for lat in $LATENCIES; do
        echo "${lat#*=}" > "$SD/${lat%%=*}"
        for i in "${!BINS[@]}"; do
            "${BINS[$i]}" run --no-dbus > "/vm-out/rab-${LABELS[$i]}.log" 2>&1 &
            pid=$!
            sleep 0.5
            lun=$("${BINS[$i]}" export --name ab "${DISKS[0]}")
            echo 1024 > /sys/block/${lun#/dev/}/queue/max_sectors_kb 2>/dev/null || true
            set -- ${JOBS[0]}
            # perf follows the threads that exist when it attaches: the
            # crew is grown first by a second of the same job.
            fio --name=w --filename="$lun" --rw="$1" --bs="$2" --iodepth="$3" --ioengine=libaio \
                --direct=1 --runtime=1 --time_based --size=256M > /dev/null 2>&1
            perf stat -x, -e "$events,context-switches,task-clock" -p $pid -o /tmp/perf.csv -- \
                fio --name=p --filename="$lun" --rw="$1" --bs="$2" --iodepth="$3" --ioengine=libaio \
                --direct=1 --runtime="$RUNTIME" --time_based --size=256M --output-format=terse \
                > /tmp/fio.txt 2>/dev/null
            # Commands: IOPS x runtime (fields 8, 9 for reads; 49, 50 for writes).
            ios=$(awk -F';' -v rw="$1" '{ if (rw ~ /read/) print int($8 * $9 / 1000); else print int($49 * $50 / 1000) }' /tmp/fio.txt)
            python3 - "${LABELS[$i]}" "$lat" "$1 $2 QD$3" "$ios" /tmp/perf.csv >> $OUT <<'PY'
import json, sys
label, lat, job, ios = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4] or 0)
counts = {}
for line in open(sys.argv[5]):
    f = line.strip().split(",")
    if len(f) > 2 and not line.startswith("#") and f[0].replace(".", "").isdigit():
        counts[f[2].replace("syscalls:sys_enter_", "")] = float(f[0])
print(json.dumps({"profile": label, "latency": lat, "job": job, "commands": ios, "counts": counts}))
PY
            "${BINS[$i]}" unexport --name ab
            kill -TERM $pid; wait $pid || true
        done
    done
fi
"$LIO" remove-pscsi p1 naa.5001405dddddddd1 > /dev/null 2>&1 || true
echo "release-ab: done"
