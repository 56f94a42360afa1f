#!/usr/bin/env bash
# A multipathed SAN unit behind the gateway, on the real kernel in one VM:
# a LIO ramdisk (real SPC-3 reservations) exported over iSCSI through two
# target port groups on two portals, logged in to by open-iscsi (two
# paths, two I_T nexuses), grouped by multipathd into the map "san"; a
# tcmu-sg LUN over /dev/mapper/san (pgr_support=0) exported back through
# tcm_loop as the initiator's disk; and a host outside the map (tcm_loop
# straight to the ramdisk) that writes "another way" and gets fenced.
#   1. the map is accepted: identity, limits, both paths, status; a path
#      given alone is refused with the map's name
#   2. fio verify through the LUN while each path fails in turn: its SCSI
#      device offline, its portal disabled, dm's fail_path; no error at
#      the initiator, the failover times printed
#   3. both portals disabled past cmd_time_out, newer data written another
#      way, the portals back: the initiator's older write never lands,
#      while the same write sent to the map's own node (which queues)
#      does, late
#   4. reservations on every path: a key registered through tcmu-sg is
#      held once per path, writes under Write Exclusive Registrants Only
#      go on while either path is down, the outside host stays fenced, a
#      path that missed a key change is registered again when it returns,
#      multipathd is told the key
#
#   e2e-mpath.sh TCMU_SG_BINARY
set -uo pipefail
BIN=${1:?usage: e2e-mpath.sh TCMU_SG_BINARY}
HERE=$(cd "$(dirname "$0")" && pwd)
SGIO="python3 $HERE/sgio.py"
LOG=/vm-out/tcmu-sg-mpath.log
SUITE="e2e-mpath ($(uname -r))"
SAN=iqn.2026-12.org.tcmu-sg:san
ME=iqn.2026-12.org.tcmu-sg:gateway
CT=/sys/kernel/config/target
. "$HERE/lib.sh"
t0=$(date +%s.%N)
at() { python3 -c "print(f'[{$(date +%s.%N) - $t0:.1f} s]')"; }
since() { python3 -c "print(round($(date +%s.%N) - $1, 1))"; }

for m in sd_mod sg dm_multipath dm_round_robin scsi_dh_alua target_core_mod target_core_user \
         iscsi_target_mod tcm_loop iscsi_tcp; do
    modprobe $m
done
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
/lib/systemd/systemd-udevd --daemon 2>/dev/null
mkdir -p /run/dbus && dbus-daemon --system --fork

# --- the SAN: one unit, two target port groups, two portals ------------------
# LIO keeps reservation state (APTPL) under its dbroot; without the
# directory every PERSISTENT RESERVE OUT fails with 02/08/00.
mkdir -p /etc/rtslib-fb-target/pr /var/target/pr
targetcli /backstores/ramdisk create name=san size=256M > /dev/null
targetcli /iscsi create $SAN > /dev/null
targetcli /iscsi/$SAN create 2 > /dev/null
for t in 1 2; do
    targetcli /iscsi/$SAN/tpg$t/portals delete 0.0.0.0 3260 > /dev/null 2>&1
    targetcli /iscsi/$SAN/tpg$t/portals create 127.0.0.1 $((3259 + t)) > /dev/null
    targetcli /iscsi/$SAN/tpg$t/luns create /backstores/ramdisk/san > /dev/null
    targetcli /iscsi/$SAN/tpg$t/acls create $ME > /dev/null
    targetcli /iscsi/$SAN/tpg$t set attribute authentication=0 > /dev/null
done
targetcli /loopback create naa.5001405feedbee01 > /dev/null
targetcli /loopback/naa.5001405feedbee01/luns create /backstores/ramdisk/san > /dev/null
udevadm settle
OUTSIDE=$(lsscsi | awk '/LIO-ORG/ && / san / {print $NF; exit}')
[ -b "$OUTSIDE" ] || { bad "the SAN unit seen through tcm_loop"; finish; }
OSG=$(sg_of "$OUTSIDE")
WWID=$(/lib/udev/scsi_id -g -u -d "$OUTSIDE")
echo "$(at) SAN unit $WWID, outside the map at $OUTSIDE"

