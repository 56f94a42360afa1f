#!/usr/bin/env bash
# The initiator VM of tests/vm/gateways.sh. It holds the shared storage (a
# LIO ramdisk exported over iSCSI to both gateways, each on its own
# nexus, and seen here through tcm_loop as a host outside the map), then
# logs in to both gateways and drives everything under dm-multipath:
#   1. one map, two active paths, the storage's WWID; VPD 0x83, TPGS,
#      REPORT TARGET PORT GROUPS and the alua handler consistent
#   2. a gateway powered off and booted again under fio verify
#   3. a gateway's daemon killed (kill -9, no restart) under fio verify
#   4. a gateway's daemon stopped past cmd_time_out while the initiator
#      writes through the other: nothing LIO failed back runs afterwards
#   5. mpathpersist through both paths fences the host outside the map
#
#   gw-initiator.sh TCMU_SG_BINARY BASE_PORT
set -uo pipefail
BIN=$1; BASE=$2
HERE=$(cd "$(dirname "$0")" && pwd)
SGIO="python3 $HERE/sgio.py"
S=/vm-share
LOG=/vm-out/multipathd.log
SUITE=gateways
STORAGE=iqn.2026-11.org.tcmu-sg:storage
. "$HERE/lib.sh"
t0=$(date +%s)
at() { echo "[$(( $(date +%s) - t0 )) s]"; }
# ask GATEWAY WHAT: a gateway does WHAT to its daemon (see gw-gateway.sh)
ask() { rm -f "$S/$1-done-$2"; touch "$S/$1-do-$2"; wait_for 30 test -e "$S/$1-done-$2"; }

for m in sd_mod sg dm_multipath dm_round_robin target_core_mod target_core_iblock iscsi_target_mod \
         tcm_loop iscsi_tcp scsi_dh_alua; do
    modprobe $m
done
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
/lib/systemd/systemd-udevd --daemon 2>/dev/null
# targetcli wants a system bus (it asks D-Bus for user: backstores).
mkdir -p /run/dbus && dbus-daemon --system --fork

# --- the shared storage -------------------------------------------------------
targetcli /backstores/ramdisk create name=shared size=256M > /dev/null
targetcli /iscsi create $STORAGE > /dev/null
targetcli /iscsi/$STORAGE/tpg1/luns create /backstores/ramdisk/shared > /dev/null
for g in gw1 gw2; do
    targetcli /iscsi/$STORAGE/tpg1/acls create iqn.2026-11.org.tcmu-sg:$g > /dev/null
done
targetcli /loopback create naa.5001405feedface1 > /dev/null
targetcli /loopback/naa.5001405feedface1/luns create /backstores/ramdisk/shared > /dev/null
udevadm settle
OUTSIDE=$(lsscsi | awk '/LIO-ORG/ && / shared / {print $NF; exit}')
[ -b "$OUTSIDE" ] || { bad "the storage seen through tcm_loop"; finish; }
WWID=$(/lib/udev/scsi_id -g -u -d "$OUTSIDE")
echo "$(at) storage: ramdisk over iSCSI ($STORAGE), outside the map at $OUTSIDE, WWID $WWID"
touch $S/storage-ready

# --- the gateways, and one map of them --------------------------------------
mkdir -p /run/lock/iscsi /var/lib/iscsi /etc/iscsi
echo "InitiatorName=iqn.2026-11.org.tcmu-sg:initiator" > /etc/iscsi/initiatorname.iscsi
# A dead path fails fast (NOP-Outs every 5 s find a silent portal within
# 10 s; its commands fail 10 s later), a slow one does not flap (three
# VMs share this machine's two cores under TCG: a gateway can be off the
# CPU for seconds).
cat > /etc/iscsi/iscsid.conf <<'EOF'
node.startup = manual
node.session.timeo.replacement_timeout = 10
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 10
node.session.err_timeo.abort_timeout = 5
node.session.err_timeo.lu_reset_timeout = 10
EOF
iscsid || bad "iscsid starts"
wait_for 900 bash -c "test -e $S/gw1-ready-first && test -e $S/gw2-ready-first" \
    || { bad "both gateways ready"; finish; }
echo "$(at) gateways ready"
for n in 1 2; do
    iqn=$(cat $S/gw$n-iqn)
    iscsiadm -m node -T "$iqn" -p 10.0.2.2:$((BASE + n)) -o new > /dev/null
    iscsiadm -m node -T "$iqn" -p 10.0.2.2:$((BASE + n)) --login > /dev/null 2>&1 || bad "log in to gw$n"
