#!/usr/bin/env bash
# Reliability on the real 6.1 kernel, inside the VM: a restart under load
# with out-of-order completions (kill -9, three times), a backing disk that
# is deleted and comes back (and a path that comes back as another disk),
# task management under load, a backing disk that stops answering while
# another device of the daemon keeps its speed, hostile config strings, and
# a daemon stopped past LIO's cmd_time_out: no command the kernel failed
# back runs afterwards.
#
#   e2e-reliability.sh TCMU_SG_BINARY LIO_HELPER [SECTIONS]
#   (SECTIONS: the numbers of the sections to run, e.g. "1"; default all)
set -uo pipefail
BIN=${1:?usage: e2e-reliability.sh TCMU_SG_BINARY LIO_HELPER}
LIO=${2:?usage: e2e-reliability.sh TCMU_SG_BINARY LIO_HELPER}
SECTIONS=${3:-1 2 3 4 5 6}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
HERE=$(cd "$(dirname "$0")" && pwd)
SGIO="python3 $HERE/sgio.py"
LOG=/vm-out/tcmu-sg-reliability.log
SUITE=e2e-reliability
. "$HERE/lib.sh"
SD=/sys/bus/pseudo/drivers/scsi_debug

# --- set-up ---------------------------------------------------------------
scsi_debug_luns dev_size_mb=256 max_luns=4 delay=0
[ "${#DISKS[@]}" -eq 4 ] || { bad "four scsi_debug disks"; finish; }
echo "scsi_debug disks: ${DISKS[*]} (${ADDRS[*]})"
start_daemon() {
    "$BIN" run --no-dbus --log-level debug >> "$LOG" 2>&1 &
    DAEMON=$!
}
start_daemon
status_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'; }

# --- 1. restart under load without replay ------------------------------------
# A writer verifying what it wrote (QD32) and a reader of mixed sizes beside
# it on the same LUN, so completions come out of order; the daemon is
# killed with SIGKILL four times and started again once the old process is
# gone. A new daemon that read the ring's old entries again would run
# completed writes a second time, or complete a live command with a stale
# one's status: the ring breaks, or fio sees I/O or verify errors. The
# backing device answers after 0.5 ms, so many commands are in flight at
# each kill and sizes from 4k to 256k finish out of order.
if want 1; then
LUN=$(timeout 90 "$BIN" export --name r0 "${DISKS[0]}") || { bad "export r0"; finish; }
echo "r0: $LUN over ${DISKS[0]}"
echo 500000 > $SD/ndelay
fio --name=w --filename="$LUN" --rw=randwrite --bs=16k --iodepth=32 --ioengine=libaio --direct=1 \
    --size=64M --loops=4 --verify=crc32c --verify_backlog=256 --verify_fatal=1 --randseed=7 \
    --output=/vm-out/restart-writer.txt > /dev/null 2>&1 &
WRITER=$!
fio --name=r --filename="$LUN" --rw=randread --bsrange=4k-256k --iodepth=16 --ioengine=libaio \
    --direct=1 --size=64M --time_based --runtime=600 --output=/vm-out/restart-reader.txt > /dev/null 2>&1 &
READER=$!
kills=0
for i in 1 2 3 4; do
    sleep 3
    kill -0 $WRITER 2>/dev/null || break
    kill -9 $DAEMON
    wait $DAEMON 2>/dev/null   # the old process is gone, as systemd waits
    kills=$((kills + 1))
    echo "kill -9 #$i at $(date +%T.%N | cut -c1-12); restarting"
    start_daemon
done
wait $WRITER; wrc=$?
kill $READER 2>/dev/null; wait $READER 2>/dev/null
echo 0 > $SD/delay
echo "writer: $(grep -E 'err=|verify' /vm-out/restart-writer.txt | head -3 | tr -s ' ')"
check "the daemon was killed 4 times while fio ran" [ "$kills" -eq 4 ]
check "fio's verifying writer ends without an I/O or verify error" \
    bash -c "[ $wrc -eq 0 ] && grep -q 'err= 0' /vm-out/restart-writer.txt && ! grep -qi 'verify.*fail\|bad magic\|crc32c' /vm-out/restart-writer.txt"