# --- the gateway's two paths, and multipathd's map of them ------------------------
mkdir -p /run/lock/iscsi /var/lib/iscsi /etc/iscsi /etc/multipath
echo "InitiatorName=$ME" > /etc/iscsi/initiatorname.iscsi
# A lost session is given up after 5 s (tcmu-sg counts it into every
# command's time: see the users' guide); a silent portal is found in 4 s.
cat > /etc/iscsi/iscsid.conf <<'EOF'
node.startup = manual
node.session.timeo.replacement_timeout = 5
node.conn[0].timeo.noop_out_interval = 2
node.conn[0].timeo.noop_out_timeout = 2
node.session.err_timeo.abort_timeout = 3
node.session.err_timeo.lu_reset_timeout = 5
EOF
iscsid || bad "iscsid starts"
for t in 1 2; do
    iscsiadm -m node -T $SAN -p 127.0.0.1:$((3259 + t)) -o new > /dev/null
    iscsiadm -m node -T $SAN -p 127.0.0.1:$((3259 + t)) --login > /dev/null 2>&1 || bad "log in to portal $t"
done
udevadm settle
# multipath.conf as the users' guide gives it for a gateway: queue while no
# path is left (tcmu-sg never sends through dm, so this never holds its
# commands), register returning paths with the key tcmu-sg tells, and keep
# the gateway's own tcm_loop LUNs (which carry the SAN unit's WWID) out.
cat > /etc/multipath.conf <<EOF
defaults {
    user_friendly_names no
    find_multipaths no
    polling_interval 2
    reservation_key file
}
overrides {
    path_grouping_policy multibus
    path_checker tur
    no_path_retry queue
    fast_io_fail_tmo 5
}
blacklist {
    protocol "scsi:unspec"
}
multipaths {
    multipath {
        wwid $WWID
        alias san
    }
}
EOF
multipathd -d -s > /vm-out/multipathd.log 2>&1 &
MPD=$!
MAP=/dev/mapper/san
wait_for 30 test -b $MAP
two_active() { [ "$(multipathd show paths format '%d %t %T' 2>/dev/null | grep -c 'active ready')" -eq 2 ]; }
check "multipathd makes one map of the two iSCSI paths" wait_for 60 two_active
PATHS=($(multipathd show paths format '%d %m' 2>/dev/null | awk '$2 == "san" {print $1}'))
echo "$(at) map san over ${PATHS[*]}"
multipath -ll san 2>/dev/null | sed 's/^/  /'
session_of() { # sdX: its iSCSI session's portal port
    local s; s=$(readlink -f /sys/block/$1/device | grep -o 'session[0-9]*' | head -1)
    cat /sys/class/iscsi_connection/connection${s#session}:0/persistent_port
}
declare -A PORT
for p in "${PATHS[@]}"; do PORT[$p]=$(session_of "$p"); done
echo "  ${PATHS[0]} via portal ${PORT[${PATHS[0]}]}, ${PATHS[1]} via portal ${PORT[${PATHS[1]}]}"

# --- 1. the map as the backing device -----------------------------------------------
"$BIN" run --no-dbus --log-level info >> "$LOG" 2>&1 &
DAEMON=$!
wait_for 10 grep -q "listening to TCM-USER netlink events" "$LOG"
cc=$("$BIN" check-config "sg/$MAP"); ccrc=$?
echo "check-config: $cc"
check "check-config accepts the map, over both paths" \
    bash -c "[ $ccrc -eq 0 ] && grep -q 'multipath map over' <<< '$cc' && grep -q '${PATHS[0]}' <<< '$cc' && grep -q '${PATHS[1]}' <<< '$cc'"
cc=$("$BIN" check-config "sg//dev/${PATHS[0]}")
echo "check-config of a path: $cc"
check "  and refuses one of its paths, naming the map to give" grep -q 'sg//dev/mapper/san' <<< "$cc"
# timeout_s=3 (7 s on a disk node) plus the paths' 5 s recovery and a 3 s
# margin leave a 3 s window under cmd_time_out 18.
INIT=$(timeout 90 "$BIN" export --name mp0 --attrib pgr_support=0 --attrib alua_support=0 \
    --attrib cmd_time_out=18 --options timeout_s=3 $MAP) || { bad "export over the map"; finish; }
echo "$(at) the initiator's disk: $INIT"
check "  the daemon serves it through the map" wait_for 20 grep -q "serving.*multipath map over" "$LOG"
grep -m1 "serving.*multipath map" "$LOG" | sed 's/^/  /'
grep -m1 "mp0.*cmd_time_out 18 s" "$LOG" | sed 's/^/  /'
check "  the stall window counts the paths' recovery (5 s)" \
    grep -q "mp0.*plus up to 5 s in the transport's recovery" "$LOG"
check "the initiator's disk shows the SAN unit's WWID" \
    [ "$(/lib/udev/scsi_id -g -u -d "$INIT")" = "$WWID" ]
check "  and stays out of the map (its tcm_loop path is blacklisted)" \
    bash -c "! multipath -ll san 2>/dev/null | grep -q ' ${INIT#/dev/} '"
st=$("$BIN" status --json)
python3 - "$st" <<'PY' > /tmp/st.txt
import json, sys
d = [d for d in json.loads(sys.argv[1])["devices"] if d["name"].endswith("/mp0")][0]
m = d["multipath"]
print(m["name"], m["dm_view"], " ".join(f'{p["name"]}={p["state"]}/{p["dm"]}' for p in m["paths"]))
PY
echo "status: $(cat /tmp/st.txt)"
check "status shows the map with both paths active in tcmu-sg's and dm's view" \
    bash -c "grep -q '^san read ' /tmp/st.txt && [ \$(grep -o '=active/active' /tmp/st.txt | wc -l) -eq 2 ]"
"$BIN" status | sed 's/^/  /'
check "  and Prometheus a gauge per path" \
    bash -c "[ \$('$BIN' status --prometheus | grep -c '^tcmu_sg_path_up{.*} 1') -eq 2 ]"

# --- 2. failover under fio verify ----------------------------------------------------
fio_run() { # NAME SECONDS: 4k random writes, verified, QD8, through the LUN
    fio --name="$1" --filename="$INIT" --rw=randwrite --bs=4k --iodepth=8 --ioengine=libaio \
        --direct=1 --offset=16M --size=32M --time_based --runtime="$2" --verify=crc32c \
        --verify_backlog=64 --verify_fatal=1 --output-format=json --output="/vm-out/fio-$1.json" \
        > /dev/null 2>&1 &
    FIO=$!
}
fio_ok() { # NAME RC
    python3 - "/vm-out/fio-$1.json" "$2" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index('{'):])["jobs"][0]