done
udevadm settle
# Both gateways' disks answer with the storage's WWID before multipathd
# starts: under TCG a gateway can take seconds over its first commands,
# and multipathd leaves a path it could not identify at start-up out of
# the map until a later event (one CI run saw the checks below start
# with one path).
gw_disks() {
    local d
    for d in $(lsscsi | awk '/LIO-ORG/ && / shared / {print $NF}'); do
        [ "$d" != "$OUTSIDE" ] && [ "$(/lib/udev/scsi_id -g -u -d "$d")" = "$WWID" ] && echo "$d"
    done
}
two_gw_disks() { [ "$(gw_disks | wc -l)" -eq 2 ]; }
check "both gateways' disks answer with the storage's WWID" wait_for 120 two_gw_disks
echo "$(at) gateways' disks: $(gw_disks | tr '\n' ' ')"
# multipath.conf as the users' guide gives it for tcmu-sg gateways.
cat > /etc/multipath.conf <<'EOF'
defaults {
    user_friendly_names yes
    find_multipaths no
    polling_interval 2
}
overrides {
    path_grouping_policy multibus
    path_checker tur
    no_path_retry 30
    fast_io_fail_tmo 10
    dev_loss_tmo 600
}
blacklist {
    devnode "^OUTSIDE_HERE$"
}
multipaths {
    multipath {
        wwid WWID_HERE
        alias shared
    }
}
EOF
# Only the gateways' paths belong in the map: the host outside it is
# blacklisted by name.
sed -i "s/WWID_HERE/$WWID/; s/OUTSIDE_HERE/${OUTSIDE#/dev/}/" /etc/multipath.conf
multipathd -d -s > $LOG 2>&1 &
MPD=$!
MAP=/dev/mapper/shared
check "one map of the two gateways' paths" wait_for 30 test -b $MAP
paths() { multipathd show paths format "%d %t %T" 2>/dev/null | awk 'NR > 1 && $1 != "" {print}'; }
check "  two active paths" wait_for 60 bash -c "[ \$(multipathd show paths format '%d %t %T' | grep -c 'active ready') -eq 2 ]"
multipath -ll 2>/dev/null
PATHS=($(paths | awk '{print "/dev/"$1}'))
check "  under the storage's WWID" bash -c "multipath -ll shared | grep -q '($WWID)'"
# What the initiator sees of target ports: the storage's, the same on both
# paths (tcmu-sg passes INQUIRY and VPD pages; LIO on the gateways passes
# ALUA and reservations with alua_support=0 and pgr_support=0).
vpd83() { sg_vpd -p di "$1" 2>&1; }
check "VPD 0x83 identical on both paths (the storage's LU and port designators)" \
    [ "$(vpd83 "${PATHS[0]}")" = "$(vpd83 "${PATHS[1]}")" ]
check "  naming the storage's logical unit" bash -c "sg_vpd -p di ${PATHS[0]} | grep -qi '${WWID:1}'"
tpgs() { sg_inq "$1" 2>&1 | grep -o 'TPGS=[0-9]'; }
check "INQUIRY's TPGS identical on both paths and the storage's ($(tpgs "${PATHS[0]}"))" \
    bash -c "[ '$(tpgs "${PATHS[0]}")' = '$(tpgs "${PATHS[1]}")' ] && [ '$(tpgs "${PATHS[0]}")' = '$(tpgs "$OUTSIDE")' ]"
rtpg() { sg_rtpg "$1" 2>&1; }
check "REPORT TARGET PORT GROUPS identical on both paths (the storage's port groups)" \
    [ "$(rtpg "${PATHS[0]}")" = "$(rtpg "${PATHS[1]}")" ]
rtpg "${PATHS[0]}" | head -8
check "the alua device handler on both paths" \
    bash -c "for p in ${PATHS[*]}; do [ \"\$(cat /sys/block/\${p#/dev/}/device/dh_state)\" = alua ] || exit 1; done"

