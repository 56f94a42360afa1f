#!/usr/bin/env bash
# The users' path on the real 6.1 kernel, inside the VM: targetcli over
# D-Bus, save/clear/restore, iSCSI export with open-iscsi and libiscsi,
# SCSI-3 persistent reservations passed through to a LIO ramdisk, SG_IO
# from the initiator compared with SG_IO on the backing device, and
# tcmu-runner running beside tcmu-sg.
#
#   e2e-users.sh TCMU_SG_BINARY LIO_HELPER
set -uo pipefail
BIN=${1:?usage: e2e-users.sh TCMU_SG_BINARY LIO_HELPER}
LIO=${2:?usage: e2e-users.sh TCMU_SG_BINARY LIO_HELPER}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SGIO="python3 $HERE/sgio.py"
LOG=/vm-out/tcmu-sg-users.log
SUITE=e2e-users
save_runner_log() { cp /var/log/tcmu-runner.log /vm-out/ 2>/dev/null; }
FINISH_HOOK=save_runner_log
. "$HERE/lib.sh"
managed_objects() { # what targetcli sees of org.kernel.TCMUService1
    dbus-send --system --print-reply --dest=org.kernel.TCMUService1 /org/kernel/TCMUService1 \
        org.freedesktop.DBus.ObjectManager.GetManagedObjects 2>&1
}
dev_of_tpg() { # the initiator block device of a tcm_loop target's LUN 0
    local a; a=$(cat "/sys/kernel/config/target/loopback/$1/tpgt_1/address")
    wait_for 30 ls "/sys/class/scsi_device/$a:0/device/block/" || return 1
    echo "/dev/$(ls "/sys/class/scsi_device/$a:0/device/block/")"
}

# --- set-up ---------------------------------------------------------------
for m in sd_mod sg target_core_mod target_core_user tcm_loop iscsi_target_mod; do
    modprobe "$m" || { bad "modprobe $m"; finish; }
done
modprobe scsi_debug dev_size_mb=256 max_luns=4 || { bad "modprobe scsi_debug"; finish; }
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
sleep 0.5
mapfile -t DISKS < <(lsscsi | awk '/scsi_debug/{print $NF}')
[ "${#DISKS[@]}" -eq 4 ] || { bad "four scsi_debug disks"; finish; }
echo "scsi_debug disks: ${DISKS[*]}"

mkdir -p /run/dbus /etc/dbus-1/system.d
cp "$ROOT/packaging/dbus/tcmu-sg.conf" /etc/dbus-1/system.d/
dbus-daemon --system --fork || { bad "dbus-daemon starts"; finish; }

"$BIN" run --log-level debug > "$LOG" 2>&1 &
DAEMON=$!
check "tcmu-sg owns org.kernel.TCMUService1" wait_for 10 grep -q "D-Bus: serving targetcli as Service" "$LOG"

# --- D-Bus ----------------------------------------------------------------
objs=$(managed_objects)
check "GetManagedObjects lists /org/kernel/TCMUService1/sg with ConfigDesc" \
    bash -c "grep -q 'object path \"/org/kernel/TCMUService1/sg\"' <<< '$objs' && grep -q ConfigDesc <<< '$objs'"
cc=$(dbus-send --system --print-reply --dest=org.kernel.TCMUService1 /org/kernel/TCMUService1/sg \
    org.kernel.TCMUService1.CheckConfig "string:sg/${DISKS[0]}" 2>&1)
check "CheckConfig accepts sg/${DISKS[0]}" grep -q 'boolean true' <<< "$cc"
cc=$(dbus-send --system --print-reply --dest=org.kernel.TCMUService1 /org/kernel/TCMUService1/sg \
    org.kernel.TCMUService1.CheckConfig "string:sg//dev/nonexistent" 2>&1)
check "CheckConfig refuses a missing device with a reason" \
    bash -c "grep -q 'boolean false' <<< '$cc' && grep -q 'No such file' <<< '$cc'"
