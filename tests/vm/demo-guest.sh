#!/usr/bin/env bash
# The demo, inside the VM: a scsi_debug disk served by tcmu-sg and seen by
# the initiator through tcm_loop.
set -euo pipefail
BIN=$1
say() { printf '\n== %s\n' "$*"; }
for m in sd_mod sg target_core_user tcm_loop; do modprobe "$m"; done
modprobe scsi_debug dev_size_mb=256
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
sleep 0.5
BACK=/dev/$(ls /sys/class/scsi_device/"$(lsscsi | awk '/scsi_debug/{print $1; exit}' | tr -d '[]')"/device/block/)
say "backing device $BACK"
"$BIN" check-config "sg/$BACK"
"$BIN" run > /vm-out/tcmu-sg.log 2>&1 &
DAEMON=$!
sleep 0.5
say "tcmu-sg export --name d0 $BACK"
LUN=$("$BIN" export --name d0 "$BACK")
echo "initiator device: $LUN"
cat /sys/class/uio/uio*/name
say "lsscsi"
lsscsi -g
say "sg_inq $LUN"
sg_inq "$LUN" | head -12
say "sg_readcap -l $LUN"
sg_readcap -l "$LUN"
say "fio: 4k random read/write, QD16, 10 s (TCG: absolute numbers mean little)"
fio --name=demo --filename="$LUN" --rw=randrw --bs=4k --direct=1 --ioengine=libaio \
    --iodepth=16 --runtime=10 --time_based --size=128M --group_reporting | grep -E 'IOPS|lat \(usec\): min' | head -4
say "medium error injected on the backing device; READ(10) through the LUN"
echo 2 > /sys/bus/pseudo/drivers/scsi_debug/opts
sg_raw -r 4096 "$LUN" 28 00 00 00 12 30 00 00 08 00 2>&1 | head -12 || true
echo 0 > /sys/bus/pseudo/drivers/scsi_debug/opts
say "teardown"
"$BIN" unexport --name d0
kill -TERM $DAEMON; wait $DAEMON
echo "daemon log:"; cat /vm-out/tcmu-sg.log
