#!/usr/bin/env bash
# End-to-end tests on the real kernel (6.1, or the one TCMU_SG_VM_KERNEL
# picks). Runs inside the VM (see
# run-vm.sh): a scsi_debug disk is the backing device, tcmu-sg serves a
# user:sg backstore over it, and tcm_loop exports it to the same guest.
#
#   e2e.sh TCMU_SG_BINARY
set -uo pipefail
BIN=${1:?usage: e2e.sh TCMU_SG_BINARY}
HERE=$(cd "$(dirname "$0")" && pwd)
SGIO="python3 $HERE/sgio.py"
LOG=/vm-out/tcmu-sg.log
SUITE=e2e
. "$HERE/lib.sh"

# --- set-up ---------------------------------------------------------------
for m in sd_mod sg target_core_user tcm_loop; do modprobe "$m" || { bad "modprobe $m"; finish; }; done
modprobe scsi_debug dev_size_mb=256 sector_size=512 max_luns=4 || { bad "modprobe scsi_debug"; finish; }
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
mountpoint -q /sys/kernel/tracing || mount -t tracefs none /sys/kernel/tracing
udevadm settle 2>/dev/null || sleep 1

backing_addr=$(lsscsi | awk '/scsi_debug/{print $1; exit}' | tr -d '[]')
BACK=$(ls /sys/class/scsi_device/"$backing_addr"/device/block/ 2>/dev/null | head -1)
BACK_SG=$(ls /sys/class/scsi_device/"$backing_addr"/device/scsi_generic/ 2>/dev/null | head -1)
[ -n "$BACK" ] && [ -n "$BACK_SG" ] || { bad "scsi_debug disk present"; finish; }
BACK=/dev/$BACK
BACK_SG=/dev/$BACK_SG
backing_host=${backing_addr%%:*}
echo "backing device: $BACK ($BACK_SG, host $backing_host)"

check "check-config accepts the backing device" "$BIN" check-config "sg/$BACK"
check "check-config refuses a regular file" bash -c "! $BIN check-config sg//etc/hostname"
check "check-config refuses an unknown option" bash -c "! $BIN check-config 'sg/$BACK;bogus=1'"
check "check-config refuses a directory" bash -c "! $BIN check-config sg//dev/disk"
check "check-config refuses a missing device" bash -c "! $BIN check-config sg//dev/sdzz"
check "check-config refuses a non-SCSI device node" bash -c "! $BIN check-config sg//dev/null"
check "an sg node resolves to its block node" bash -c "$BIN check-config sg/$BACK_SG | grep -q '^sg: $BACK (block, $BACK_SG)'"
mkdir -p /dev/disk/by-id && ln -sf "../../${BACK#/dev/}" /dev/disk/by-id/scsi-test-backing
check "a /dev/disk/by-id link resolves to the disk" bash -c "$BIN check-config sg//dev/disk/by-id/scsi-test-backing | grep -q '^sg: $BACK (block'"

# --- the ring as the 6.1 kernel writes it ---------------------------------
# Export before the daemon runs: the initiator's scan queues an INQUIRY on
# the ring and waits. ring-dump reads that entry raw and checks it against
# our ABI; the daemon, started next, resets the ring as it attaches (the
# queued INQUIRY completes BUSY and the initiator retries it) and answers
# the retry, ending the scan.
timeout 120 "$BIN" export --name d0 "$BACK" > /tmp/export-d0 2>&1 &
EXPORT=$!
dump=$("$BIN" ring-dump d0 --wait 60)
echo "$dump"
# Every kernel tested offers out-of-order completion, READ_LEN and TMR
# (0x7); 5.13 and later add KEEP_BUF (0xf).
flags=$(grep -o 'mailbox version 2 flags 0x[0-9a-f]*' <<< "$dump" | awk '{print $NF}')
echo "kernel $(uname -r): mailbox flags $flags"
check "ring: mailbox v2 with OOOC, READ_LEN, TMR" [ "$(( ${flags:-0} & 7 ))" -eq 7 ]
check "ring: INQUIRY entry is 120 bytes, CDB at entry + 112, layout OK" \
    bash -c "grep -q 'CMD len 120 .* iov_cnt 1 cdb_off = entry + 112 cdb \[12,' <<< '$dump' && grep -q 'layout OK' <<< '$dump'"

