#!/usr/bin/env bash
# What a command costs each handler, and what it does: fio 4k at QD16 on
# a tcmu-sg LUN and on a tcmu-runner user:qcow LUN, each over a scsi_debug
# disk that answers inline, with the SCSI commands that reached that disk
# (its iorequest_cnt) and the handler's CPU per I/O. tcmu-runner's qcow
# handler opens its image without O_DIRECT, so its I/O can stay in the
# guest's page cache; the bench's CPU comparison needs this to be read
# right. Last, fio issues the same SG_IO itself on the block node: the
# floor. Run:
#   bash tests/vm/run-vm.sh tests/vm/runner-compare-guest.sh "$PWD/target/release/tcmu-sg"
set -euo pipefail
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"
scsi_debug_luns dev_size_mb=512 max_luns=2 delay=0
start_tcmu_runner "$ROOT"
"$BIN" run --no-dbus > /vm-out/sg.log 2>&1 &
SGPID=$!
sleep 1
SG=$("$BIN" export --name b0 "${DISKS[0]}")
QC=$(qcow_lun "${DISKS[1]}")
RUNNER=$(pgrep -x tcmu-runner)
cnt() { printf '%d' "$(cat /sys/block/${1#/dev/}/device/iorequest_cnt)"; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
for rw in randread randwrite; do
    for which in sg qcow; do
        lun=$SG; disk=${DISKS[0]}; pid=$SGPID
        [ $which = qcow ] && lun=$QC && disk=${DISKS[1]} && pid=$RUNNER
        # A first pass: both handlers have touched the range before the
        # measured one.
        fio --name=w --filename=$lun --rw=$rw --bs=4k --iodepth=16 --ioengine=libaio --direct=1 --size=64M \
            --runtime=2 --time_based --output-format=json > /dev/null
        n0=$(cnt $disk); c0=$(cpu $pid)
        fio --name=m --filename=$lun --rw=$rw --bs=4k --iodepth=16 --ioengine=libaio --direct=1 --size=64M \
            --runtime=3 --time_based --output-format=json > /tmp/f.json
        n1=$(cnt $disk); c1=$(cpu $pid)
        read -r iops ios < <(fio_rate /tmp/f.json)
        echo "RESULT $which $rw QD16 inline: IOPS $iops, fio I/Os $ios, commands at the backing disk $((n1 - n0)), handler CPU $(( (c1 - c0) * 10000 / ios )) us per I/O"
    done
done
# The floor: the same SG_IO issued by fio itself on the block node (fio's
# sg engine, synchronous), so the process's CPU per I/O is SG_IO's and
# fio's own, without TCMU.
"$BIN" unexport --name b0
for rw in randread randwrite; do
    n0=$(cnt ${DISKS[0]})
    fio --name=d --filename=${DISKS[0]} --rw=$rw --bs=4k --iodepth=1 --ioengine=sg --size=64M \
        --runtime=3 --time_based --output-format=json > /tmp/f.json
    n1=$(cnt ${DISKS[0]})
    python3 - /tmp/f.json "$((n1 - n0))" "$rw" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index('{'):])['jobs'][0]
ios = j['read']['total_ios'] + j['write']['total_ios']
per_io = lambda pct: round(pct / 100 * j['elapsed'] * 1e6 / ios)
print(f"RESULT direct {sys.argv[3]} SG_IO from fio: IOPS {round(ios / j['elapsed'])}, fio I/Os {ios}, "
      f"commands at the backing disk {sys.argv[2]}, fio CPU {per_io(j['usr_cpu'] + j['sys_cpu'])} us per I/O "
      f"(kernel {per_io(j['sys_cpu'])}, user {per_io(j['usr_cpu'])})")
PY
done
kill -TERM $SGPID; wait $SGPID || true
echo "runner-compare: done"
