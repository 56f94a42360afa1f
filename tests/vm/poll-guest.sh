#!/usr/bin/env bash
# The --poll-us lever: 4k randread at QD1 and QD16 through one tcmu-sg LUN
# with polling off, 200 us and 1000 us, and the daemon's CPU ticks. Run:
#   tests/vm/run-vm.sh tests/vm/poll-guest.sh "$PWD/target/release/tcmu-sg"
set -uo pipefail
B=$1
for m in sd_mod sg target_core_user tcm_loop; do modprobe $m; done
modprobe scsi_debug dev_size_mb=256 delay=0
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
for p in 0 200 1000; do
$B run --no-dbus --poll-us $p > /tmp/d.log 2>&1 &
D=$!
sleep 0.5
L=$($B export --name q /dev/sda)
for qd in 1 16; do
  c0=$(awk '{print $14+$15}' /proc/$D/stat)
  fio --name=x --filename=$L --rw=randread --bs=4k --iodepth=$qd --ioengine=libaio --direct=1 --runtime=3 --time_based --size=128M --output-format=terse | awk -F';' '{printf "poll_us='$p' qd='$qd' iops=%s lat_mean_us=%s ", $8, $40}'
  c1=$(awk '{print $14+$15}' /proc/$D/stat); echo "cpu_ticks=$((c1-c0))"
done
$B unexport --name q; kill $D; wait $D
done