# fio_map NAME SECONDS: fio writing and verifying through the map in the
# background (FIO_PID); its longest completion latency is the longest
# stall an application saw.
fio_map() {
    fio --name="$1" --filename=$MAP --rw=randwrite --bs=4k --iodepth=8 --ioengine=libaio --direct=1 \
        --offset=16M --size=32M --time_based --runtime="$2" --verify=crc32c --verify_backlog=64 \
        --verify_fatal=1 --output-format=json --output="/vm-out/fio-$1.json" > /dev/null 2>&1 &
    FIO_PID=$!
}
fio_passed() { # NAME RC: fio exited 0 and reports no error
    [ "$2" -eq 0 ] && fio_ok "$1"
}
fio_ok() { # NAME: no error, no verify error
    python3 - "/vm-out/fio-$1.json" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index('{'):])["jobs"][0]
stall = max(j["write"]["clat_ns"]["max"], j["read"]["clat_ns"]["max"]) / 1e9
print(f"{j['write']['total_ios']} writes, {j['read']['total_ios']} verifying reads, "
      f"error {j['error']}, longest stall {stall:.1f} s")
sys.exit(j["error"] != 0)
PY
}
path_of() { # GATEWAY: its path's sd name
    local s
    for s in /sys/class/iscsi_session/session*; do
        grep -q ":gw${1#gw}$" "$s/targetname" || continue
        ls "$s"/device/target*/*/block/ 2>/dev/null | head -1
    done
}
state_of() { paths | awk -v d="$(path_of "$1")" '$1 == d {print $2}'; }

# --- 2. a gateway powered off, then booted again -----------------------------
fio_map poweroff 50
sleep 8
echo "$(at) powering gw1 off"; touch $S/host-poweroff-gw1
wait_for 60 test -e $S/host-powered-off-gw1
t_off=$(date +%s.%N)
check "gw1's path fails" wait_for 60 bash -c "[ \"\$(multipathd show paths format '%d %t' | grep -c active)\" -eq 1 ]"
echo "$(at) gw1's path failed $(python3 -c "print(round($(date +%s.%N) - $t_off, 1))") s after the power-off"
wait $FIO_PID; rc=$?
check "fio verify through the map carries on without an error" fio_passed poweroff $rc
rm -f $S/gw1-ready-reboot
echo "$(at) booting gw1 again"; touch $S/host-boot-gw1
wait_for 600 test -e $S/gw1-ready-reboot || bad "gw1 boots again"
t_boot=$(date +%s.%N)
check "  and its path returns by itself once it is up" \
    wait_for 120 bash -c "[ \"\$(multipathd show paths format '%d %t %T' | grep -c 'active ready')\" -eq 2 ]"
echo "$(at) gw1's path back $(python3 -c "print(round($(date +%s.%N) - $t_boot, 1))") s after its services were up"
iscsiadm -m session -P 1 2>/dev/null | grep -E "Target:|Current Portal|iSCSI Session State|Internal iscsid"

# --- 3. a daemon killed with no restart -----------------------------------------
fio_map kill9 40
sleep 5
ask gw2 kill9
t_kill=$(date +%s.%N)
check "kill -9 of gw2's daemon: its path fails" \
    wait_for 40 bash -c "[ \"\$(multipathd show paths format '%d %t' | grep -c active)\" -eq 1 ]"
echo "$(at) gw2's path failed $(python3 -c "print(round($(date +%s.%N) - $t_kill, 1))") s after the kill (cmd_time_out 18 s)"
wait $FIO_PID; rc=$?
check "  fio verify carries on through gw1 without an error" fio_passed kill9 $rc
ask gw2 start
check "  gw2's daemon started again: its path returns" \
    wait_for 60 bash -c "[ \"\$(multipathd show paths format '%d %t %T' | grep -c 'active ready')\" -eq 2 ]"

# --- 4. a stalled daemon ----------------------------------------------------------
# gw1's daemon stops; a fio pass through the map hangs on gw1's path until
# LIO fails its commands back (18 s), the path fails over, a second pass
# writes newer data everywhere through gw2; the daemon resumes. The
# region must read the same on the storage before and after the resume
# (a stale WRITE of the first pass would change it), and hold the second
# pass's data.
pass() { # SEED [DEV] [fio options]: one verified pass of 4 MiB 4k random writes
    local seed=$1 dev=${2:-$MAP}; shift 2 2>/dev/null || shift $#
    fio --name=s --filename="$dev" --rw=randwrite --bs=4k --offset=64M --size=4M --iodepth=16 \
        --ioengine=libaio --direct=1 --verify=crc32c --verify_fatal=1 --randseed="$seed" "$@" \
        --output="/vm-out/stall-$seed.txt" > /dev/null 2>&1 && grep -q 'err= 0' "/vm-out/stall-$seed.txt"
}
region() { dd if="$OUTSIDE" bs=1M skip=64 count=4 iflag=direct of="$1" 2>/dev/null; }
# The pass over the stall must send writes to gw1: the map's service-time
# selector sends a request to the path with the fewest bytes in flight, and
# once (CI, gw1 just rebooted) it sent that pass nothing through gw1, so the
# phase tested nothing. gw2's path is failed in dm while the pass starts, so
# its first 16 writes go to the stalled gw1, and reinstated 3 s later.
writes_of() { local d; d=$(path_of "$1"); awk '{print $5 + $9}' "/sys/block/$d/stat"; }
echo "$(at) before the stall: $(dmsetup status shared)"
w1=$(writes_of gw1)
gw2_dev=$(cat "/sys/block/$(path_of gw2)/dev")
ask gw1 stop
dmsetup message shared 0 "fail_path $gw2_dev"
pass 101 & PASS_PID=$!
sleep 3
dmsetup message shared 0 "reinstate_path $gw2_dev"
wait $PASS_PID; r1=$?
g1=$(state_of gw1)
w1=$(( $(writes_of gw1) - w1 ))
echo "$(at) after the pass over the stall: gw1's path took $w1 writes; $(dmsetup status shared)"
pass 201; r2=$?
region /tmp/before
ask gw1 cont
sleep 4
region /tmp/after
changed=$(python3 -c 'import sys; a, b = (open(f, "rb").read() for f in sys.argv[1:]); print(sum(a[i:i+4096] != b[i:i+4096] for i in range(0, len(a), 4096)))' /tmp/before /tmp/after)
pass 201 "$OUTSIDE" --verify_only; r3=$?
echo "$(at) stall: pass over it rc $r1 (gw1's path $g1), newer pass rc $r2, blocks the resume changed: $changed, the storage holds the newer pass: rc $r3"
check "a daemon stalled past cmd_time_out: the path fails over and both passes verify" \
    bash -c "[ $w1 -gt 0 ] && [ $r1 -eq 0 ] && [ '$g1' = failed ] && [ $r2 -eq 0 ]"
check "  nothing LIO failed back ran after the resume (the storage unchanged by it)" [ "$changed" = 0 ]
check "  the shared LUN holds the newest data" [ $r3 -eq 0 ]
check "  and gw1's path returns" \
    wait_for 60 bash -c "[ \"\$(multipathd show paths format '%d %t %T' | grep -c 'active ready')\" -eq 2 ]"

# --- 5. reservations through the map ------------------------------------------------
KEY=0x123abc
mpathpersist --out --register --param-sark=$KEY $MAP > /dev/null 2>&1
regs=$(mpathpersist --in -k $MAP 2>/dev/null | grep -c "$KEY")
check "mpathpersist registers the key through both paths (2 registrations at the storage)" [ "$regs" -eq 2 ]
mpathpersist --out --reserve --param-rk=$KEY --prout-type=5 $MAP > /dev/null 2>&1
check "  and reserves Write Exclusive, Registrants Only" \
    bash -c "mpathpersist --in -r $MAP 2>/dev/null | grep -qi 'write exclusive, registrants only'"
OSG=$(sg_of "$OUTSIDE")
head -c 4096 /dev/urandom > /tmp/blk
w=$($SGIO run "$OSG" 2a000000000000000800 --out /tmp/blk)
check "  the host outside the map is fenced: its WRITE gets RESERVATION CONFLICT" grep -q '"status": 24,' <<< "$w"
check "  while it may read" grep -q '"status": 0,' <<< "$($SGIO run "$OSG" 28000000000000000800 --in 4096)"
check "  and the map writes" dd if=/tmp/blk of=$MAP bs=4k count=1 oflag=direct status=none
mpathpersist --out --release --param-rk=$KEY --prout-type=5 $MAP > /dev/null 2>&1
w=$($SGIO run "$OSG" 2a000000000000000800 --out /tmp/blk)
check "released: the outside host writes again" grep -q '"status": 0,' <<< "$w"
mpathpersist --out --register --param-rk=$KEY --param-sark=0 $MAP > /dev/null 2>&1

dmesg > /vm-out/initiator-dmesg.txt
kill $MPD 2>/dev/null
multipath -F > /dev/null 2>&1
iscsiadm -m node --logout > /dev/null 2>&1
finish