check "the mixed-size reader saw no I/O error" grep -q 'err= 0' /vm-out/restart-reader.txt
check "the kernel log has no 'ring is broken'" bash -c "! dmesg | grep -q 'ring is broken'"
check "no task is left in D state" bash -c "! ps -eo stat= | grep -q '^D'"
sum_l=$(dd if="$LUN" bs=1M count=64 iflag=direct 2>/dev/null | sha256sum)
sum_b=$(dd if="${DISKS[0]}" bs=1M count=64 iflag=direct 2>/dev/null | sha256sum)
check "the backing device holds the bytes the initiator reads" [ "$sum_l" == "$sum_b" ]
echo "restart to first completed command: $(grep -o 'r0 (uio[0-9]*): first command completed [0-9]* ms' "$LOG" | awk '{print $6 " ms"}' | tr '\n' ' ')"
check "each restart served again (a first completion logged per start)" \
    [ "$(grep -c 'r0 (uio[0-9]*): first command completed' "$LOG")" -ge 5 ]
timeout 60 "$BIN" unexport --name r0 || bad "unexport r0"
fi

# --- 2. a backing disk that goes and comes back ------------------------------
if want 2; then
B=${DISKS[1]}; BADDR=${ADDRS[1]}; BHOST=${BADDR%%:*}
LUN=$(timeout 90 "$BIN" export --name l0 "$B") || { bad "export l0"; finish; }
LSG=$(sg_of "$LUN")
dd if=/dev/urandom of=/tmp/l0 bs=1M count=4 2>/dev/null
dd if=/tmp/l0 of="$LUN" bs=1M count=4 oflag=direct 2>/dev/null
fio --name=load --filename="$LUN" --rw=randread --bs=4k --iodepth=8 --ioengine=libaio --direct=1 \
    --size=64M --time_based --runtime=600 --continue_on_error=all > /dev/null 2>&1 &
LOAD=$!
sleep 1
echo 1 > "/sys/class/scsi_device/$BADDR/device/delete"
# The first command after the delete, timed alone (python's start
# included).
t0=$(date +%s.%N)
answer=$(timeout 10 $SGIO run "$LSG" 28000000000000000800 --in 4096)
t1=$(date +%s.%N)
echo "after delete, answered in $(python3 -c "print(round($t1 - $t0, 2))") s: $answer"
check "a deleted backing disk: commands get NOT READY 05/00" \
    grep -q '"status": 2,.*"sense": "70000200000000..00000000050000' <<< "$answer"
# The bound that matters is LIO's cmd_time_out (30 s): the answer comes
# well before it, never a hang. The time itself is a figure (above), not a
# pass/fail: python's start under TCG on a loaded machine is part of it.
check "  answered well before LIO's cmd_time_out (under 10 s)" python3 -c "import sys; sys.exit(not ($t1 - $t0 < 10))"
check "  the loss is logged" wait_for 5 grep -q "l0 (uio[0-9]*): backing device .* lost" "$LOG"
sleep 2
answer=$(timeout 10 $SGIO run "$LSG" 28000000000000000800 --in 4096)
check "  still NOT READY while it is away (never GOOD, never a hang)" grep -q '"status": 2,' <<< "$answer"
echo "- - -" > "/sys/class/scsi_host/host$BHOST/scan"
t0=$(date +%s.%N)
back=no
for _ in $(seq 150); do
    [ "$(timeout 10 $SGIO run "$LSG" 28000000000000000800 --in 4096 | status_of)" = 0 ] && { back=yes; break; }
    sleep 0.1
done
t1=$(date +%s.%N)
echo "after rescan: serving again: $back after $(python3 -c "print(round($t1 - $t0, 2))") s"
check "the returned disk is served again, with no admin action" [ $back = yes ]
check "  with the same data" cmp <(dd if="$LUN" bs=1M count=4 iflag=direct 2>/dev/null) /tmp/l0
check "  and the return is logged" grep -q "l0 (uio[0-9]*): backing device back after" "$LOG"
kill $LOAD 2>/dev/null; wait $LOAD 2>/dev/null
timeout 60 "$BIN" unexport --name l0 || bad "unexport l0"

