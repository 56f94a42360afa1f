#!/usr/bin/env bash
# The target VM of tests/vm/guest-passthrough.sh: serves two tcmu-sg LUNs
# over iSCSI, answers the guest's phase requests in /vm-share, and checks
# afterwards what only the target can see (the backing device's bytes, the
# daemon's log, residuals at a kernel initiator).
#
#   gp-target.sh TCMU_SG_BINARY LIO_HELPER GUEST_IQN
set -uo pipefail
BIN=$1; LIO=$2; GUEST_IQN=$3
HERE=$(cd "$(dirname "$0")" && pwd)
SGIO="python3 $HERE/sgio.py"
LOG=/vm-out/tcmu-sg-gp.log
SUITE=gp-target
S=/vm-share
SD=/sys/bus/pseudo/drivers/scsi_debug
WP=/sys/module/scsi_debug/parameters/wp
. "$HERE/lib.sh"

scsi_debug_luns dev_size_mb=256 max_luns=2 delay=0
modprobe iscsi_target_mod
"$BIN" run --no-dbus --log-level debug > "$LOG" 2>&1 &
DAEMON=$!
sleep 1
BACK=${DISKS[0]}; BACK_SG=$(sg_of "$BACK")
# Reads of LBA 0x1234.. fail with MEDIUM ERROR, all along.
echo 2 > $SD/opts
IQN0=$("$BIN" export --name g0 --fabric iscsi --portal 0.0.0.0:3260 --initiator "$GUEST_IQN" \
    --options max_xfer_kb=64 --attrib pgr_support=0 "$BACK") || { bad "export g0"; finish; }
mapfile -t RD < <("$LIO" ramdisk gpr 16384 naa.5001405cccccccc1 naa.5001405cccccccc2)
PA=${RD[0]}; PB=${RD[1]}
IQN1=$("$BIN" export --name g1 --fabric iscsi --portal 0.0.0.0:3260 --initiator "$GUEST_IQN" \
    --attrib pgr_support=0 "$PA") || { bad "export g1"; finish; }
echo "g0 $IQN0 over $BACK (max_xfer_kb=64); g1 $IQN1 over a LIO ramdisk via nexus A ($PA, B: $PB)"

# What the backing devices answer when asked directly.
$SGIO run "$BACK_SG" 12000000ff00 --in 255 --save $S/ref-inquiry.bin > $S/ref-inquiry.json
$SGIO run "$BACK_SG" 120183010000 --in 256 --save $S/ref-vpd83.bin > $S/ref-vpd83.json
$SGIO run "$BACK_SG" 9e100000000000000000000000200000 --in 32 --save $S/ref-rc16.bin > $S/ref-rc16.json
$SGIO run "$BACK_SG" 28000000123000000800 --in 4096 > $S/ref-read10-err.json
$SGIO run "$BACK_SG" 88000000000000001230000000080000 --in 4096 > $S/ref-read16-err.json
$SGIO run "$BACK_SG" 28000000110000080000 --in 1048576 > $S/ref-split-err.json
dd if="$BACK" bs=1M skip=16 count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1 > $S/ref-8m.sha256
echo "$IQN0 $IQN1" > $S/ready

# A write error: the backing device write-protected while the guest writes.
await want-wp
echo 1 > $WP
head -c 4096 /dev/zero > /tmp/zero4k
$SGIO run "$BACK_SG" 2a000000200000000800 --out /tmp/zero4k > $S/ref-write-err.json
touch $S/wp-on
await done-wp
echo 0 > $WP

# The guest's 64 MiB verify run: the backing device must hold its bytes.
await fio-done
dd if="$BACK" bs=1M skip=128 count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1 > $S/backing-region.sha256
touch $S/region-done

# Another initiator (nexus B) holds WRITE EXCLUSIVE, then lets go.
await want-pr-held
sg_persist --out --register --param-sark=0xabc "$PB" > /dev/null 2>&1
sg_persist --out --reserve --param-rk=0xabc --prout-type=1 "$PB" > /dev/null 2>&1
touch $S/pr-held
await want-pr-released
sg_persist --out --release --param-rk=0xabc --prout-type=1 "$PB" > /dev/null 2>&1
sg_persist --out --register --param-rk=0xabc --param-sark=0 "$PB" > /dev/null 2>&1
touch $S/pr-released
# The guest holds the reservation: the other initiator's write is refused.
await want-other-write
$SGIO run "$(sg_of "$PB")" 2a000000001000000100 --out <(head -c 512 /dev/zero) > $S/other-write.json
touch $S/other-write-done

await guest-done
# QEMU's libiscsi driver handles only SG_IO among the guest's ioctls and
# sends no TMF for a guest's LUN RESET (it purges its own queue): say what
# reached tcmu-sg. TMRs from the Linux initiator are checked in
# e2e-reliability.sh.
echo "task management that reached tcmu-sg from the guest: $(grep -c 'g0 (uio[0-9]*): task management' "$LOG") notifications"
grep 'g0 (uio[0-9]*): task management' "$LOG" | head -3
check "no 'ring is broken' in the kernel log" bash -c "! dmesg | grep -q 'ring is broken'"

# Residuals, seen from the kernel initiator (tcm_loop), for a device like g0.
L=$(timeout 90 "$BIN" export --name g2 --options max_xfer_kb=64 "${DISKS[1]}") || { bad "export g2"; finish; }
LSG=$(sg_of "$L")
one_b=$($SGIO run "$(sg_of "${DISKS[1]}")" 28000000123400000100 --in 512)
one_l=$($SGIO run "$LSG" 28000000123400000100 --in 512)
echo "1-block READ on the error, backing: $one_b"
echo "                         initiator: $one_l"
check "a failed 1-block READ: same status and sense at the initiator" \
    $SGIO same "$(sg_of "${DISKS[1]}")" "$LSG" 28000000123400000100 --in 512 --status 2 --key 3
check "  the backing device reports residual 512, the initiator 0 (TCMU cannot say 'nothing valid')" \
    bash -c "grep -q '\"resid\": 512' <<< '$one_b' && grep -q '\"resid\": 0' <<< '$one_l'"
sp_b=$($SGIO run "$(sg_of "${DISKS[1]}")" 28000000110000080000 --in 1048576)
sp_l=$($SGIO run "$LSG" 28000000110000080000 --in 1048576)
echo "1 MiB split READ over the error, backing: $sp_b"
echo "                                initiator: $sp_l"
check "a failed split READ: the initiator's residual counts only the chunks not transferred (2 x 64 KiB came)" \
    bash -c "grep -q '\"resid\": 1048576' <<< '$sp_b' && grep -q '\"resid\": 917504' <<< '$sp_l'"
timeout 60 "$BIN" unexport --name g2 || bad "unexport g2"

echo 0 > $SD/opts
kill -TERM $DAEMON; wait $DAEMON
check "the daemon exits cleanly" [ $? -eq 0 ]
finish
