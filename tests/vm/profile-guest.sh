#!/usr/bin/env bash
# Where a QD1 command's time goes: traces one fio job at QD1 through a
# tcmu-sg LUN and through a LIO pscsi LUN (both over scsi_debug, tcm_loop
# initiator) with ftrace (scheduler, syscall, SCSI and idle events plus the
# target functions on the path), and writes the raw traces to /vm-out for
# tests/vm/profile_report.py. Run with tests/vm/profile, which also prints
# the report.
#
#   profile-guest.sh TCMU_SG_BINARY LIO_HELPER RW BS [DAEMON ARGS...]
# (RW and BS as fio takes them: randread 4k, read 1M, ...)
set -euo pipefail
BIN=$1
LIO=$2
RW=$3
BS=$4
shift 4
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
mountpoint -q /sys/kernel/tracing || mount -t tracefs none /sys/kernel/tracing
scsi_debug_luns dev_size_mb=256 max_luns=2 delay=0
"$BIN" run --no-dbus "$@" > /vm-out/profile-daemon.log 2>&1 &
SGPID=$!
sleep 0.5
SG=$("$BIN" export --name p0 "${DISKS[0]}")
PS=$("$LIO" pscsi p1 "${ADDRS[1]}" naa.5001405dddddddd1)
for d in "$SG" "$PS"; do echo 1024 > "/sys/block/${d#/dev/}/queue/max_sectors_kb"; done
host_of() { readlink -f "/sys/block/${1#/dev/}/device" | sed 's#.*/\([0-9]*\):[0-9]*:[0-9]*:[0-9]*$#\1#'; }
T=/sys/kernel/tracing
echo mono > $T/trace_clock
echo 16384 > $T/buffer_size_kb
for f in tcm_loop_queuecommand tcmu_queue_cmd queue_cmd_ring uio_event_notify tcmu_irqcontrol \
         tcmu_handle_completions target_complete_cmd target_complete_ok_work \
         tcm_loop_queue_data_in tcm_loop_queue_status pscsi_execute_cmd pscsi_req_done; do
    echo "$f" >> $T/set_ftrace_filter || echo "profile: cannot trace $f"
done
for e in sched/sched_wakeup sched/sched_switch raw_syscalls/sys_enter raw_syscalls/sys_exit \
         scsi/scsi_dispatch_cmd_start scsi/scsi_dispatch_cmd_done power/cpu_idle \
         irq_vectors/reschedule_entry irq_vectors/call_function_single_entry; do
    echo 1 > $T/events/$e/enable || echo "profile: no event $e"
done
job() { fio --name=p --filename="$1" --rw="$RW" --bs="$BS" --iodepth=1 --ioengine=libaio \
        --direct=1 --runtime="$2" --time_based --size=128M --output-format=terse |
        awk -F';' -v rw="$RW" '{ print (rw ~ /read/) ? $8 : $49 }'; }
{
    echo "job $RW $BS"
    echo "backing_hosts $(host_of "${DISKS[0]}") $(host_of "${DISKS[1]}")"
    for which in sg pscsi; do
        lun=$SG; [ $which = pscsi ] && lun=$PS
        echo "$which lun=$lun host=$(host_of "$lun") iops_untraced=$(job "$lun" 3)"
        echo function > $T/current_tracer
        echo > $T/trace
        echo 1 > $T/tracing_on
        iops=$(job "$lun" 1)
        echo 0 > $T/tracing_on
        echo "$which iops_traced=$iops"
        cat $T/trace > "/vm-out/trace-$which.txt"
        echo nop > $T/current_tracer
    done
    echo "daemon_pid $SGPID"
    echo "daemon_threads $(for t in /proc/$SGPID/task/*; do echo -n "$(basename $t)=$(cat $t/comm) "; done)"
} | tee /vm-out/profile-meta.txt
"$BIN" unexport --name p0
"$LIO" remove-pscsi p1 naa.5001405dddddddd1 >/dev/null 2>&1 || true
kill -TERM $SGPID; wait $SGPID || true
echo "profile: done"