# A path that comes back as another logical unit is refused.
B=$(lsscsi | awk -v a="[$BADDR]" '$1 == a {print $NF}')   # the name after the rescan
C=${DISKS[2]}
mkdir -p /dev/disk/by-id
ln -sfn "$B" /dev/disk/by-id/scsi-test-swap
LUN=$(timeout 90 "$BIN" export --name s0 /dev/disk/by-id/scsi-test-swap) || { bad "export s0"; finish; }
LSG=$(sg_of "$LUN")
echo 1 > "/sys/class/scsi_device/$BADDR/device/delete"
ln -sfn "$C" /dev/disk/by-id/scsi-test-swap
$SGIO run "$LSG" 28000000000000000800 --in 4096 > /dev/null  # meets the loss
check "a path that now leads to another disk is refused" \
    wait_for 10 grep -q "s0 (uio[0-9]*): /dev/disk/by-id/scsi-test-swap is now another logical unit" "$LOG"
answer=$(timeout 10 $SGIO run "$LSG" 28000000000000000800 --in 4096)
check "  and commands still get NOT READY" grep -q '"status": 2,' <<< "$answer"
echo "- - -" > "/sys/class/scsi_host/host$BHOST/scan"
wait_for 10 bash -c "lsscsi | grep -q '\[$BADDR\]'"
ln -sfn "$(lsscsi | awk -v a="[$BADDR]" '$1 == a {print $NF}')" /dev/disk/by-id/scsi-test-swap
check "  until the path leads to the same unit again" \
    wait_for 10 bash -c "[ \"\$($SGIO run $LSG 28000000000000000800 --in 4096 | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"status\"])')\" = 0 ]"
timeout 60 "$BIN" unexport --name s0 || bad "unexport s0"

# A backing device that is not there when the daemon starts (a disk found
# after its handler is up, as at boot): NOT READY while it is away, served
# as soon as its path leads somewhere, with no admin action.
ln -sfn "${DISKS[2]}" /dev/disk/by-id/scsi-test-late
LUN=$(timeout 90 "$BIN" export --name w0 /dev/disk/by-id/scsi-test-late) || { bad "export w0"; finish; }
LSG=$(sg_of "$LUN")
kill -TERM $DAEMON; wait $DAEMON
rm /dev/disk/by-id/scsi-test-late
start_daemon
check "a daemon started before its backing device: the device waits for it" \
    wait_for 10 bash -c "$BIN status --json | grep -q '\"state\": \"waiting\"'"
answer=$(timeout 10 $SGIO run "$LSG" 28000000000000000800 --in 4096)
check "  commands get NOT READY 05/00 meanwhile" \
    grep -q '"status": 2,.*"sense": "70000200000000..00000000050000' <<< "$answer"
ln -sfn "${DISKS[2]}" /dev/disk/by-id/scsi-test-late
t0=$(date +%s.%N)
check "  and it is served once its path appears, with no admin action" \
    wait_for 30 bash -c "[ \"\$($SGIO run $LSG 28000000000000000800 --in 4096 | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"status\"])')\" = 0 ]"
echo "served $(python3 -c "print(round($(date +%s.%N) - $t0, 2))") s after the path appeared"
check "  the log says so" grep -q "w0 (uio[0-9]*): backing device there after" "$LOG"
timeout 60 "$BIN" unexport --name w0 || bad "unexport w0"
fi

# --- 3. task management under load ------------------------------------------
if want 3; then
LUN=$(timeout 90 "$BIN" export --name t0 "${DISKS[3]}") || { bad "export t0"; finish; }
check "tmr_notification is turned on" \
    [ "$(cat /sys/kernel/config/target/core/user_1/t0/attrib/tmr_notification)" = 1 ]
fio --name=t --filename="$LUN" --rw=randrw --bs=16k --iodepth=16 --ioengine=libaio --direct=1 \
    --size=64M --time_based --runtime=8 --verify=crc32c --verify_backlog=64 --verify_fatal=1 \
    --output=/vm-out/tmr-fio.txt > /dev/null 2>&1 &
TF=$!
sleep 2
sg_reset -d "$LUN"; rrc=$?
sleep 1
sg_reset -d "$LUN"
wait $TF; frc=$?
check "LUN resets from the initiator complete" [ "$rrc" -eq 0 ]
check "  the daemon logs the task management notification" grep -q "t0 (uio[0-9]*): task management LunReset" "$LOG"
check "  and fio carries on without an error" bash -c "[ $frc -eq 0 ] && grep -q 'err= 0' /vm-out/tmr-fio.txt"
check "  no 'ring is broken' and no double completion" \
    bash -c "! dmesg | grep -q 'ring is broken' && ! grep -q 'not outstanding' $LOG"