stall = max(j["write"]["clat_ns"]["max"], j["read"]["clat_ns"]["max"]) / 1e9
print(f"  fio: {j['write']['total_ios']} writes, {j['read']['total_ios']} verifying reads, "
      f"error {j['error']}, longest completion {stall:.1f} s")
sys.exit(int(sys.argv[2]) != 0 or j["error"] != 0)
PY
}
commands_of() { "$BIN" status --json | python3 -c "
import json, sys
d = [d for d in json.load(sys.stdin)['devices'] if d['name'].endswith('/mp0')][0]
print(sum(p['commands'] for p in d['multipath']['paths'] if p['name'] == '$1'))"; }
state_of() { "$BIN" status --json | python3 -c "
import json, sys
d = [d for d in json.load(sys.stdin)['devices'] if d['name'].endswith('/mp0')][0]
print(''.join(p['state'] for p in d['multipath']['paths'] if p['name'] == '$1'))"; }
both_back() { [ "$(state_of ${PATHS[0]})" = active ] && [ "$(state_of ${PATHS[1]})" = active ]; }
log_at() { # PATTERN: the daemon's log lines matching, with the time they came
    grep -E "$1" "$LOG" | tail -1
}

# a. a path's SCSI device taken offline (its commands fail at once with ENXIO)
P=${PATHS[0]}
fio_run offline 14
sleep 4
t=$(date +%s.%N); echo offline > /sys/block/$P/device/state
wait_for 10 grep -q "path $P .* failed" "$LOG"; echo "$(at) $P offline: tcmu-sg moved off it in $(since $t) s"
log_at "path $P .* failed" | sed 's/^/  /'
sleep 4
n1=$(commands_of $P); sleep 2; n2=$(commands_of $P)
check "a path offline: no command goes down it (commands $n1 -> $n2)" [ "$n1" = "$n2" ]
t=$(date +%s.%N); echo running > /sys/block/$P/device/state
check "  back once its device is running again" wait_for 30 both_back
echo "$(at) $P back in use $(since $t) s after its device ran again"
wait $FIO; rc=$?
check "  fio verify through the LUN: no error" fio_ok offline $rc

# b. a portal disabled: the session drops (transport errors), recovers
P=${PATHS[1]}; T=$([ "${PORT[$P]}" = 3260 ] && echo 1 || echo 2)
fio_run portal 24
sleep 4
t=$(date +%s.%N); echo 0 > $CT/iscsi/$SAN/tpgt_$T/enable
wait_for 15 grep -q "path $P .* failed" "$LOG"; echo "$(at) portal $T disabled: tcmu-sg moved off $P in $(since $t) s"
log_at "path $P .* failed" | sed 's/^/  /'
sleep 6
t=$(date +%s.%N); echo 1 > $CT/iscsi/$SAN/tpgt_$T/enable
check "a portal disabled and enabled again: its path returns" wait_for 60 both_back
echo "$(at) $P back in use $(since $t) s after the portal came back"
wait $FIO; rc=$?
check "  fio verify through the LUN: no error" fio_ok portal $rc

# c. an administrator fails a path in dm: tcmu-sg follows dm's view.
# multipathd's checker would reinstate a path that answers at once, so it
# is stopped meanwhile.
P=${PATHS[0]}
DEV=$(cat /sys/block/$P/dev)
kill $MPD; wait $MPD 2>/dev/null
fio_run failpath 14
sleep 3
t=$(date +%s.%N); dmsetup message san 0 fail_path $DEV
dmfailed() { [ "$(state_of $P)" = dm-failed ]; }
if wait_for 5 dmfailed; then
    echo "$(at) dm fail_path $DEV: tcmu-sg stopped using $P in $(since $t) s"
    ok "dm's fail_path: tcmu-sg stops using the path"
else
    bad "dm's fail_path: tcmu-sg stops using the path (state $(state_of $P))"
fi
n1=$(commands_of $P); sleep 2; n2=$(commands_of $P)
check "  no command goes down it while dm has it failed (commands $n1 -> $n2)" [ "$n1" = "$n2" ]
dmsetup message san 0 reinstate_path $DEV
check "  used again once dm reinstates it" wait_for 10 both_back
wait $FIO; rc=$?
check "  fio verify through the LUN: no error" fio_ok failpath $rc

# d. multipathd takes a path out of the map and adds it again
multipathd -d -s >> /vm-out/multipathd.log 2>&1 &
MPD=$!
wait_for 30 two_active
P=${PATHS[1]}
fio_run membership 16
sleep 3
multipathd del path $P > /dev/null
check "a path removed from the map is dropped" wait_for 10 grep -q "path $P left the map" "$LOG"
check "  and gone from the status report" [ "$(state_of $P 2>/dev/null)" = "" ]
multipathd add path $P > /dev/null
t=$(date +%s.%N)
check "  one added to it is checked and used" wait_for 30 both_back
echo "$(at) $P used $(since $t) s after multipathd added it"
grep "path $P joined the map" "$LOG" | tail -1 | sed 's/^/  /'
wait $FIO; rc=$?
check "  fio verify through the LUN: no error" fio_ok membership $rc
"$BIN" status | sed 's/^/  /'
if [ "$(python3 -c 'import os; v = os.uname().release.split("."); print(int((int(v[0]), int(v[1])) >= (6, 16)))')" = 1 ]; then
    check "dm was told with DM_MPATH_PROBE_PATHS (this kernel has it)" \
        grep -q "DM_MPATH_PROBE_PATHS: " "$LOG"
else
    check "dm was told with fail_path (this kernel has no DM_MPATH_PROBE_PATHS)" \
        grep -q "told dm: fail_path" "$LOG"
fi

# --- 3. all paths down past cmd_time_out ------------------------------------------
# LBA 4096 gets "A" from the initiator through tcmu-sg while both portals
# are down, LBA 8192 "C" through the map's own node (which queues); both
# wait past cmd_time_out (18 s); "B" is then written to both blocks by the
# host outside the map; the portals come back.
blk() { python3 -c "import sys; sys.stdout.buffer.write(sys.argv[1].encode() * 4096)" "$1" > /tmp/blk-$1; }
blk A; blk B; blk C
read_at() { # LBA: the first byte of the block, read by the outside host
    dd if="$OUTSIDE" bs=4096 skip=$(($1 / 8)) count=1 iflag=direct 2>/dev/null | head -c 1
}
for T in 1 2; do echo 0 > $CT/iscsi/$SAN/tpgt_$T/enable; done
t=$(date +%s.%N)
# Both paths failed in dm too, so that the map's node queues (before, dm
# would hand the SG_IO to a path whose session is being recovered).
dm_failed_both() { [ "$(dmsetup status san | grep -o ' F ' | wc -l)" -eq 2 ]; }
check "both portals disabled: dm fails both paths" wait_for 30 dm_failed_both
echo "$(at) both paths failed in dm $(since $t) s after the portals went"
$SGIO run "$(sg_of "$INIT")" 2a000000100000000800 --out /tmp/blk-A --timeout 12000 > /tmp/w-tcmu.json &
WA=$!
$SGIO run $MAP 2a000000200000000800 --out /tmp/blk-C --timeout 60000 > /tmp/w-map.json &
WC=$!
sleep 22
wait $WA
echo "$(at) the initiator's WRITE through tcmu-sg: $(cat /tmp/w-tcmu.json)"
# BUSY is retried by the initiator's SCSI midlayer until the command's
# own timeout (12 s): each attempt is a new command, refused in its window.
check "all paths down: the initiator's WRITE ends unrun, BUSY" \
    grep -q '"status": 8,' /tmp/w-tcmu.json
check "  refused by the stall rule, in tcmu-sg's log" grep -q "mp0.*refused .* BUSY" "$LOG"
check "  the same WRITE sent to the map's node is still held in dm's queue at $(since $t) s" kill -0 $WC
dd if=/tmp/blk-B of="$OUTSIDE" bs=4096 seek=512 count=1 oflag=direct status=none
dd if=/tmp/blk-B of="$OUTSIDE" bs=4096 seek=1024 count=1 oflag=direct status=none
for T in 1 2; do echo 1 > $CT/iscsi/$SAN/tpgt_$T/enable; done
check "the portals back: both paths return" wait_for 60 both_back
wait $WC
echo "$(at) the map's WRITE completed: $(cat /tmp/w-map.json)"
sleep 3
a=$(read_at 4096); c=$(read_at 8192)
echo "  LBA 4096 holds $a, LBA 8192 holds $c"
check "  the initiator's older write never landed: LBA 4096 holds the newer data" [ "$a" = B ]
check "  (dm's queue sent its write late, over the newer data: LBA 8192 holds it)" [ "$c" = C ]

# --- 4. reservations on every path ------------------------------------------------
K=0x123abc; K2=0x456def
keys_at_lu() { sg_persist --in -k "$OUTSIDE" 2>/dev/null | grep -c "$1"; }
sg_persist --out --register --param-sark=$K "$INIT" > /dev/null 2>&1
check "a key registered through tcmu-sg is held once per path at the unit" [ "$(keys_at_lu $K)" -eq 2 ]
sg_persist --out --reserve --param-rk=$K --prout-type=5 "$INIT" > /dev/null 2>&1
check "  a Write Exclusive, Registrants Only reservation through tcmu-sg" \
    bash -c "sg_persist --in -r $OUTSIDE 2>/dev/null | grep -qi 'write exclusive, registrants only'"
check "  multipathd was told the key (reservation_key file)" grep -qi "${K#0x}" /etc/multipath/prkeys
fenced() { $SGIO run "$OSG" 2a000000300000000800 --out /tmp/blk-B | grep -q '"status": 24,'; }
check "  the host outside the map is fenced (RESERVATION CONFLICT)" fenced
writes() { # N: N 4k writes through tcmu-sg, each must succeed
    local i
    for i in $(seq "$1"); do
        dd if=/tmp/blk-A of="$INIT" bs=4096 seek=$((2048 + i)) count=1 oflag=direct status=none || return 1
    done
}
for P in "${PATHS[@]}"; do
    echo offline > /sys/block/$P/device/state
    check "  $P offline: writes through tcmu-sg go on under the reservation" writes 20
    check "  the outside host stays fenced" fenced
    echo running > /sys/block/$P/device/state
    wait_for 30 both_back
done
# A key change while a path is down: the path misses it, and is brought
# in step when it returns.
P=${PATHS[1]}
echo offline > /sys/block/$P/device/state
wait_for 10 bash -c "[ \"\$(state_of $P)\" != active ]"
sg_persist --out --register --param-rk=$K --param-sark=$K2 "$INIT" > /dev/null 2>&1
echo "  with $P offline: $K held $(keys_at_lu $K) times, $K2 $(keys_at_lu $K2) times"
check "  a new key registered with $P down reaches the other path only" \
    bash -c "[ $(keys_at_lu $K2) -eq 1 ] && [ $(keys_at_lu $K) -eq 1 ]"
echo running > /sys/block/$P/device/state
check "  $P returns" wait_for 30 both_back
check "  registered again with the new key: $K2 held twice, $K gone" \
    bash -c "[ \$(sg_persist --in -k $OUTSIDE 2>/dev/null | grep -c $K2) -eq 2 ] && [ \$(sg_persist --in -k $OUTSIDE 2>/dev/null | grep -c $K) -eq 0 ]"
grep "registered again" "$LOG" | tail -1 | sed 's/^/  /'
check "  writes through tcmu-sg go on down both paths" writes 20
sg_persist --out --release --param-rk=$K2 --prout-type=5 "$INIT" > /dev/null 2>&1
check "released: the outside host writes again" \
    bash -c "$SGIO run $OSG 2a000000300000000800 --out /tmp/blk-B | grep -q '\"status\": 0,'"
sg_persist --out --register --param-rk=$K2 --param-sark=0 "$INIT" > /dev/null 2>&1
check "unregistered through tcmu-sg: no key left at the unit" \
    bash -c "sg_persist --in -k $OUTSIDE 2>/dev/null | grep -qi 'no registered reservation keys'"

"$BIN" status | sed 's/^/  /'
echo "--- what the daemon said of paths:"
grep -E "path .* (failed|back in use|joined|left|registered)|told dm|DM_MPATH|no DM_MPATH" "$LOG" | sed 's/^/  /'
kill $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null
kill $MPD 2>/dev/null
dmesg > /vm-out/dmesg.txt
finish
