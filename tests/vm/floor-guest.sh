#!/usr/bin/env bash
# What a TCMU handler cannot avoid on this machine, inside one VM boot:
# the ring round trip of a handler that completes every command at once
# (examples/floor.rs, one thread, no backing I/O), and the SG_IO a
# passthrough must send (fio's own sg engine on the backing disk); beside
# them tcmu-sg and LIO pscsi over the same kind of scsi_debug disk. For
# each: IOPS, the handler's CPU per command and the whole guest's, the
# handler's context switches per command. Results: /vm-out/floor.jsonl,
# turned into a table by tests/vm/floor_report.py. Run with tests/vm/floor.
#
#   floor-guest.sh TCMU_SG_BINARY LIO_HELPER FLOOR_BINARY
#   (/vm-out/floor.env: FLOOR_RUNS, FLOOR_RUNTIME, FLOOR_LATENCIES)
set -euo pipefail
BIN=$1; LIO=$2; FLOOR=$3
[ -f /vm-out/floor.env ] && . /vm-out/floor.env
RUNS=${FLOOR_RUNS:-3}
RUNTIME=${FLOOR_RUNTIME:-4}
LATENCIES=${FLOOR_LATENCIES:-delay=0 ndelay=100000}
JOBS=("randread 4k 1" "randread 4k 16" "randwrite 4k 16" "randwrite 4k 64")
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
scsi_debug_luns dev_size_mb=512 max_luns=3 delay=0
SD=/sys/bus/pseudo/drivers/scsi_debug
OUT=/vm-out/floor.jsonl
: > $OUT
PS=$("$LIO" pscsi p1 "${ADDRS[1]}" naa.5001405dddddddd1)
"$FLOOR" fl0 2> /vm-out/floor.log &
FPID=$!
FL=$("$LIO" user fl0 floor/x 256 naa.5001405fffffff01)
"$BIN" run --no-dbus > /vm-out/floor-tcmu-sg.log 2>&1 &
SPID=$!
sleep 0.5
SG=$("$BIN" export --name s0 "${DISKS[0]}")
for d in "$PS" "$FL" "$SG"; do echo 1024 > /sys/block/${d#/dev/}/queue/max_sectors_kb 2>/dev/null || true; done
echo "floor: pscsi $PS, floor $FL, tcmu-sg $SG, the backing disk ${DISKS[2]} for fio's own SG_IO"
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
switches() { { cat /proc/"$1"/task/*/status 2>/dev/null || true; } | awk '/ctxt_switches/{s += $2} END {print s + 0}'; }
# measure CONFIG LATENCY RUN DEV PID|- [fio options]
measure() {
    local config=$1 latency=$2 run=$3 dev=$4 pid=$5 j; shift 5
    for j in "${JOBS[@]}"; do
        set -- $j "$@"
        local rw=$1 bs=$2 qd=$3; shift 3
        local c0=0 c1=0 s0=0 s1=0 b0 b1 r
        [ "$pid" != - ] && c0=$(awk '{print $14+$15}' /proc/$pid/stat) && s0=$(switches "$pid")
        b0=$(busy)
        r=$(fio --name=f --filename="$dev" --rw="$rw" --bs="$bs" --iodepth="$qd" --ioengine=libaio \
            --direct=1 --runtime="$RUNTIME" --time_based --size=256M "$@" --output-format=terse \
            | awk -F';' -v rw="$rw" 'NF > 50 { if (rw ~ /read/) print $8; else print $49 }')
        b1=$(busy)
        [ "$pid" != - ] && c1=$(awk '{print $14+$15}' /proc/$pid/stat) && s1=$(switches "$pid")
        printf '{"config":"%s","latency":"%s","run":%s,"job":"%s %s QD%s","iops":%s,"cpu_ticks":%s,"busy_ticks":%s,"switches":%s,"seconds":%s}\n' \
            "$config" "$latency" "$run" "$rw" "$bs" "$qd" "$r" "$((c1 - c0))" "$((b1 - b0))" \
            "$((s1 - s0))" "$RUNTIME" >> $OUT
    done
}
for lat in $LATENCIES; do
    echo "${lat#*=}" > "$SD/${lat%%=*}"
    for ((run = 1; run <= RUNS; run++)); do
        measure pscsi "$lat" $run "$PS" -
        measure floor "$lat" $run "$FL" $FPID
        measure tcmu-sg "$lat" $run "$SG" $SPID
        # fio's own SG_IO on a disk like the backing one: synchronous, one
        # command at a time, whatever the depth asked for.
        measure sg-io "$lat" $run "${DISKS[2]}" - --ioengine=sg
        echo "floor: $lat run $run done"
    done
done
"$BIN" unexport --name s0
kill $SPID $FPID 2>/dev/null; wait $SPID 2>/dev/null || true
"$LIO" remove-user fl0 naa.5001405fffffff01 > /dev/null 2>&1 || true
"$LIO" remove-pscsi p1 naa.5001405dddddddd1 > /dev/null 2>&1 || true
echo "floor: done"
