#!/usr/bin/env bash
# The command policy and read-only mode, from the initiator's side, on the
# real kernel (run at the end of tests/vm/e2e-classes.sh's boot, or alone
# through run-vm.sh). A scsi_debug disk served by tcmu-sg through tcm_loop,
# and the backing disk's own command trace (scsi_dispatch_cmd_start):
# - policy standard (the default): sg_write_buffer (download microcode),
#   sg_format, sg_sanitize, sg_sat_identify (ATA PASS-THROUGH), a vendor
#   opcode with sg_raw and MODE SELECT are refused, each with the sense the
#   policy names, and none reaches the backing disk; REPORT SUPPORTED
#   OPERATION CODES lists none of them; tcmu-sg status counts them and the
#   log names each once;
# - grants (standard+firmware+format): the granted commands reach it, the
#   rest is still refused;
# - policy full: all six reach it, and the device's own answers pass;
# - readonly=1: the initiator's disk is read-only (blockdev --getro 1,
#   writes and mkfs fail), WRITE through SG_IO and a no-data SANITIZE get
#   DATA PROTECT 27/00 and reach nothing, reads work; and over a LIO
#   ramdisk (real SPC-3 reservations, pgr_support=0) reservations work.
#
#   e2e-policy.sh TCMU_SG_BINARY LIO_HELPER
set -uo pipefail
BIN=${1:?usage: e2e-policy.sh TCMU_SG_BINARY LIO_HELPER}
LIO=${2:?usage: e2e-policy.sh TCMU_SG_BINARY LIO_HELPER}
HERE=$(cd "$(dirname "$0")" && pwd)
SGIO="python3 $HERE/sgio.py"
LOG=/vm-out/tcmu-sg-policy.log
SUITE=e2e-policy
. "$HERE/lib.sh"
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs none $T
echo 0 > $T/options/record-cmd
modprobe -r scsi_debug 2>/dev/null
scsi_debug_luns dev_size_mb=64 max_luns=2
[ "${#DISKS[@]}" -eq 2 ] || { bad "two scsi_debug LUNs"; finish; }
A=${DISKS[0]}
"$BIN" run --no-dbus > "$LOG" 2>&1 &
DAEMON=$!
sleep 0.5
B=$(timeout 90 "$BIN" export --name pol "${DISKS[1]}") || { bad "export pol"; finish; }
BSG=$(sg_of "$B")
BACK_HOST=${ADDRS[1]%%:*}; BACK_LUN=${ADDRS[1]##*:}
echo "policy: direct $A, tcmu-sg $B ($BSG) over ${DISKS[1]}"
trace_on() { echo "host_no == $BACK_HOST && lun == $BACK_LUN" > $T/events/scsi/scsi_dispatch_cmd_start/filter
             echo > $T/trace; echo 1 > $T/events/scsi/scsi_dispatch_cmd_start/enable; }
trace_off() { echo 0 > $T/events/scsi/scsi_dispatch_cmd_start/enable; }
# reached OPCODE: how many commands with that opcode the backing disk got.
reached() { grep -c "raw=$1 " $T/trace; }
reconfigure() { # CONFIG OPTIONS, then waits for the daemon to take them
    "$BIN" set-config --name pol "sg/${DISKS[1]}${1:+;$1}" || bad "set-config $1"
    wait_for 15 grep -q "reconfigured: .*policy $2" "$LOG" || bad "reconfigured with policy $2"
    sg_turs "$BSG" > /dev/null 2>&1; sg_turs "$BSG" > /dev/null 2>&1
}
# The ASC/ASCQ of a raw CDB sent through tcmu-sg (SGIO's JSON).
asc() { $SGIO run "$BSG" "$@" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["status"], r["sense"][24:28])'; }
head -c 512 /dev/zero > /tmp/fw
head -c 8 /dev/zero > /tmp/ms8

# The six, each run the way a user would, with the opcode it sends.
wb()     { sg_write_buffer --mode=5 --in=/tmp/fw "$BSG"; }
fmt()    { sg_format --format --quick --early "$BSG"; }
san()    { sg_sanitize --block --quick --early "$BSG"; }
ata()    { sg_sat_identify "$BSG"; }
vendor() { sg_raw "$BSG" c1 00 00 00 00 00; }
msel()   { sg_raw -s 8 -i /tmp/ms8 "$BSG" 55 10 00 00 00 00 00 00 08 00; }
SIX="wb:3b fmt:04 san:48 ata:85 vendor:c1 msel:55"

# --- standard ---------------------------------------------------------------
check "the default policy is standard" grep -q "policy standard" "$LOG"
for x in $SIX; do
    trace_on; out=$(${x%%:*} 2>&1); rc=$?; trace_off
    echo "standard, ${x%%:*}: exit $rc: $(echo "$out" | tail -2 | tr '\n' ' ')"
    check "standard refuses ${x%%:*} (opcode ${x#*:}): the tool fails" [ $rc -ne 0 ]
    check "  and the backing disk saw no ${x#*:}" [ "$(reached ${x#*:})" -eq 0 ]
done
check "sg_raw shows the vendor opcode refused as INVALID COMMAND OPERATION CODE" \
    bash -c "sg_raw $BSG c1 00 00 00 00 00 2>&1 | grep -qi 'invalid command operation code'"
# The same CDBs raw: the sense each refusal names.
check "WRITE BUFFER download mode: ILLEGAL REQUEST, INVALID FIELD IN CDB (24/00)" \
    [ "$(asc 3b050000000000000000)" = "2 2400" ]
check "FORMAT UNIT: INVALID COMMAND OPERATION CODE (20/00)" [ "$(asc 040000000000)" = "2 2000" ]
check "SANITIZE: 20/00" [ "$(asc 48020000000000000000)" = "2 2000" ]
check "ATA PASS-THROUGH(16) IDENTIFY: 20/00" \
    [ "$(asc 85080e0000000100000000000000ec00 --in 512)" = "2 2000" ]
check "MODE SELECT(10): 20/00" [ "$(asc 55100000000000000800 --out /tmp/ms8)" = "2 2000" ]
check "normal use passes: READ(10), INQUIRY, MODE SENSE" \
    bash -c "sg_dd if=$BSG of=/dev/null bs=512 count=8 2>/dev/null && sg_inq $BSG > /dev/null && sg_modes $BSG > /dev/null"
ops_a=$(sg_opcodes "$A" 2>&1); ops_b=$(sg_opcodes "$BSG" 2>&1)
check "REPORT SUPPORTED OPERATION CODES: the device lists WRITE BUFFER" grep -qi "write buffer" <<< "$ops_a"
check "  through tcmu-sg under standard it does not, and still lists READ(16)" \
    bash -c "! grep -qi 'write buffer' <<< '$ops_b' && grep -qi 'read(16)' <<< '$ops_b'"
refused_count() { "$BIN" status --json | python3 -c "
import json, sys
d = [d for d in json.load(sys.stdin)['devices'] if d['name'].endswith('/pol')][0]
print(d['counters']['$1'])"; }
n=$(refused_count policy_refused)
echo "tcmu-sg status: $n commands refused by the policy"
check "tcmu-sg status counts the refusals (at least the 12 above)" [ "${n:-0}" -ge 12 ]
check "the log names each refused opcode once, with the grant that allows it" \
    bash -c "[ \$(grep -c 'opcode 0x3b .*refused by policy standard (allow it with policy=standard+firmware)' $LOG) -eq 1 ] \
             && [ \$(grep -c 'opcode 0x04 FORMAT UNIT refused by policy standard (allow it with policy=standard+format)' $LOG) -eq 1 ]"
check "  and the status table shows the counts" bash -c "'$BIN' status | grep -q 'refused by the policy'"

# --- grants -------------------------------------------------------------------
reconfigure "policy=standard+firmware+format" "standard+firmware+format"
# (A microcode download leaves a unit attention behind: cleared each time.)
for x in wb:3b fmt:04; do
    trace_on; ${x%%:*} > /dev/null 2>&1; trace_off
    check "standard+firmware+format: ${x%%:*} reaches the backing disk" [ "$(reached ${x#*:})" -ge 1 ]
    sg_turs "$BSG" > /dev/null 2>&1; sg_turs "$BSG" > /dev/null 2>&1
done
for x in ata:85 vendor:c1; do
    trace_on; ${x%%:*} > /dev/null 2>&1; trace_off
    check "  ${x%%:*} is still refused" [ "$(reached ${x#*:})" -eq 0 ]
done

# --- full ---------------------------------------------------------------------
reconfigure "policy=full" "full"
for x in $SIX; do
    trace_on; ${x%%:*} > /dev/null 2>&1; trace_off
    check "full: ${x%%:*} reaches the backing disk" [ "$(reached ${x#*:})" -ge 1 ]
    sg_turs "$BSG" > /dev/null 2>&1; sg_turs "$BSG" > /dev/null 2>&1
done
sg_turs "$A" > /dev/null 2>&1; sg_turs "$A" > /dev/null 2>&1
check "full: the device's own answer to a vendor opcode passes unchanged" \
    $SGIO same "$(sg_of "$A")" "$BSG" c10000000000 --status 2 --key 5
check "  and REPORT SUPPORTED OPERATION CODES is the device's" \
    bash -c "[ \"\$(sg_opcodes $BSG 2>&1)\" = \"\$(sg_opcodes $A 2>&1)\" ]"

# --- read-only ------------------------------------------------------------------
reconfigure "policy=standard+format;readonly=1" "standard+format, read-only"
echo 1 > "/sys/block/${B#/dev/}/device/rescan"
wait_for 10 bash -c "[ \$(blockdev --getro $B) = 1 ]"
check "readonly=1: the initiator's disk is read-only (blockdev --getro)" [ "$(blockdev --getro "$B")" = 1 ]
check "  MODE SENSE has the WP bit" bash -c "sg_modes $BSG 2>&1 | grep -qi 'WP=1'"
check "  a write fails" bash -c "! dd if=/dev/zero of=$B bs=4k count=1 oflag=direct 2>/dev/null"
check "  mkfs fails" bash -c "! mkfs.ext4 -q -F $B > /dev/null 2>&1"
trace_on
w=$(asc 2a000000100000000100 --out /tmp/fw)
s=$(asc 48020000000000000000)
f=$(asc 040000000000)
trace_off
echo "read-only: WRITE(10) $w, SANITIZE $s, FORMAT UNIT $f"
check "  WRITE(10) through SG_IO: DATA PROTECT, WRITE PROTECTED (27/00)" [ "$w" = "2 2700" ]
check "  a no-data SANITIZE (granted by format): 27/00" [ "$s" = "2 2700" ]
check "  FORMAT UNIT: 27/00" [ "$f" = "2 2700" ]
check "  none of them reached the backing disk" \
    [ "$(( $(reached 2a) + $(reached 48) + $(reached 04) ))" -eq 0 ]
check "  reads work and match the backing disk" \
    cmp <(dd if="$B" bs=1M count=8 iflag=direct 2>/dev/null) <(dd if="${DISKS[1]}" bs=1M count=8 iflag=direct 2>/dev/null)
n=$(refused_count readonly_refused)
check "  tcmu-sg status counts them under read-only ($n)" [ "${n:-0}" -ge 3 ]
"$BIN" unexport --name pol || bad "unexport pol"

# Reservations through a read-only LUN: a LIO ramdisk (SPC-3 PR) as the
# backing disk, its PR commands passed to it (pgr_support=0).
R=$("$LIO" ramdisk prr 16384 naa.5001405eeeeeee01) || { bad "ramdisk"; finish; }
RO=$(timeout 90 "$BIN" export --name prro --options "readonly=1" --attrib pgr_support=0 "$R") \
    || { bad "export prro"; finish; }
# The initiator's disk is read-only, so its block node opens read-only:
# sg_persist goes through the sg node.
RO=$(sg_of "$RO")
K=0xabc123
sg_persist --out --register --param-sark=$K "$RO" > /dev/null 2>&1
check "read-only: PR OUT REGISTER through tcmu-sg reaches the backing LU" \
    bash -c "sg_persist --in -k $R 2>/dev/null | grep -qi $K"
sg_persist --out --reserve --param-rk=$K --prout-type=5 "$RO" > /dev/null 2>&1
check "  RESERVE too (write exclusive, registrants only)" \
    bash -c "sg_persist --in -r $R 2>/dev/null | grep -qi 'write exclusive, registrants only'"
check "  PR IN through tcmu-sg reads the key" bash -c "sg_persist --in -k $RO 2>/dev/null | grep -qi $K"
sg_persist --out --release --param-rk=$K --prout-type=5 "$RO" > /dev/null 2>&1
sg_persist --out --register --param-rk=$K --param-sark=0 "$RO" > /dev/null 2>&1
check "  and RELEASE, unregister" bash -c "sg_persist --in -k $R 2>/dev/null | grep -qi 'no registered reservation keys'"
"$BIN" unexport --name prro || bad "unexport prro"
"$LIO" remove-ramdisk prr naa.5001405eeeeeee01 > /dev/null 2>&1 || true

kill -TERM $DAEMON; wait $DAEMON
check "daemon exits cleanly" [ $? -eq 0 ]
finish