"$BIN" run --log-level debug > "$LOG" 2>&1 &
DAEMON=$!
wait $EXPORT
check "a command queued before the daemon started is retried and answered" [ $? -eq 0 ]
kill -0 $DAEMON 2>/dev/null || { bad "daemon runs"; finish; }

# --- identity, capacity, data ---------------------------------------------
LUN=$(cat /tmp/export-d0)
[ -b "$LUN" ] || { bad "export d0 gave a block device ($LUN)"; finish; }
LUN_SG=$(sg_of "$LUN")
echo "initiator sees $LUN ($LUN_SG)"
check "uio name carries the config" grep -q "^tcm-user/1/d0/sg/$BACK\$" /sys/class/uio/uio*/name

inq_b=$(sg_inq "$BACK" | grep -v 'Vendor specific\|^ *$') ; inq_l=$(sg_inq "$LUN" | grep -v 'Vendor specific\|^ *$')
check "sg_inq matches the backing device" [ "$inq_b" == "$inq_l" ]
vpd_b=$(sg_vpd -p sn "$BACK" 2>&1); vpd_l=$(sg_vpd -p sn "$LUN" 2>&1)
check "unit serial VPD matches" [ "$vpd_b" == "$vpd_l" ]
cap_b=$(sg_readcap -l "$BACK"); cap_l=$(sg_readcap -l "$LUN")
check "sg_readcap -l matches" [ "$cap_b" == "$cap_l" ]
echo "$cap_l" | head -3

fio --name=verify --filename="$LUN" --rw=randwrite --bs=64k --size=64M --direct=1 \
    --ioengine=libaio --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --randseed=1234 --output=/vm-out/fio-verify.txt >/dev/null 2>&1
check "fio writes 64 MiB through the LUN and verifies it" grep -q 'err= 0' /vm-out/fio-verify.txt
sum_l=$(dd if="$LUN" bs=1M count=64 iflag=direct 2>/dev/null | sha256sum)
sum_b=$(dd if="$BACK" bs=1M count=64 iflag=direct 2>/dev/null | sha256sum)
check "the 64 MiB read back directly from the backing device are identical" [ "$sum_l" == "$sum_b" ]

# --- status fidelity --------------------------------------------------------
# A vendor-specific opcode under the default policy (standard): refused by
# tcmu-sg with INVALID COMMAND OPERATION CODE, the sense the device gives
# for an opcode it does not know (under policy=full the device's own
# answer passes: tests/vm/e2e-classes.sh).
asc_of() { python3 -c 'import json,sys; s=json.load(sys.stdin)["sense"]; print(s[24:28])'; }
vendor_refused() { [ "$($SGIO run "$LUN_SG" d1000000000000000000 | asc_of)" = 2000 ]; }
check "a vendor opcode: refused by the default policy with ILLEGAL REQUEST, 20/00" vendor_refused
check "  as the device answers an opcode it does not know" $SGIO same "$BACK_SG" "$LUN_SG" "d1000000000000000000" --status 2 --key 5
# READ CAPACITY(16) data identical.
check "READ CAPACITY(16) identical" bash -c "[ \"\$($SGIO run $BACK_SG 9e10000000000000000000000020000000 --in 32 | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"data_sha256\"])')\" == \"\$($SGIO run $LUN_SG 9e10000000000000000000000020000000 --in 32 | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"data_sha256\"])')\" ]"

echo 2 > /sys/bus/pseudo/drivers/scsi_debug/opts   # medium errors at LBA 0x1234..
check "medium error: CHECK CONDITION, MEDIUM ERROR, identical sense (READ16 on sg nodes)" \
    $SGIO same "$BACK_SG" "$LUN_SG" "88000000000000001230000000100000" --in 8192 --status 2 --key 3
check "medium error: identical through the block node too (READ10)" \
    $SGIO same "$BACK" "$LUN" "28000000123000001000" --in 8192 --status 2 --key 3
echo 0 > /sys/bus/pseudo/drivers/scsi_debug/opts
# RECOVERED ERROR with all the data read (opts=8: on every_nth command):
# the initiator gets the sense and the data, as from the device itself.
dd if=/dev/urandom of="$BACK" bs=4096 seek=32 count=1 oflag=direct 2>/dev/null   # LBA 256
echo 1 > /sys/bus/pseudo/drivers/scsi_debug/every_nth
echo 8 > /sys/bus/pseudo/drivers/scsi_debug/opts
out=$($SGIO same "$BACK_SG" "$LUN_SG" "28000000010000000800" --in 4096)
echo "RECOVERED ERROR read: $out"
check "RECOVERED ERROR: identical sense, data and residual" \
    $SGIO same "$BACK_SG" "$LUN_SG" "28000000010000000800" --in 4096 --status 2 --key 1 --data