nobody=$(setpriv --reuid=65534 --regid=65534 --clear-groups dbus-send --system --print-reply \
    --dest=org.kernel.TCMUService1 /org/kernel/TCMUService1/sg \
    org.kernel.TCMUService1.CheckConfig "string:sg/${DISKS[0]}" 2>&1)
echo "CheckConfig as nobody: $nobody" | head -2
check "the policy lets only root call the handler" grep -qi 'AccessDenied\|rejected' <<< "$nobody"

# --- targetcli ------------------------------------------------------------
T0=${DISKS[0]}
size=$(( $(cat /sys/class/block/${T0#/dev/}/size) * 512 ))
ls_out=$(targetcli ls /backstores 2>&1)
check "targetcli lists user:sg" grep -q 'user:sg' <<< "$ls_out"
out=$(targetcli /backstores/user:sg create name=t0 size=$size cfgstring=$T0 2>&1)
echo "$out"
check "targetcli creates user:sg t0 over $T0" grep -q 'Created user-backed storage object t0' <<< "$out"
for badcfg in /dev/nonexistent /etc/hostname /dev/shm "$T0;bogus=1"; do
    out=$(targetcli /backstores/user:sg create name=bad size=1M "cfgstring=$badcfg" 2>&1)
    echo "create cfgstring=$badcfg: $out" | head -2
    check "targetcli refuses cfgstring=$badcfg with CheckConfig's message" \
        bash -c "! grep -q 'Created' <<< '$out' && ! targetcli ls /backstores/user:sg | grep -q ' bad ' && grep -qi 'not\|unknown\|no such' <<< '$out'"
done
LOOPWWN=naa.5001405aaaaaaaa1
targetcli /loopback create $LOOPWWN >/dev/null 2>&1
targetcli /loopback/$LOOPWWN/luns create /backstores/user:sg/t0 >/dev/null 2>&1
L0=$(dev_of_tpg $LOOPWWN)
echo "targetcli LUN: $L0"
check "the targetcli LUN answers with the backing device's identity" \
    bash -c "[ \"\$(sg_inq $L0 | grep -v 'Unit serial')\" == \"\$(sg_inq $T0 | grep -v 'Unit serial')\" ]"
dd if=/dev/urandom of=/tmp/t0data bs=1M count=8 2>/dev/null
dd if=/tmp/t0data of="$L0" bs=1M oflag=direct 2>/dev/null
check "data written through the targetcli LUN lands on the backing device" \
    cmp <(dd if="$T0" bs=1M count=8 iflag=direct 2>/dev/null) /tmp/t0data
targetcli saveconfig >/dev/null 2>&1
check "saveconfig records the user:sg backstore" grep -q "\"config\": \"sg/$T0\"" /etc/rtslib-fb-target/saveconfig.json
targetcli clearconfig confirm=True >/dev/null 2>&1
check "clearconfig removes it" bash -c "! grep -qs 'sg/$T0' /sys/class/uio/*/name && ! ls /sys/kernel/config/target/loopback | grep -q $LOOPWWN"
targetctl restore >/dev/null 2>&1
L0=$(dev_of_tpg $LOOPWWN)
echo "after restore: $L0"
check "targetctl restore brings the device back" [ -b "$L0" ]
check "  with the data it had" cmp <(dd if="$L0" bs=1M count=8 iflag=direct 2>/dev/null) /tmp/t0data
check "  served by tcmu-sg" grep -q "sg/$T0" /sys/class/uio/*/name

# --- iSCSI ----------------------------------------------------------------
I0=${DISKS[1]}
ip link set lo up
mkdir -p /run/lock/iscsi /var/lib/iscsi
iscsid || bad "iscsid starts"
IQN=$("$BIN" export --name i0 --fabric iscsi --options "max_xfer_kb=64" "$I0")
echo "iSCSI target $IQN over $I0"
check "export --fabric iscsi creates the target" [ -d "/sys/kernel/config/target/iscsi/$IQN/tpgt_1/np/127.0.0.1:3260" ]
iscsiadm -m discovery -t st -p 127.0.0.1 >/dev/null 2>&1
iscsiadm -m node -T "$IQN" -p 127.0.0.1 --login >/dev/null 2>&1
check "open-iscsi logs in" wait_for 20 bash -c "iscsiadm -m session -P 3 | grep -q 'Attached scsi disk'"
ID=/dev/$(iscsiadm -m session -P 3 | awk '/Attached scsi disk/{print $4; exit}')
ID_SG=$(sg_of "$ID")
echo "iSCSI disk: $ID ($ID_SG)"
check "sg_inq over iSCSI matches the backing device" \
    bash -c "[ \"\$(sg_inq $ID)\" == \"\$(sg_inq $I0)\" ]"
check "sg_readcap over iSCSI matches" bash -c "[ \"\$(sg_readcap -l $ID)\" == \"\$(sg_readcap -l $I0)\" ]"
fio --name=iscsi --filename="$ID" --rw=randwrite --bs=64k --size=32M --direct=1 --ioengine=libaio \
    --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 --output=/vm-out/fio-iscsi.txt >/dev/null 2>&1
check "fio verify over iSCSI" grep -q 'err= 0' /vm-out/fio-iscsi.txt
check "  and the backing device holds the same bytes" \
    bash -c "[ \"\$(dd if=$ID bs=1M count=32 iflag=direct 2>/dev/null | sha256sum)\" == \"\$(dd if=$I0 bs=1M count=32 iflag=direct 2>/dev/null | sha256sum)\" ]"
# One 4 MiB WRITE(10) from the initiator, split into 64 KiB chunks.
dd if=/dev/urandom of=/tmp/p4 bs=1M count=4 2>/dev/null
w=$($SGIO run "$ID_SG" 2a000000400000200000 --out /tmp/p4 2>&1)
echo "one 4 MiB WRITE(10) over iSCSI: $w"
check "a single 4 MiB WRITE over iSCSI (split by tcmu-sg) completes GOOD" grep -q '"status": 0,' <<< "$w"
check "  and lands intact" cmp <(dd if="$I0" bs=512 skip=16384 count=8192 iflag=direct 2>/dev/null) /tmp/p4
check "a 4 MiB READ over iSCSI returns the same bytes as the backing device" \
    $SGIO same "$I0" "$ID_SG" 28000000400000200000 --in 4194304 --status 0
echo 2 > /sys/bus/pseudo/drivers/scsi_debug/opts
check "medium error over iSCSI: identical status and sense" \
    $SGIO same "$I0" "$ID_SG" 88000000000000001230000000100000 --in 8192 --status 2 --key 3
echo 0 > /sys/bus/pseudo/drivers/scsi_debug/opts
INI=$(sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi)
li=$(iscsi-inq -i "$INI" "iscsi://127.0.0.1/$IQN/0" 2>&1)
echo "$li" | head -8
check "libiscsi iscsi-inq sees the backing device's vendor and product" \
    bash -c "grep -q 'Linux' <<< '$li' && grep -q 'scsi_debug' <<< '$li'"
lr=$(iscsi-readcapacity16 -i "$INI" "iscsi://127.0.0.1/$IQN/0" 2>&1)
echo "$lr" | head -4
blocks=$(cat /sys/class/block/${I0#/dev/}/size)
check "libiscsi iscsi-readcapacity16 sees the backing capacity" grep -qi "Returned Logical Block Address:$((blocks - 1))$" <<< "$lr"
iscsiadm -m node -T "$IQN" -p 127.0.0.1 --logout >/dev/null 2>&1
"$BIN" unexport --name i0
check "unexport removes the iSCSI target" [ ! -e "/sys/kernel/config/target/iscsi/$IQN" ]

# --- persistent reservations passed through ------------------------------
# A LIO ramdisk seen over two tcm_loop nexuses (A and B): real SPC-3 PRs.
mapfile -t RD < <("$LIO" ramdisk prdisk 16384 naa.5001405bbbbbbbb1 naa.5001405bbbbbbbb2)
PA=${RD[0]}; PB=${RD[1]}
echo "ramdisk via nexus A: $PA, via nexus B: $PB"
check "a LIO ramdisk over two nexuses" bash -c "[ -b '$PA' ] && [ -b '$PB' ]"
PR=$("$BIN" export --name pr0 --attrib pgr_support=0 "$PA")
echo "tcmu-sg LUN over nexus A with pgr_support=0: $PR"
check "pgr_support=0 set on the tcmu-sg device" grep -qx 0 /sys/kernel/config/target/core/user_1/pr0/attrib/pgr_support
sg_persist --out --register --param-sark=0xabc "$PB" >/dev/null 2>&1
sg_persist --out --reserve --param-rk=0xabc --prout-type=1 "$PB" >/dev/null 2>&1
w=$($SGIO run "$PR" 2a000000001000000100 --out <(head -c 512 /dev/zero) 2>&1)
echo "WRITE through tcmu-sg under nexus B's WRITE EXCLUSIVE: $w"
check "WRITE through tcmu-sg gets RESERVATION CONFLICT (0x18)" grep -q '"status": 24,' <<< "$w"
check "  exactly as the same WRITE on the backing device" \
    $SGIO same "$PA" "$PR" 2a000000001000000100 --out <(head -c 512 /dev/zero) --status 24
r=$($SGIO run "$PR" 28000000001000000100 --in 512)
check "a READ succeeds" grep -q '"status": 0,' <<< "$r"
keys=$(sg_persist --in --read-keys "$PR" 2>&1)
echo "$keys"
check "read-keys through tcmu-sg shows nexus B's key" grep -q '0xabc' <<< "$keys"
res=$(sg_persist --in --read-reservation "$PR" 2>&1)
echo "$res"
check "read-reservation shows the holder key and Write Exclusive" \
    bash -c "grep -q '0xabc' <<< '$res' && grep -qi 'Write Exclusive' <<< '$res'"
sg_persist --out --register --param-sark=0x5a5a "$PR" >/dev/null 2>&1
keysb=$(sg_persist --in --read-keys "$PB" 2>&1)
check "PR OUT through tcmu-sg registers on the backing device (seen from nexus B)" grep -q '0x5a5a' <<< "$keysb"
sg_persist --out --release --param-rk=0xabc --prout-type=1 "$PB" >/dev/null 2>&1
w=$($SGIO run "$PR" 2a000000001000000100 --out <(head -c 512 /dev/zero) 2>&1)
check "after nexus B releases, the WRITE succeeds" grep -q '"status": 0,' <<< "$w"
sg_persist --out --register --param-rk=0x5a5a --param-sark=0 "$PR" >/dev/null 2>&1
sg_persist --out --register --param-rk=0xabc --param-sark=0 "$PB" >/dev/null 2>&1

# --- SG_IO from the initiator, as a VM guest's scsi-block would send it ----
G0=${DISKS[2]}
GL=$("$BIN" export --name g0 --options "max_xfer_kb=64" "$G0")
echo 2 > /sys/bus/pseudo/drivers/scsi_debug/opts
check "guest SG_IO: READ(16) over a medium error, same status and sense" \
    $SGIO same "$G0" "$GL" 88000000000000001230000000100000 --in 8192 --status 2 --key 3
echo 0 > /sys/bus/pseudo/drivers/scsi_debug/opts
# 512 KiB: the initiator's block queue takes 256 segments and the buffer
# is not page aligned, so 1 MiB would be refused before reaching LIO.
check "guest SG_IO: a 512 KiB READ(16) that tcmu-sg splits in 8, same data" \
    $SGIO same "$G0" "$GL" 88000000000000008000000004000000 --in 524288 --status 0
sg_persist --out --register --param-sark=0xdef "$PB" >/dev/null 2>&1
sg_persist --out --reserve --param-rk=0xdef --prout-type=1 "$PB" >/dev/null 2>&1
check "guest SG_IO: WRITE under a reservation conflict, same status" \
    $SGIO same "$PA" "$PR" 2a000000002000000100 --out <(head -c 512 /dev/zero) --status 24
sg_persist --out --release --param-rk=0xdef --prout-type=1 "$PB" >/dev/null 2>&1
sg_persist --out --register --param-rk=0xdef --param-sark=0 "$PB" >/dev/null 2>&1
"$BIN" unexport --name g0
"$BIN" unexport --name pr0
"$LIO" remove-ramdisk prdisk naa.5001405bbbbbbbb1 naa.5001405bbbbbbbb2

# --- beside tcmu-runner ------------------------------------------------------
targetcli clearconfig confirm=True >/dev/null 2>&1
kill -TERM $DAEMON; wait $DAEMON
check "tcmu-sg stops cleanly (leaving the bus name)" [ $? -eq 0 ]
mkdir -p /var/log
tcmu-runner > /vm-out/tcmu-runner.log 2>&1 &
RUNNER=$!
check "tcmu-runner owns org.kernel.TCMUService1" wait_for 15 bash -c \
    "dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetNameOwner string:org.kernel.TCMUService1"
"$BIN" run --log-level debug >> "$LOG" 2>&1 &
DAEMON=$!
check "tcmu-sg registers as tcmu-runner's external sg handler" wait_for 15 grep -q "D-Bus: serving targetcli as External" "$LOG"
objs=$(managed_objects)
check "tcmu-runner lists both its handlers and sg" \
    bash -c "grep -q '/org/kernel/TCMUService1/sg\"' <<< '$objs' && grep -q '/org/kernel/TCMUService1/qcow\"' <<< '$objs'"
cc=$(dbus-send --system --print-reply --dest=org.kernel.TCMUService1 /org/kernel/TCMUService1/sg \
    org.kernel.TCMUService1.CheckConfig "string:sg//dev/nonexistent" 2>&1)
check "CheckConfig through tcmu-runner reaches tcmu-sg" grep -q 'No such file' <<< "$cc"
S0=${DISKS[3]}
# Without nl_reply_supported=-1 tcmu-runner answers the ADDED_DEVICE with a
# failure (its stub for external handlers cannot open): the device dies.
out=$(targetcli /backstores/user:sg create name=killed size=1M cfgstring=$S0 2>&1)
echo "without nl_reply_supported=-1: $out" | head -3
check "  a user:sg device created without nl_reply_supported=-1 is killed by tcmu-runner" \
    bash -c "grep -q 'creation failed' <<< '$out' && ! grep -qs '/killed/' /sys/class/uio/*/name"
targetcli /backstores/user:sg delete killed >/dev/null 2>&1
out=$(targetcli /backstores/user:sg create name=s0 size=$(( $(cat /sys/class/block/${S0#/dev/}/size) * 512 )) \
    cfgstring=$S0 control=nl_reply_supported=-1 2>&1)
echo "with control=nl_reply_supported=-1: $out"
check "  with control=nl_reply_supported=-1 targetcli creates it" grep -q 'Created user-backed storage object s0' <<< "$out"
targetcli /loopback create naa.5001405cccccccc1 >/dev/null 2>&1
targetcli /loopback/naa.5001405cccccccc1/luns create /backstores/user:sg/s0 >/dev/null 2>&1
SL=$(dev_of_tpg naa.5001405cccccccc1)
check "  and tcmu-sg serves it while tcmu-runner runs" \
    bash -c "[ -b '$SL' ] && [ \"\$(sg_inq $SL)\" == \"\$(sg_inq $S0)\" ]"
check "  data round-trips" bash -c "dd if=/tmp/t0data of=$SL bs=1M count=8 oflag=direct 2>/dev/null && cmp <(dd if=$S0 bs=1M count=8 iflag=direct 2>/dev/null) /tmp/t0data"
check "both daemons are still running" bash -c "kill -0 $RUNNER && kill -0 $DAEMON"
targetcli clearconfig confirm=True >/dev/null 2>&1
kill -TERM $DAEMON; wait $DAEMON
finish