timeout 60 "$BIN" unexport --name t0 || bad "unexport t0"
fi

# --- 4. a backing disk that stops answering ---------------------------------
# h0 over scsi_debug, which will ignore every command (opts=4,
# every_nth=1); k0 over a LIO ramdisk seen through tcm_loop, which keeps
# answering. k0's rate while h0 hangs must stay near its rate before.
if want 4; then
RD=$("$LIO" ramdisk rdk 65536 naa.5001405aaaaaaaa1) || { bad "LIO ramdisk"; finish; }
K=$(timeout 90 "$BIN" export --name k0 "$RD") || { bad "export k0"; finish; }
H=$(timeout 90 "$BIN" export --name h0 --options "timeout_s=5" "${DISKS[2]}") || { bad "export h0"; finish; }
HSG=$(sg_of "$H")
iops() {
    fio --name=k --filename="$K" --rw=randread --bs=4k --iodepth=8 --ioengine=libaio --direct=1 \
        --size=32M --runtime=4 --time_based --output-format=json 2>/dev/null |
        python3 -c 'import json,sys; s=sys.stdin.read(); print(int(json.loads(s[s.index("{"):])["jobs"][0]["read"]["iops"]))'
}
before=$(iops)
echo 1 > $SD/every_nth; echo 4 > $SD/opts
t0=$(date +%s.%N)
( for i in 1 2 3 4; do timeout 40 $SGIO run "$HSG" 28000000000000000800 --in 4096 > /tmp/hung-$i.json & done; wait ) &
HUNG=$!
sleep 0.5
during=$(iops)
wait $HUNG
t1=$(date +%s.%N)
echo 0 > $SD/opts; echo 0 > $SD/every_nth
echo "k0 4k randread QD8: $before IOPS before, $during IOPS while h0 hangs; h0 answered after $(python3 -c "print(round($t1 - $t0, 1))") s: $(cat /tmp/hung-1.json)"
check "a hung backing disk: each command gets a well-formed status, not GOOD" \
    bash -c 'for i in 1 2 3 4; do s=$(python3 -c "import json; print(json.load(open(\"/tmp/hung-$i.json\"))[\"status\"])") || exit 1; [ "$s" != 0 ] || exit 1; done'
check "  before the kernel's 30 s cmd_time_out" python3 -c "import sys; sys.exit(not ($t1 - $t0 < 25))"
# The ratio is a figure (printed above; 0.80 to 1.13 in five CI runs: under
# TCG the hung device's timeouts and retries share the two vCPUs); the
# check only tells a device that keeps serving from one held up by its
# neighbour (CI once measured 0.799 against a bound of 0.8).
check "  while the daemon's other device keeps serving (at least half its speed)" [ $((during * 2)) -ge $before ]
check "  and the hung device serves again afterwards" \
    wait_for 10 bash -c "[ \"\$($SGIO run $HSG 28000000000000000800 --in 4096 | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"status\"])')\" = 0 ]"
timeout 60 "$BIN" unexport --name h0 || bad "unexport h0"
timeout 60 "$BIN" unexport --name k0 || bad "unexport k0"
"$LIO" remove-ramdisk rdk naa.5001405aaaaaaaa1 || true
fi

# --- 5. hostile config strings: one line, exit 1, no crash -------------------
if want 5; then
ln -sfn /dev/tcmu-sg-loop-b /dev/tcmu-sg-loop-a; ln -sfn /dev/tcmu-sg-loop-a /dev/tcmu-sg-loop-b
ln -sfn /etc/hostname /dev/tcmu-sg-outside
refused_in_one_line() { # ARG: check-config refuses it with one line, exit 1
    local out rc
    out=$("$BIN" check-config "$1" 2>&1); rc=$?
    echo "  check-config ${1:0:40}...: rc $rc: $out"
    [ "$rc" -eq 1 ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] && [ -n "$out" ]
}
check "check-config refuses a symlink loop in one line" refused_in_one_line sg//dev/tcmu-sg-loop-a
check "check-config refuses a char device that is not SCSI" refused_in_one_line sg//dev/null
check "check-config refuses an over-long string" refused_in_one_line "sg//dev/$(head -c 5000 /dev/zero | tr '\0' a)"
check "check-config refuses non-UTF-8 bytes" refused_in_one_line "$(printf 'sg//dev/sd\xff\xfe')"
check "check-config refuses a path outside /dev" refused_in_one_line sg//etc/passwd
check "check-config refuses a /dev link that leads outside /dev" refused_in_one_line sg//dev/tcmu-sg-outside
fi

