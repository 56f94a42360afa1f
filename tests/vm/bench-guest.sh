#!/usr/bin/env bash
# The benchmark, inside the VM. One scsi_debug host whose latency
# bench.py sets at run time backs every LUN, all through tcm_loop:
#   sg     tcmu-sg over a scsi_debug disk
#   pscsi  LIO's in-kernel passthrough over a second scsi_debug disk
#   qcow   tcmu-runner's user:qcow over a qcow2 image on a third
#   8 + 8  tcmu-sg and pscsi LUNs for the aggregate of 8 devices
# then fio on each (tests/vm/bench.py), and the daemon's threads and RSS
# with 1 and 16 devices, idle. Results: /vm-out/bench.json.
#
#   bench-guest.sh TCMU_SG_BINARY LIO_HELPER
set -euo pipefail
BIN=$1
LIO=$2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
. "$HERE/lib.sh"
[ -f /vm-out/bench.env ] && . /vm-out/bench.env
# 154 LUNs: 0 sg, 1 pscsi, 2 qcow, 3-10 the 8 tcmu-sg LUNs of the
# aggregate, 11-18 its 8 pscsi LUNs, 19-25 more tcmu-sg devices for the
# 16-device figures, 26-89 the 64 tcmu-sg LUNs of the JBOD case and 90-153
# its 64 pscsi LUNs. They share one 512 MiB store.
scsi_debug_luns dev_size_mb=512 max_luns=154 delay=0
echo "scsi_debug: ${#DISKS[@]} disks"

start_tcmu_runner "$ROOT"
"$BIN" run > /vm-out/tcmu-sg-bench.log 2>&1 &
SGPID=$!
sleep 1

SG=$("$BIN" export --name b0 "${DISKS[0]}")
PS=$("$LIO" pscsi p0 "${ADDRS[1]}" naa.5001405dddddddd1)
# The qcow2 image lives on a scsi_debug disk, so tcmu-runner sees the
# same latency.
QC=$(qcow_lun "${DISKS[2]}")
RUNNER=$(pgrep -x tcmu-runner)
AGG_SG=(); AGG_PS=()
for i in $(seq 0 7); do
    AGG_SG+=("$("$BIN" export --name a$i "${DISKS[$((3 + i))]}")")
    AGG_PS+=("$("$LIO" pscsi ap$i "${ADDRS[$((11 + i))]}" "naa.5001405ddddddd2$i")")
done
JB_SG=(); JB_PS=()
for i in $(seq 0 63); do
    JB_SG+=("$("$BIN" export --name jb$i "${DISKS[$((26 + i))]}")")
    JB_PS+=("$("$LIO" pscsi jp$i "${ADDRS[$((90 + i))]}" "naa.5001405dddddd4$(printf %02d $i)")")
done
echo "LUNs: sg=$SG pscsi=$PS qcow=$QC aggregate sg=${AGG_SG[*]} pscsi=${AGG_PS[*]}; JBOD ${#JB_SG[@]} + ${#JB_PS[@]}"
for d in "$SG" "$PS" "$QC" "${AGG_SG[@]}" "${AGG_PS[@]}"; do
    # The initiator's 1 MiB single-command limit on tcm_loop (256 segments).
    q=/sys/block/${d#/dev/}/queue
    echo 1024 > $q/max_sectors_kb 2>/dev/null || true
done
echo "$SG: max_sectors_kb $(cat /sys/block/${SG#/dev/}/queue/max_sectors_kb), scheduler $(cat /sys/block/${SG#/dev/}/queue/scheduler)"

python3 "$HERE/bench.py" --sg "$SG" --pscsi "$PS" --qcow "$QC" --sg-pid "$SGPID" \
    --agg-sg "$(IFS=,; echo "${AGG_SG[*]}")" --agg-pscsi "$(IFS=,; echo "${AGG_PS[*]}")" \
    --jbod-sg "$(IFS=,; echo "${JB_SG[*]}")" --jbod-pscsi "$(IFS=,; echo "${JB_PS[*]}")" \
    --runner-pid "$RUNNER" --tcmu-sg "$BIN" --out /vm-out/bench.json

# Threads and RSS of the idle daemon with 1 and 16 devices, once idle
# followers have retired. The rings (mappings of /dev/uioN) are counted
# apart: the target leaves them out.
rss() {
    grep -E '^(VmRSS|RssAnon|RssFile|RssShmem):' /proc/$SGPID/status | awk '{printf "%s ", $2}'
    awk '/^[0-9a-f]+-[0-9a-f]+ /{ring = ($6 ~ /^\/dev\/uio/)} /^Rss:/{if (ring) r += $2} END {printf "%d ", r + 0}' /proc/$SGPID/smaps
    # The page tables' count: VmRSS lags behind it in a process with many
    # threads (the kernel batches each thread's RSS counting).
    awk '/^Rss:/{printf "%d ", $2}' /proc/$SGPID/smaps_rollup
    ls /proc/$SGPID/task | wc -l
}
# The JBOD's 64 devices with the others (1 + 8), idle.
sleep 12
jbod=$(rss)
jbod_devices=$(cat /sys/class/uio/*/name | grep -c '/sg/')
for i in $(seq 0 63); do "$BIN" unexport --name jb$i; "$LIO" remove-pscsi jp$i "naa.5001405dddddd4$(printf %02d $i)"; done
for i in $(seq 0 7); do "$BIN" unexport --name a$i; done
sleep 12
one=$(rss)
for i in $(seq 0 7); do "$BIN" export --name a$i "${DISKS[$((3 + i))]}" > /dev/null; done
for i in $(seq 19 25); do "$BIN" export --name r$i "${DISKS[$i]}" > /dev/null; done
sleep 12
sixteen=$(rss)
ndev=$(cat /sys/class/uio/*/name | grep -c '/sg/')
python3 - "$one" "$sixteen" "$ndev" "$jbod" "$jbod_devices" <<'EOF2'
import json, sys
keys = ["VmRSS", "RssAnon", "RssFile", "RssShmem", "Rings", "SmapsRss", "Threads"]
one = dict(zip(keys, map(int, sys.argv[1].split())))
sixteen = dict(zip(keys, map(int, sys.argv[2].split())))
jbod = dict(zip(keys, map(int, sys.argv[4].split())))
for r in (one, sixteen, jbod):
    r["WithoutRings"] = r["SmapsRss"] - r["Rings"]
d = json.load(open("/vm-out/bench.json"))
d["rss_kib"] = {"1": one, "16": sixteen, "devices_at_16": int(sys.argv[3]),
                "threads_at_16": sixteen["Threads"], "jbod": jbod,
                "devices_at_jbod": int(sys.argv[5])}
json.dump(d, open("/vm-out/bench.json", "w"), indent=1)
EOF2
for i in $(seq 0 7); do "$BIN" unexport --name a$i; done
for i in $(seq 19 25); do "$BIN" unexport --name r$i; done
"$BIN" unexport --name b0
kill -TERM $SGPID; wait $SGPID || true
echo "bench: done"
