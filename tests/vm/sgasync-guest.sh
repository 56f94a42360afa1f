#!/usr/bin/env bash
# The async sg interface against synchronous SG_IO with a thread per
# command, measured straight on a scsi_debug disk with fio's sg engine
# (issue 8 asked for this measurement before choosing a dispatch):
#   async  /dev/sgN, one thread, iodepth 16: write() to queue, poll() and
#          read() to reap (the interface a never-blocking dispatcher would
#          use; sg copies the data through its own buffer)
#   sync   /dev/sdX, 16 threads each with one SG_IO in flight (what
#          tcmu-sg's leader/followers does: zero copy, a thread per command)
# Reports IOPS and the whole VM's CPU per command (/proc/stat, busy ticks):
# the backing device's own work is the same in both, so the difference is
# the interface's. Run:
#   tests/vm/run-vm.sh tests/vm/sgasync-guest.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
scsi_debug_luns dev_size_mb=256 max_luns=1 delay=1
SD=/sys/bus/pseudo/drivers/scsi_debug
DISK=${DISKS[0]}
SG=$(sg_of "$DISK")
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
run() { # NAME FILE JOBS DEPTH RW BS
    local b0 b1 ios iops
    b0=$(busy)
    fio --name="$1" --filename="$2" --ioengine=sg --thread --numjobs="$3" --iodepth="$4" \
        --rw="$5" --bs="$6" --size=128M --runtime=4 --time_based --group_reporting \
        --output-format=json > /tmp/sga.json || { echo "sgasync: fio $1 on $2 failed:"; cat /tmp/sga.json; exit 1; }
    b1=$(busy)
    read -r iops ios < <(fio_rate /tmp/sga.json)
    printf '%-8s %-6s %-9s %-4s  IOPS %7s  VM CPU us/command %6s\n' "$LAT" "$1" "$5" "$6" "$iops" \
        "$(python3 -c "print(round(($b1 - $b0) * 1e6 / $(getconf CLK_TCK) / max(1, $ios)))")"
}
for lat in "delay=1" "delay=0 ndelay=100000" "ndelay=0 delay=0"; do
    for kv in $lat; do echo "${kv#*=}" > "$SD/${kv%%=*}"; done
    LAT=$(case $lat in delay=1) echo 4ms;; *100000*) echo 100us;; *) echo inline;; esac)
    for w in "randread 4k" "randwrite 4k" "read 1M"; do
        set -- $w
        depth=16; [ "$2" = 1M ] && depth=4
        run async "$SG" 1 "$depth" "$1" "$2"
        run sync "$DISK" "$depth" 1 "$1" "$2"
    done
done