# --- 6. no stale write after a stall -------------------------------------
# z0 serves DISKS[0] with LIO's cmd_time_out at 10 s. DISKS[3] is another
# LUN of the same scsi_debug store: a second path to the same blocks, as a
# second gateway or a retry path would be. The daemon is stopped; a WRITE
# of "A" queued on z0 is failed back by LIO after 10 s; "B" is then written
# to the same blocks through the second path; the daemon is resumed. The
# "A" must never reach the medium, and a WRITE queued after the resume
# must.
if want 6; then
B=${DISKS[0]}; OTHER=${DISKS[3]}
LUN=$(timeout 90 "$BIN" export --name z0 --attrib cmd_time_out=10 --options "timeout_s=2" "$B") \
    || { bad "export z0"; finish; }
LSG=$(sg_of "$LUN")
X=409600                                 # LBA of byte 200 MiB: 8 blocks of 512
W10=2a000006400000000800                 # WRITE(10) LBA 409600, 8 blocks
at_x() { dd if="$OTHER" bs=512 skip=$X count=8 iflag=direct 2>/dev/null | head -c 8; }
for c in A B C; do head -c 4096 /dev/zero | tr '\0' "$c" > /tmp/pat-$c; done
check "z0 runs with cmd_time_out 10" [ "$(cat /sys/kernel/config/target/core/user_1/z0/attrib/cmd_time_out)" = 10 ]
kill -STOP $DAEMON
t0=$(date +%s.%N)
w=$(timeout 60 $SGIO run "$LSG" $W10 --out /tmp/pat-A)
t1=$(date +%s.%N)
echo "WRITE of A while the daemon is stopped: after $(python3 -c "print(round($t1 - $t0, 1))") s: $w"
check "LIO fails the WRITE back after cmd_time_out (not GOOD, 10 s or more)" \
    bash -c "grep -q '\"status\": [1-9]' <<< '$w' && python3 -c 'import sys; sys.exit(not ($t1 - $t0 >= 10))'"
dd if=/tmp/pat-B of="$OTHER" bs=512 seek=$X count=8 oflag=direct conv=notrunc 2>/dev/null
check "  newer data B written through the second path" [ "$(at_x)" = BBBBBBBB ]
sleep 4                                  # a stall of about 15 s in all
kill -CONT $DAEMON
sleep 3
echo "after the resume the blocks hold: $(at_x)"
check "the resumed daemon did not run the failed WRITE: the blocks hold B" [ "$(at_x)" = BBBBBBBB ]
check "  the stall is logged once, with its length and the commands refused" \
    wait_for 5 grep -qE "z0 \(uio[0-9]+\): stalled [0-9.]+ s .*refused [1-9][0-9]* command" "$LOG"
w=$(timeout 60 $SGIO run "$LSG" $W10 --out /tmp/pat-C)
check "a WRITE queued after the resume completes GOOD" grep -q '"status": 0,' <<< "$w"
check "  and reaches the backing device" [ "$(at_x)" = CCCCCCCC ]
check "  the status report counts the refused command" \
    bash -c "$BIN status --json | python3 -c 'import json,sys; d=[x for x in json.load(sys.stdin)[\"devices\"] if x[\"name\"].endswith(\"/z0\")][0]; sys.exit(not d[\"counters\"][\"stale_refused\"] >= 1)'"

