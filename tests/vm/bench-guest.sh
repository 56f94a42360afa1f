#!/usr/bin/env bash
# The benchmark, inside the VM: three LUNs through tcm_loop in one boot,
#   sg    tcmu-sg over a scsi_debug disk
#   pscsi LIO's in-kernel passthrough over a second scsi_debug disk
#   qcow  tcmu-runner's user:qcow over a preallocated qcow2 image on tmpfs
# then fio on each (tests/vm/bench.py), and the daemon's RSS with 1 and 16
# devices. Results: /vm-out/bench.json.
#
#   bench-guest.sh TCMU_SG_BINARY LIO_HELPER
set -euo pipefail
BIN=$1
LIO=$2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"
# delay=0: scsi_debug answers at once, so the LUNs measure the path, not a
# simulated disk. 18 LUNs: two for the benchmark, 16 for the RSS figure.
scsi_debug_luns dev_size_mb=512 max_luns=18 delay=0
echo "scsi_debug: ${#DISKS[@]} disks"

mkdir -p /run/dbus /etc/dbus-1/system.d /var/log
cp "$ROOT/packaging/dbus/tcmu-sg.conf" /etc/dbus-1/system.d/
dbus-daemon --system --fork
tcmu-runner > /vm-out/tcmu-runner.log 2>&1 &
for _ in $(seq 100); do
    dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetNameOwner \
        string:org.kernel.TCMUService1 >/dev/null 2>&1 && break
    sleep 0.1
done
"$BIN" run > /vm-out/tcmu-sg-bench.log 2>&1 &
SGPID=$!
sleep 1

SG=$("$BIN" export --name b0 "${DISKS[0]}")
PS=$("$LIO" pscsi p0 "${ADDRS[1]}" naa.5001405dddddddd1)
qemu-img create -q -f qcow2 -o preallocation=full /dev/shm/q0.qcow2 512M
# hw_max_sectors=2048: let tcmu-runner take 1 MiB commands like the others
# (its default, 128 sectors, makes the initiator split at 64 KiB).
targetcli /backstores/user:qcow create name=q0 size=512M cfgstring=/dev/shm/q0.qcow2 \
    hw_max_sectors=2048 2>&1 | grep -v Warning | grep -v 'warn(' || true
targetcli /loopback create naa.5001405eeeeeeee1 >/dev/null 2>&1
targetcli /loopback/naa.5001405eeeeeeee1/luns create /backstores/user:qcow/q0 >/dev/null 2>&1
a=$(cat /sys/kernel/config/target/loopback/naa.5001405eeeeeeee1/tpgt_1/address)
for _ in $(seq 100); do ls /sys/class/scsi_device/$a:0/device/block/ >/dev/null 2>&1 && break; sleep 0.1; done
QC=/dev/$(ls /sys/class/scsi_device/$a:0/device/block/)
RUNNER=$(pgrep -x tcmu-runner)
echo "LUNs: sg=$SG pscsi=$PS qcow=$QC"
for d in "$SG" "$PS" "$QC"; do
    # The initiator's 1 MiB single-command limit on tcm_loop (256 segments).
    q=/sys/block/${d#/dev/}/queue
    echo 1024 > $q/max_sectors_kb 2>/dev/null || true
    echo "$d: max_sectors_kb $(cat $q/max_sectors_kb), scheduler $(cat $q/scheduler)"
done

python3 "$HERE/bench.py" --sg "$SG" --pscsi "$PS" --qcow "$QC" --sg-pid "$SGPID" \
    --runner-pid "$RUNNER" --tcmu-sg "$BIN" --out /vm-out/bench.json

# RSS with 1 and 16 devices.
# The rings (mappings of /dev/uioN) are counted apart: the target leaves
# them out.
rss() {
    grep -E '^(VmRSS|RssAnon|RssFile|RssShmem):' /proc/$SGPID/status | awk '{printf "%s ", $2}'
    awk '/^[0-9a-f]+-[0-9a-f]+ /{ring = ($6 ~ /^\/dev\/uio/)} /^Rss:/{if (ring) r += $2} END {print r + 0}' /proc/$SGPID/smaps
}
one=$(rss)
for i in $(seq 2 16); do
    "$BIN" export --name r$i "${DISKS[$i]}" > /dev/null
done
sleep 1
sixteen=$(rss)
ndev=$(cat /sys/class/uio/*/name | grep -c '/sg/')
nthreads=$(ls /proc/$SGPID/task | wc -l)
python3 - "$one" "$sixteen" "$ndev" "$nthreads" <<'EOF'
import json, sys
keys = ["VmRSS", "RssAnon", "RssFile", "RssShmem", "Rings"]
one = dict(zip(keys, map(int, sys.argv[1].split())))
sixteen = dict(zip(keys, map(int, sys.argv[2].split())))
for r in (one, sixteen):
    r["WithoutRings"] = r["VmRSS"] - r["Rings"]
d = json.load(open("/vm-out/bench.json"))
d["rss_kib"] = {"1": one, "16": sixteen, "devices_at_16": int(sys.argv[3]), "threads_at_16": int(sys.argv[4])}
json.dump(d, open("/vm-out/bench.json", "w"), indent=1)
EOF
for i in $(seq 2 16); do "$BIN" unexport --name r$i; done
"$BIN" unexport --name b0
kill -TERM $SGPID; wait $SGPID || true
echo "bench: done"
