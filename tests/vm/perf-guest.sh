#!/usr/bin/env bash
# Where the CPU goes under load: perf samples the whole guest (cpu-clock)
# while fio drives N tcmu-sg LUNs, then N LIO pscsi LUNs, with the same
# job (one fio job per LUN), and prints flat profiles by command and by
# symbol, with the daemon's context switches per command. Run:
#   tests/vm/run-vm.sh tests/vm/perf-guest.sh "$PWD/target/release/tcmu-sg" \
#       "$PWD/target/release/examples/lio" [RW BS QD [LATENCY [N]]]
#   (default randwrite 4k 16 delay=0 1; LATENCY is a scsi_debug setting
#   such as delay=1 or ndelay=100000; N=8 with 4k randread QD32 delay=1
#   is the benchmark's 8-device aggregate)
set -euo pipefail
BIN=$1
LIO=$2
RW=${3:-randwrite}
BS=${4:-4k}
QD=${5:-16}
LATENCY=${6:-delay=0}
N=${7:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
scsi_debug_luns dev_size_mb=512 max_luns=$((2 * N)) "$LATENCY"
"$BIN" run --no-dbus > /tmp/daemon.log 2>&1 &
SGPID=$!
sleep 0.5
SGS=(); PSS=()
for i in $(seq 0 $((N - 1))); do
    SGS+=("$("$BIN" export --name f$i "${DISKS[$i]}")")
    PSS+=("$("$LIO" pscsi pf$i "${ADDRS[$((N + i))]}" "naa.5001405dddddd3$(printf %02d $i)")")
done
echo 0 > /proc/sys/kernel/kptr_restrict
echo -1 > /proc/sys/kernel/perf_event_paranoid
ctxt() { { cat /proc/$SGPID/task/*/status 2>/dev/null || true; } | awk '/ctxt_switches/{s += $2} END {print s + 0}'; }
for which in sg pscsi; do
    luns=("${SGS[@]}"); [ $which = pscsi ] && luns=("${PSS[@]}")
    jobs=()
    for i in "${!luns[@]}"; do
        echo 1024 > "/sys/block/${luns[$i]#/dev/}/queue/max_sectors_kb"
        jobs+=(--name="j$i" --filename="${luns[$i]}")
    done
    c0=$(ctxt)
    perf record -q -a -e cpu-clock -F 2000 -o /tmp/perf-$which.data -- \
        fio --rw="$RW" --bs="$BS" --iodepth="$QD" --ioengine=libaio --direct=1 --runtime=3 \
        --time_based --size=64M --group_reporting --output-format=json "${jobs[@]}" > /tmp/fio-$which.json ||
        { echo "perf-guest: fio on $which failed:"; cat /tmp/fio-$which.json; exit 1; }
    c1=$(ctxt)
    read -r iops ios < <(fio_rate /tmp/fio-$which.json)
    echo "== $which $RW $BS QD$QD $LATENCY x$N LUNs: IOPS $iops"
    if [ $which = sg ]; then
        echo "-- daemon: $((c1 - c0)) context switches for $ios commands ($(python3 -c "print(round($((c1 - c0)) / max(1, $ios), 2))") per command), $(ls /proc/$SGPID/task | wc -l) threads now"
    fi
    echo "-- by command"
    perf report -q -i /tmp/perf-$which.data --stdio --no-children --sort comm 2>/dev/null | head -12 || true
    echo "-- by symbol (top 40)"
    perf report -q -i /tmp/perf-$which.data --stdio --no-children --sort comm,sym 2>/dev/null | head -40 || true
done
for i in $(seq 0 $((N - 1))); do "$BIN" unexport --name f$i; done
kill -TERM $SGPID; wait $SGPID || true