# The same under load: fio writes and verifies through a dm-multipath map
# whose first path is z0 and whose second is the other LUN (failover
# groups, as multipath-tools builds for an active/passive pair). Each
# cycle: the daemon stops; a fio pass hangs on z0 until LIO fails its
# commands back (10 s), dm-multipath fails the path and finishes the pass
# on the second; a second pass with another seed writes newer data
# everywhere through it while the daemon is still stopped; the daemon
# resumes. Commands of the first pass left in z0's ring would, if run,
# write older data over the second pass's: the region must read the same
# on the backing device before and after the resume, and fio checks there
# that it holds the second pass's data (fio's own check alone would not
# see a stale block: each holds a valid header and checksum of its own).
modprobe dm_multipath
A_DEV=$(lsblk -dno MAJ:MIN "$LUN" | tr -d ' '); O_DEV=$(lsblk -dno MAJ:MIN "$OTHER" | tr -d ' ')
SECT=$(blockdev --getsz "$LUN")
DM_DISABLE_UDEV=1 dmsetup create z0mp --table \
    "0 $SECT multipath 0 0 2 1 round-robin 0 1 1 $A_DEV 1000 round-robin 0 1 1 $O_DEV 1000" \
    || { bad "dmsetup create z0mp"; finish; }
MAP=/dev/mapper/z0mp
pass() { # DEV SEED [fio options]: one pass of 4 MiB 4k random writes, verified
    local dev=$1 seed=$2; shift 2
    fio --name=z --filename="$dev" --rw=randwrite --bs=4k --offset=208M --size=4M --iodepth=16 \
        --ioengine=libaio --direct=1 --verify=crc32c --verify_fatal=1 --randseed="$seed" "$@" \
        --output=/vm-out/stale-$seed.txt > /dev/null 2>&1 && grep -q 'err= 0' /vm-out/stale-$seed.txt
}
region() { dd if="$OTHER" bs=1M skip=208 count=4 iflag=direct of="$1" 2>/dev/null; }
# The 4 KiB blocks in which two copies of the region differ.
blocks_changed() { python3 -c 'import sys; a, b = (open(f, "rb").read() for f in sys.argv[1:]); print(sum(a[i:i + 4096] != b[i:i + 4096] for i in range(0, max(len(a), len(b)), 4096)))' "$1" "$2"; }
path_state() { dmsetup status z0mp | tr ' ' '\n' | grep -A1 "^$A_DEV\$" | tail -1; }
cycles_ok=0
for k in 1 2 3; do
    kill -STOP $DAEMON
    t0=$(date +%s.%N)
    pass "$MAP" $((100 + k)); r1=$?
    t1=$(date +%s.%N)
    failed=$(path_state)
    pass "$MAP" $((200 + k)); r2=$?
    region /tmp/region-before
    kill -CONT $DAEMON
    sleep 3
    region /tmp/region-after
    changed=$(blocks_changed /tmp/region-before /tmp/region-after)
    pass "$OTHER" $((200 + k)) --verify_only; r3=$?
    dmsetup message z0mp 0 "reinstate_path $A_DEV"; dmsetup message z0mp 0 "switch_group 1"
    echo "cycle $k: pass over the stall rc $r1 in $(python3 -c "print(round($t1 - $t0, 1))") s (z0 path $failed), newer pass rc $r2, blocks the resume changed: $changed, fio's check on the backing device rc $r3, z0 path now $(path_state)"
    [ $r1 -eq 0 ] && [ "$failed" = F ] && [ $r2 -eq 0 ] && [ "$changed" = 0 ] && [ $r3 -eq 0 ] && cycles_ok=$((cycles_ok + 1))
done
check "fio over the map survives three stalls; the backing device holds the newest data each time" [ "$cycles_ok" -eq 3 ]
pass "$MAP" 300; r=$?
check "  after the last resume, fio writes and verifies through z0 again" \
    bash -c "[ $r -eq 0 ] && [ '$(path_state)' = A ]"
grep -E 'z0 \(uio[0-9]+\): stalled' "$LOG" | sed 's/ (the longest.*unrun)//' | tail -4
check "  each stall is logged once (four lines: the single WRITE and three cycles)" \
    [ "$(grep -cE 'z0 \(uio[0-9]+\): stalled' "$LOG")" -eq 4 ]
dmsetup remove z0mp
check "no 'ring is broken'" bash -c "! dmesg | grep -q 'ring is broken'"
timeout 60 "$BIN" unexport --name z0 || bad "unexport z0"
fi

# --- shutdown -----------------------------------------------------------------
kill -TERM $DAEMON
wait $DAEMON
check "daemon exits cleanly on SIGTERM" [ $? -eq 0 ]
finish
