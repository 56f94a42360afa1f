#!/usr/bin/env bash
# The levers, inside one VM boot: the same fio jobs through a tcmu-sg LUN
# set up several ways (an earlier binary, --in-order, TCMU ring settings,
# CPU affinity), each next to LIO pscsi over a second scsi_debug disk.
# Results: one JSON object per job in /vm-out/levers.jsonl. Run with
# tests/vm/levers, which prints the table.
#
#   levers-guest.sh TCMU_SG_BINARY LIO_HELPER [BASELINE_BINARY|-] [SET] [LATENCY]
# SET: all (default), ab (the baseline, this binary and this binary with
# its threads on one CPU, alternated three times; 4k jobs and 1M read) or
# ab-large (the same with 64k and 1M reads and writes), or no-rwlock (this
# binary and pscsi, 3 alternations, over a scsi_debug without its store
# lock).
# LATENCY: a scsi_debug latency for every job, e.g. delay=1 (4 ms) or
# ndelay=100000 (100 us); default delay=0 (inline).
# LEVERS_IDLE=N: every daemon also serves N more devices, idle, as the
# bench's daemon does (its aggregate and JBOD LUNs), so that their cost
# shows in the measured device's jobs.
set -euo pipefail
BIN=$1
LIO=$2
OLD=${3:-}
[ "$OLD" = - ] && OLD=
SET=${4:-all}
LATENCY=${5:--}
[ "$LATENCY" = - ] && LATENCY=
[ -f /vm-out/levers.env ] && . /vm-out/levers.env
RUNTIME=${LEVERS_RUNTIME:-3}
IDLE=${LEVERS_IDLE:-0}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
SDOPTS=()
# no-rwlock: the same, with scsi_debug not locking its store (writes
# otherwise take it exclusively).
[ "$SET" = no-rwlock ] && SDOPTS=(no_rwlock=1)
scsi_debug_luns dev_size_mb=512 max_luns=$((2 + IDLE)) delay=0 "${SDOPTS[@]}"
if [ -n "$LATENCY" ]; then
    echo "${LATENCY#*=}" > "/sys/bus/pseudo/drivers/scsi_debug/${LATENCY%%=*}"
    echo "levers: scsi_debug $LATENCY"
fi
PS=$("$LIO" pscsi p1 "${ADDRS[1]}" naa.5001405dddddddd1)
OUT=/vm-out/levers.jsonl
: > $OUT

JOBS=("randread 4k 1" "randwrite 4k 16" "randwrite 4k 64" "read 1M 4" "write 1M 4")
prep() { echo 1024 > /sys/block/${1#/dev/}/queue/max_sectors_kb 2>/dev/null || true; }
# The daemon's context switches so far (threads alive now; one that
# retired during a job takes its count with it).
# A thread may retire between the glob and its read: cat then fails, which
# must not end the script (pipefail, set -e).
switches() { { cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/ctxt_switches/{s += $2} END {print s + 0}'; }
# measure LABEL LUN PID|- [FIO CPU]
measure() {
    local label=$1 lun=$2 pid=$3 cpu=${4:-} pin=()
    [ -n "$cpu" ] && pin=(taskset -c "$cpu")
    prep "$lun"
    for j in "${JOBS[@]}"; do
        set -- $j
        local c0=0 c1=0 s0=0 s1=0
        [ "$pid" != - ] && c0=$(awk '{print $14+$15}' /proc/$pid/stat) && s0=$(switches "$pid")
        local r
        r=$("${pin[@]}" fio --name=l --filename="$lun" --rw="$1" --bs="$2" --iodepth="$3" \
            --ioengine=libaio --direct=1 --runtime="$RUNTIME" --time_based --size=256M \
            --output-format=terse | awk -F';' -v rw="$1" '{ if (rw ~ /read/) print $8, $40; else print $49, $81 }')
        [ "$pid" != - ] && c1=$(awk '{print $14+$15}' /proc/$pid/stat) && s1=$(switches "$pid")
        set -- $j $r
        printf '{"config":"%s","job":"%s %s QD%s","iops":%s,"lat_us":%s,"cpu_ticks":%s,"switches":%s,"seconds":%s}\n' \
            "$label" "$1" "$2" "$3" "$4" "$5" "$((c1 - c0))" "$((s1 - s0))" "$RUNTIME" | tee -a $OUT
    done
}
# with_sg LABEL BINARY "DAEMON ARGS" "EXPORT ARGS" [DAEMON CPU] [FIO CPU]
with_sg() {
    local label=$1 bin=$2 dargs=$3 eargs=$4 dcpu=${5:-} fcpu=${6:-}
    # shellcheck disable=SC2086
    "$bin" run --no-dbus $dargs > "/vm-out/levers-$label.log" 2>&1 &
    local pid=$!
    sleep 0.5
    [ -n "$dcpu" ] && taskset -a -p -c "$dcpu" $pid > /dev/null
    local lun i
    for ((i = 0; i < IDLE; i++)); do "$BIN" export --name idle$i "${DISKS[$((2 + i))]}" > /dev/null; done
    # shellcheck disable=SC2086
    lun=$("$BIN" export --name lv "${DISKS[0]}" $eargs)
    measure "$label" "$lun" $pid "$fcpu"
    "$BIN" unexport --name lv
    for ((i = 0; i < IDLE; i++)); do "$BIN" unexport --name idle$i; done
    kill -TERM $pid; wait $pid || true
}

if [ "$SET" = no-rwlock ]; then
    JOBS=("randread 4k 16" "randwrite 4k 16" "randwrite 4k 64" "write 64k 4")
    for _ in 1 2 3; do
        measure pscsi "$PS" -
        with_sg default "$BIN" "" ""
    done
elif [ "$SET" = ab ] || [ "$SET" = ab-large ]; then
    JOBS=("randread 4k 1" "randread 4k 16" "randwrite 4k 64" "read 1M 4")
    [ "$SET" = ab-large ] && JOBS=("read 64k 4" "write 64k 4" "read 1M 4" "write 1M 4")
    for _ in 1 2 3; do
        measure pscsi "$PS" -
        [ -n "$OLD" ] && with_sg before "$OLD" "" ""
        with_sg default "$BIN" "" ""
        with_sg daemon-cpu1 "$BIN" "" "" 1
    done
else
    measure pscsi "$PS" -
    [ -n "$OLD" ] && with_sg before "$OLD" "" ""
    with_sg default "$BIN" "" ""
    with_sg in-order "$BIN" "--in-order" ""
    with_sg pages-per-blk-4 "$BIN" "" "--control data_pages_per_blk=4"
    with_sg data-area-64m "$BIN" "" "--control max_data_area_mb=64"
    with_sg hw-max-sectors-2048 "$BIN" "" "--control hw_max_sectors=2048"
    with_sg cmd-time-out-0 "$BIN" "" "--attrib cmd_time_out=0"
    with_sg workers-4 "$BIN" "--workers 4" ""
    with_sg poll-200us "$BIN" "--poll-us 200" ""
    measure pscsi-fio-cpu1 "$PS" - 1
    with_sg same-cpu "$BIN" "" "" 1 1
    with_sg other-cpu "$BIN" "" "" 1 0
    measure pscsi "$PS" -
fi
"$LIO" remove-pscsi p1 naa.5001405dddddddd1 > /dev/null 2>&1 || true
echo "levers: done"
