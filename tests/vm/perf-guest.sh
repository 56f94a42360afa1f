#!/usr/bin/env bash
# Where the CPU goes under load: perf samples the whole guest (cpu-clock)
# while fio drives a tcmu-sg LUN, then a LIO pscsi LUN, with the same job,
# and prints flat profiles by command and by symbol. Run:
#   tests/vm/run-vm.sh tests/vm/perf-guest.sh "$PWD/target/release/tcmu-sg" \
#       "$PWD/target/release/examples/lio" [RW BS QD [LATENCY]]
#   (default randwrite 4k 16 inline; LATENCY is a scsi_debug setting such
#   as delay=1 or ndelay=100000)
set -euo pipefail
BIN=$1
LIO=$2
RW=${3:-randwrite}
BS=${4:-4k}
QD=${5:-16}
LATENCY=${6:-delay=0}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
scsi_debug_luns dev_size_mb=256 max_luns=2 "$LATENCY"
"$BIN" run --no-dbus > /tmp/daemon.log 2>&1 &
SGPID=$!
sleep 0.5
SG=$("$BIN" export --name f0 "${DISKS[0]}")
PS=$("$LIO" pscsi f1 "${ADDRS[1]}" naa.5001405dddddddd1)
echo 0 > /proc/sys/kernel/kptr_restrict
echo -1 > /proc/sys/kernel/perf_event_paranoid
for which in sg pscsi; do
    lun=$SG; [ $which = pscsi ] && lun=$PS
    echo 1024 > "/sys/block/${lun#/dev/}/queue/max_sectors_kb"
    perf record -q -a -e cpu-clock -F 2000 -o /tmp/perf-$which.data -- \
        fio --name=f --filename="$lun" --rw="$RW" --bs="$BS" --iodepth="$QD" --ioengine=libaio \
        --direct=1 --runtime=3 --time_based --size=128M --output-format=terse |
        awk -F';' -v rw="$RW" -v w=$which '{ print "== " w " '"$RW $BS QD$QD $LATENCY"' IOPS " ((rw ~ /read/) ? $8 : $49) }'
    if [ $which = sg ]; then
        echo "-- daemon context switches: $(cat /proc/$SGPID/task/*/status | awk '/ctxt_switches/{s += $2} END {print s}') (threads $(ls /proc/$SGPID/task | wc -l))"
    fi
    echo "-- by command"
    perf report -q -i /tmp/perf-$which.data --stdio --no-children --sort comm 2>/dev/null | head -12 || true
    echo "-- by symbol (top 40)"
    perf report -q -i /tmp/perf-$which.data --stdio --no-children --sort comm,sym 2>/dev/null | head -40 || true
done
"$BIN" unexport --name f0
kill -TERM $SGPID; wait $SGPID || true