echo 0 > /sys/bus/pseudo/drivers/scsi_debug/opts
echo 0 > /sys/bus/pseudo/drivers/scsi_debug/every_nth

# --- splitting ----------------------------------------------------------------
timeout 60 "$BIN" unexport --name d0 || bad "unexport d0"
check "unexport removed the backstore" [ ! -e /sys/kernel/config/target/core/user_1/d0 ]
LUN=$(timeout 90 "$BIN" export --name d1 --options "max_xfer_kb=64" "$BACK") || { bad "export d1 (max_xfer_kb=64)"; finish; }
LUN_SG=$(sg_of "$LUN")
# The Block Limits VPD page is the backing device's but for its transfer
# lengths, which say tcmu-sg's limit (64 KiB = 128 blocks), so that the
# initiator splits large requests itself.
$SGIO run "$BACK_SG" 1201b0004000 --in 64 --save /tmp/b0-back > /dev/null
$SGIO run "$LUN_SG" 1201b0004000 --in 64 --save /tmp/b0-lun > /dev/null
b0_same_but_lengths() {
    python3 - /tmp/b0-back /tmp/b0-lun <<'PY'
import sys
a, b = (open(f, "rb").read() for f in sys.argv[1:])
be = lambda x, i: int.from_bytes(x[i:i + 4], "big")
print(f"Block Limits: backing max {be(a, 8)} optimal {be(a, 12)}, LUN max {be(b, 8)} optimal {be(b, 12)}")
same = a[:8] == b[:8] and a[16:] == b[16:]
sys.exit(not (same and len(a) == len(b) == 64 and be(b, 8) == 128 and be(b, 12) <= 128))
PY
}
check "VPD B0: the backing device's but for the transfer lengths, which say 64 KiB" b0_same_but_lengths
check "  and the initiator takes it: requests of at most 64 KiB" \
    [ "$(cat /sys/block/"${LUN#/dev/}"/queue/max_sectors_kb)" -le 64 ]
T=/sys/kernel/tracing
trace_on() { echo "host_no == $backing_host" > $T/events/scsi/scsi_dispatch_cmd_start/filter
             echo > $T/trace; echo 1 > $T/events/scsi/scsi_dispatch_cmd_start/enable; }
trace_off() { echo 0 > $T/events/scsi/scsi_dispatch_cmd_start/enable; }
# Events without recording task names: that recording hooks the scheduler's
# tracepoints, and patching __schedule's code while it runs has crashed the
# guest under TCG (int3 oops); the SCSI event patches only scsi_mod.
echo 0 > $T/options/record-cmd
# "lba txlen" of every WRITE(10) the backing device received, in order.
writes() { grep -o 'cmnd=(WRITE_10 lba=[0-9]* txlen=[0-9]*' $T/trace | sed 's/.*lba=\([0-9]*\) txlen=\([0-9]*\)/\1 \2/'; }
expect_chunks() { # FIRST_LBA COUNT: COUNT chunks of 128 blocks from FIRST_LBA
    seq 0 $(($2 - 1)) | awk -v f="$1" '{print f + 128 * $1, 128}'; }

# One 1 MiB WRITE(10), the largest single command tcm_loop's initiator
# passes (256 segments of 4 KiB): 16 chunks of 64 KiB, in order.
dd if=/dev/urandom of=/tmp/p1 bs=1M count=1 2>/dev/null
trace_on
w=$($SGIO run "$LUN_SG" 2a000000800000080000 --out /tmp/p1)
trace_off
echo "1 MiB WRITE(10) at LBA 0x8000: $w"
check "1 MiB write completes GOOD" bash -c "echo '$w' | grep -q '\"status\": 0,'"
check "it reached the backing device as 16 WRITE(10) of 128 blocks, in LBA order" \
    diff <(writes) <(expect_chunks 32768 16)
check "the split write landed intact on the backing device" \
    cmp <(dd if="$BACK" bs=512 skip=32768 count=2048 iflag=direct 2>/dev/null) /tmp/p1

# A 4 MiB write through the initiator's block device: the initiator, told
# the limit by the Block Limits page, sends it in pieces of at most 64 KiB,
# side by side; they reach the backing device covering the range exactly
# once.
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
trace_on
dd if=/tmp/pattern of="$LUN" bs=4M count=1 seek=16 oflag=direct 2>/dev/null
trace_off
echo "4 MiB write: the backing device saw $(writes | wc -l) WRITE(10) commands: $(writes | awk '{print $2}' | sort | uniq -c | tr -s ' ')"
# The initiator's request boundaries depend on how its buffer's pages merge
# into segments, so chunks need not start on 64 KiB boundaries: check that
# none exceeds 64 KiB and that together they cover the 4 MiB exactly once.
covers() { # FIRST BLOCKS MAXLEN < "lba len" lines
    sort -n | awk -v f="$1" -v n="$2" -v m="$3" '
        { if ($2 > m || $1 != f + done) bad = 1; done += $2 }
        END { exit (bad || done != n) }'
}
four_mib_covered() { writes | covers 131072 8192 128; }
check "a 4 MiB write became chunks of at most 64 KiB covering it exactly once" four_mib_covered
check "  at least 64 of them" [ "$(writes | wc -l)" -ge 64 ]
check "the 4 MiB landed intact on the backing device" \
    cmp <(dd if="$BACK" bs=1M skip=64 count=4 iflag=direct 2>/dev/null) /tmp/pattern
check "and read back through the LUN (split reads) intact" \
    cmp <(dd if="$LUN" bs=1M skip=64 count=4 iflag=direct 2>/dev/null) /tmp/pattern

# A split read that meets a medium error stops at the failing chunk and
# reports the backing device's sense: 1 MiB from LBA 0x1100; the error is
# at 0x1234, in the third chunk.
echo 2 > /sys/bus/pseudo/drivers/scsi_debug/opts
out=$($SGIO same "$BACK_SG" "$LUN_SG" "28000000110000080000" --in 1048576)
echo "split read over a medium error: $out"
check "split read over a medium error: status and sense identical" \
    $SGIO same "$BACK_SG" "$LUN_SG" "28000000110000080000" --in 1048576 --status 2 --key 3
echo 0 > /sys/bus/pseudo/drivers/scsi_debug/opts

# --- reconfiguration ---------------------------------------------------------
wait_log() { wait_for 10 grep -q "$1" "$LOG"; }
"$BIN" set-config --name d1 "sg/$BACK;max_xfer_kb=32"
check "RECONFIG: the daemon reopened with max_xfer_kb=32" wait_log "reconfigured: .*max transfer 32 KiB"
trace_on
w=$($SGIO run "$LUN_SG" 2a000000800000080000 --out /tmp/p1)
trace_off
check "after reconfig a 1 MiB write is 32 chunks of 64 blocks" \
    diff <(writes) <(seq 0 31 | awk '{print 32768 + 64 * $1, 64}')
check "set-config refuses a bad config string" bash -c "! $BIN set-config --name d1 'sg/$BACK;bogus=1'"
"$BIN" set-config --name d1 "sg//dev/null"
check "RECONFIG to a device that cannot be served is logged" wait_log "reconfigured with a bad config"
t=$($SGIO run "$LUN_SG" 000000000000)
echo "TEST UNIT READY on a device without backing: $t"
check "  and every command is answered NOT READY 04/03" \
    grep -q '"status": 2,.*"sense": "700002000000000a00000000040300000000"' <<< "$t"
"$BIN" set-config --name d1 "sg//dev/sd-gone"
check "RECONFIG to a path that leads nowhere yet is logged" wait_log "reconfigured to /dev/sd-gone: not there yet"
t=$($SGIO run "$LUN_SG" 000000000000)
check "  and commands are answered NOT READY 05/00 while it is looked for" \
    grep -q '"status": 2,.*"sense": "700002000000000a00000000050000000000"' <<< "$t"
check "the daemon is still running" kill -0 $DAEMON
"$BIN" set-config --name d1 "sg/$BACK"
wait_log "reconfigured: .*max transfer 4096 KiB" || true
t=$($SGIO run "$LUN_SG" 000000000000)
check "  and recovers when pointed back at the disk" grep -q '"status": 0,' <<< "$t"

# --- a disk something else holds ----------------------------------------------
# A device-mapper table over another scsi_debug disk holds it: check-config
# and the daemon both refuse it naming the holder; the daemon retries it and
# serves it once the holder is gone.
# (another LUN of scsi_debug's own host: the tcm_loop LUN answers INQUIRY
# as "Linux scsi_debug" too, and is served by d1 itself)
BUSY=$(lsscsi | awk -v h="[$backing_host:" 'index($1, h) == 1 && /scsi_debug/ {print $NF}' | tail -1)
[ -n "$BUSY" ] && [ "$BUSY" != "$BACK" ] || bad "a second scsi_debug disk for the busy-disk checks"
modprobe dm_mod 2>/dev/null
dmsetup create tcmu-sg-busy --table "0 2048 linear $BUSY 0"
from=$(wc -l < "$LOG")
wait_new() { wait_for 10 bash -c "tail -n +$((from + 1)) '$LOG' | grep -q '$1'"; }
cc=$("$BIN" check-config "sg/$BUSY" 2>&1); ccrc=$?
echo "check-config of a held disk: rc $ccrc: $cc"
check "check-config refuses a disk device-mapper holds, naming the holder" \
    bash -c "[ $ccrc -ne 0 ] && grep -q 'in use (held by device-mapper tcmu-sg-busy' <<< '$cc'"
"$BIN" set-config --name d1 "sg/$BUSY"
check "  the daemon says the same and retries it" \
    wait_new "reconfigured to $BUSY: $BUSY: in use (held by device-mapper tcmu-sg-busy"
t=$($SGIO run "$LUN_SG" 000000000000)
check "  meanwhile commands are answered NOT READY" grep -q '"status": 2,.*"sense": "7000020000' <<< "$t"
dmsetup remove tcmu-sg-busy
check "  and serves the disk once it is released" wait_new "backing device there after"
t=$($SGIO run "$LUN_SG" 000000000000)
check "  which answers" grep -q '"status": 0,' <<< "$t"
"$BIN" set-config --name d1 "sg/$BACK"

# --- its own LUN -------------------------------------------------------------
# d1 pointed at the LUN it exports itself (as when a node name such as
# /dev/sdc passes to that LUN): refused before anything is sent, naming it,
# instead of each command coming back to d1 and waiting on itself.
wait_log "reconfigured: .*max transfer 4096 KiB" || true
OWN=/dev/$(ls "/sys/class/scsi_generic/${LUN_SG#/dev/}/device/block/" | head -1)
from=$(wc -l < "$LOG")
"$BIN" set-config --name d1 "sg/$OWN"
check "RECONFIG to the device's own LUN ($OWN) is refused, naming it" \
    wait_new "reconfigured with a bad config ($OWN: the LUN user_[0-9]*/d1 itself exports (tcm_loop, "
t=$(timeout 20 $SGIO run "$LUN_SG" 000000000000)
echo "TEST UNIT READY while d1 is pointed at its own LUN: $t"
check "  and commands are answered NOT READY, not sent round to itself" \
    grep -q '"status": 2,.*"sense": "700002000000000a00000000040300000000"' <<< "$t"
"$BIN" set-config --name d1 "sg/$BACK"
wait_log "reconfigured: .*max transfer 4096 KiB" || true

# --- a dead backing device ---------------------------------------------------
# scsi_debug ignores every command (opts=4, every_nth=1): our SG_IO times out
# after timeout_s=2 and the initiator gets an answer well before LIO's 30 s
# cmd_time_out, while the daemon keeps serving.
"$BIN" set-config --name d1 "sg/$BACK;timeout_s=2"
wait_log "reconfigured: .*max transfer 4096 KiB" || true
sleep 0.5
echo 1 > /sys/bus/pseudo/drivers/scsi_debug/every_nth
echo 4 > /sys/bus/pseudo/drivers/scsi_debug/opts
t0=$(date +%s)
t=$($SGIO run "$LUN_SG" 28000000000000000800 --in 4096)
t1=$(date +%s)
echo 0 > /sys/bus/pseudo/drivers/scsi_debug/opts
echo 0 > /sys/bus/pseudo/drivers/scsi_debug/every_nth
echo "READ on a dead backing device, after $((t1 - t0)) s: $t"
check "a command to a dead backing device is answered, not GOOD" bash -c "grep -q '\"status\": [1-9]' <<< '$t'"
check "  within 25 s (LIO's cmd_time_out is 30 s)" [ $((t1 - t0)) -lt 25 ]
sleep 1
t=$($SGIO run "$LUN_SG" 28000000000000000800 --in 4096)
check "  and the device serves again once the backing device is back" grep -q '"status": 0,' <<< "$t"

# --- concurrency at a backing device that takes time to answer --------------
# scsi_debug answers after one jiffy (about 4 ms): a handler that runs the
# initiator's queued commands one at a time stays near its QD1 rate. Every
# command must be in flight at once: QD16 reaches at least 12x QD1 (pscsi
# gets 17x here; the handler before leader/followers got 1-9x). With
# max_inflight=4 at most 4 commands hold the device at a time, each for at
# least 4 ms: at most 1000 per second.
iops() { # LUN QD -> fio randread IOPS over 3 s
    fio --name=c --filename="$1" --rw=randread --bs=4k --iodepth="$2" --ioengine=libaio --direct=1 \
        --size=64M --runtime=3 --ramp_time=1 --time_based --randrepeat=0 --norandommap \
        --output-format=json 2>/dev/null | python3 -c 'import json,sys; s=sys.stdin.read(); print(int(json.loads(s[s.index("{"):])["jobs"][0]["read"]["iops"]))'
}
"$BIN" set-config --name d1 "sg/$BACK"
wait_log "reconfigured: .*up to 192 commands at once" || true
echo 1 > /sys/bus/pseudo/drivers/scsi_debug/delay
q1=$(iops "$LUN" 1); q16=$(iops "$LUN" 16)
echo "4 ms backing latency: QD1 $q1 IOPS, QD16 $q16 IOPS ($(python3 -c "print(round($q16 / max($q1, 1), 1))")x)"
check "at 4 ms latency QD16 reaches at least 12x the QD1 rate" [ "$q16" -ge $((12 * q1)) ]
"$BIN" set-config --name d1 "sg/$BACK;max_inflight=4"
check "max_inflight=4 is taken up" wait_log "reconfigured: .*up to 4 commands at once"
c1=$(iops "$LUN" 1); c16=$(iops "$LUN" 16)
echo "  with max_inflight=4: QD1 $c1 IOPS, QD16 $c16 IOPS"
check "  and caps QD16 at 4 in flight (at most 1000/s, at least 3x QD1)" test "$c16" -le 1100 -a "$c16" -ge $((3 * c1))
echo 0 > /sys/bus/pseudo/drivers/scsi_debug/delay
"$BIN" set-config --name d1 "sg/$BACK"
wait_log "reconfigured: .*up to 192 commands at once" || true

# --- many devices in one daemon ---------------------------------------------
others=$(lsscsi | awk '/scsi_debug/{print $NF}' | grep -v "^$BACK\$" | head -3)
first_other=$(echo $others | awk '{print $1}')
check "export with a bad attribute fails" bash -c "! $BIN export --name rb --attrib no_such_attribute=1 $first_other"
check "  and leaves no backstore behind" [ ! -e /sys/kernel/config/target/core/user_1/rb ]
n=0; luns=()
for b in $others; do
    n=$((n + 1))
    l=$(timeout 90 "$BIN" export --name "m$n" "$b") || { bad "export m$n over $b"; continue; }
    luns+=("$l")
done
check "three more devices exported side by side" [ "${#luns[@]}" -eq 3 ]
i=0; pids=()
for l in "${luns[@]}"; do
    # scsi_debug LUNs share one store: each device writes its own 16 MiB.
    fio --name=m$i --filename="$l" --rw=randwrite --bs=16k --offset=$((96 + 16 * i))M --size=16M \
        --direct=1 --ioengine=libaio --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --randseed=$i --output=/vm-out/fio-m$i.txt >/dev/null 2>&1 &
    pids+=($!); i=$((i + 1))
done
okc=0
for p in "${pids[@]}"; do wait "$p" && okc=$((okc + 1)); done
check "concurrent fio verify on all three devices" [ "$okc" -eq 3 ]
check "  with no errors reported" bash -c "! grep -L 'err= 0' /vm-out/fio-m*.txt | grep -q ."
check "four sg devices are live in one daemon" bash -c "[ \$(cat /sys/class/uio/*/name | grep -c '/sg/') -eq 4 ]"
check "  the daemon is one process serving them" kill -0 $DAEMON
for k in $(seq 1 $n); do timeout 60 "$BIN" unexport --name "m$k" || bad "unexport m$k"; done

# --- shutdown -----------------------------------------------------------------
timeout 60 "$BIN" unexport --name d1 || bad "unexport d1"
kill -TERM $DAEMON
wait $DAEMON
check "daemon exits cleanly on SIGTERM" [ $? -eq 0 ]
finish
