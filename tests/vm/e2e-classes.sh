#!/usr/bin/env bash
# Device classes on the 6.1 kernel: zoned (ZBC host-managed), 4Kn and 512e
# disks and medium changers. Each part has three devices in one boot: the
# first driven directly, the second through tcmu-sg and the third through
# LIO's pscsi, both exported through tcm_loop, and compares them.
# - Zoned: the same zone sequence (tests/vm/transcript.py: reports, writes
#   at and off the write pointer, across a zone's end, to a full zone, open,
#   close, finish, reset, a 1 MiB write at the write pointer that tcmu-sg
#   splits) on each; fio --zonemode=zbd with verify at queue depth 8
#   through tcmu-sg.
# - 4Kn (sector_size=4096) and 512e (physblk_exp=3): READ CAPACITY(16), a
#   1 MiB write split into 64 KiB chunks landing intact, a medium error on
#   READ and a split READ over it, with the residual.
# - Changers (SMC): scsi_debug has none, so tgt's SMC emulation (a virtual
#   tape library: a changer with a drive and four tapes) serves three
#   libraries over iSCSI to this VM's open-iscsi; mtx's inquiry, status,
#   load, unload, transfer and a refused move go to each.
# - Then, in the same boot, the command policy and read-only mode
#   (tests/vm/e2e-policy.sh).
#
#   e2e-classes.sh TCMU_SG_BINARY LIO_HELPER
set -uo pipefail
BIN=${1:?usage: e2e-classes.sh TCMU_SG_BINARY LIO_HELPER}
LIO=${2:?usage: e2e-classes.sh TCMU_SG_BINARY LIO_HELPER}
HERE=$(cd "$(dirname "$0")" && pwd)
SGIO="python3 $HERE/sgio.py"
TR="python3 $HERE/transcript.py"
LOG=/vm-out/tcmu-sg-classes.log
SUITE=e2e-classes
. "$HERE/lib.sh"
SD=/sys/bus/pseudo/drivers/scsi_debug
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs none $T
echo "kernel $(uname -r)"

"$BIN" run --no-dbus --log-level debug > "$LOG" 2>&1 &
DAEMON=$!
# three LUNs of one scsi_debug: $A direct; tcmu-sg ($B over ${DISKS[1]})
# and pscsi ($C over ${ADDRS[2]}) through tcm_loop.
three_paths() { # NAME [EXPORT OPTIONS]
    scsi_debug_luns "${SDOPTS[@]}"
    [ "${#DISKS[@]}" -eq 3 ] || { bad "three scsi_debug LUNs (${SDOPTS[*]})"; finish; }
    A=${DISKS[0]}
    B=$(timeout 90 "$BIN" export --name "$1" ${2:+--options "$2"} "${DISKS[1]}") || { bad "export $1"; finish; }
    C=$("$LIO" pscsi "p$1" "${ADDRS[2]}" naa.5001405ccccccc01) || { bad "pscsi p$1"; finish; }
    BACK_HOST=${ADDRS[1]%%:*}; BACK_LUN=${ADDRS[1]##*:}
    echo "${SDOPTS[*]}: direct $A, tcmu-sg $B over ${DISKS[1]}, pscsi $C over ${DISKS[2]}"
}
remove_paths() { # NAME
    "$BIN" unexport --name "$1" || bad "unexport $1"
    "$LIO" remove-pscsi "p$1" naa.5001405ccccccc01 || bad "remove pscsi p$1"
    sleep 0.5
    modprobe -r scsi_debug || bad "unload scsi_debug"
}
sg_at() { echo "/dev/$(ls /sys/class/scsi_device/"$1"/device/scsi_generic/)"; }
trace_on() { echo "host_no == $BACK_HOST && lun == $BACK_LUN" > $T/events/scsi/scsi_dispatch_cmd_start/filter
             echo > $T/trace; echo 1 > $T/events/scsi/scsi_dispatch_cmd_start/enable; }
trace_off() { echo 0 > $T/events/scsi/scsi_dispatch_cmd_start/enable; }
# Events without recording task names: that recording hooks the scheduler's
# tracepoints, and patching __schedule's code while it runs has crashed the
# guest under TCG (int3 oops); the SCSI event patches only scsi_mod.
echo 0 > $T/options/record-cmd
# "lba txlen" of each WRITE the backing device received.
writes() { grep -oE 'cmnd=\(WRITE_(10|16) lba=[0-9]* txlen=[0-9]*' $T/trace | sed 's/.*lba=\([0-9]*\) txlen=\([0-9]*\)/\1 \2/'; }

# --- zoned (ZBC host-managed) ----------------------------------------------
SDOPTS=(zbc=managed zone_size_mb=4 zone_nr_conv=1 dev_size_mb=64 max_luns=3)
three_paths z0 "max_xfer_kb=64"
check "the initiator sees a host-managed zoned disk through tcmu-sg" \
    [ "$(cat /sys/block/"${B#/dev/}"/queue/zoned)" = host-managed ]
check "  as through pscsi" [ "$(cat /sys/block/"${C#/dev/}"/queue/zoned)" = host-managed ]
vpd() { sg_vpd -p zbdc "$1" 2>&1 | grep -v '^ *$'; }
check "zoned block device characteristics VPD identical" [ "$(vpd "$A")" = "$(vpd "$B")" ]
rep() { sg_rep_zones "$1" 2>&1; }
check "sg_rep_zones identical" [ "$(rep "$A")" = "$(rep "$B")" ]
trace_on
for p in direct:$A tcmu-sg:$B pscsi:$C; do
    $TR run zbc "$(sg_of "${p#*:}")" > "/vm-out/zbc-${p%%:*}.jsonl" 2> "/vm-out/zbc-${p%%:*}.err" \
        || echo "transcript.py on ${p#*:} failed: $(tail -3 "/vm-out/zbc-${p%%:*}.err")"
done
trace_off
steps=$(wc -l < /vm-out/zbc-direct.jsonl)
echo "--- direct / tcmu-sg:"; $TR compare /vm-out/zbc-direct.jsonl /vm-out/zbc-tcmu-sg.jsonl
echo "--- direct / pscsi:"; $TR compare /vm-out/zbc-direct.jsonl /vm-out/zbc-pscsi.jsonl
check "the zone sequence ($steps steps): tcmu-sg's transcript is the drive's" \
    $TR compare /vm-out/zbc-direct.jsonl /vm-out/zbc-tcmu-sg.jsonl
check "  and pscsi's" $TR compare /vm-out/zbc-direct.jsonl /vm-out/zbc-pscsi.jsonl
unaligned() { python3 -c 'import json,sys; s=[json.loads(l) for l in open(sys.argv[1])][2]; print(s.get("key"), s.get("asc"), s.get("ascq"))' "$1"; }
check "a write off the write pointer: ILLEGAL REQUEST 21/04 (UNALIGNED WRITE COMMAND) through tcmu-sg" \
    [ "$(unaligned /vm-out/zbc-tcmu-sg.jsonl)" = "5 33 4" ]
# The 1 MiB write at zone 5's write pointer reached the backing device as
# 16 writes of 128 blocks, in order, each at the write pointer (then the
# sequence's unaligned write of 8 blocks at the zone's start).
zone5=$((5 * 8192))
echo "zone 5 writes at the backing device: $(writes | awk -v z=$zone5 '$1 >= z && $1 < z + 8192' | tr '\n' ' ')"
check "the 1 MiB write at the write pointer: 16 chunks of 64 KiB in order, each at the write pointer" \
    diff <(writes | awk -v z=$zone5 '$1 >= z && $1 < z + 8192') \
         <(seq 0 15 | awk -v z=$zone5 '{print z + 128 * $1, 128} END {print z, 8}')

# fio writes whole zones sequentially at queue depth 8 and verifies them;
# mq-deadline keeps one write per zone in flight, as a zoned disk needs.
echo mq-deadline > /sys/block/"${B#/dev/}"/queue/scheduler
fio --name=zbd --filename="$B" --zonemode=zbd --direct=1 --ioengine=libaio --iodepth=8 \
    --rw=write --bs=64k --offset=4M --size=32M --max_open_zones=4 --verify=crc32c \
    --verify_fatal=1 --output=/vm-out/fio-zbd.txt > /dev/null 2>&1
rc=$?
grep -E 'WRITE:|READ:|err=' /vm-out/fio-zbd.txt | head -4
check "fio --zonemode=zbd with verify at queue depth 8 through tcmu-sg" \
    bash -c "[ $rc -eq 0 ] && grep -q 'err= 0' /vm-out/fio-zbd.txt"
check "  the zones it wrote are full on the backing device" \
    bash -c "sg_rep_zones --start=8192 --num=8 ${DISKS[1]} | grep -c 'Zone condition: Full' | grep -qx 8"
# Read-only: a zone reset (no data) is refused with DATA PROTECT 27/00 and
# never reaches the drive; reports still work.
"$BIN" set-config --name z0 "sg/${DISKS[1]};max_xfer_kb=64;readonly=1" || bad "set-config z0 readonly"
wait_for 15 grep -q "reconfigured: .*read-only" "$LOG" || bad "z0 reconfigured read-only"
sg_turs "$(sg_of "$B")" > /dev/null 2>&1
trace_on
zr=$($SGIO run "$(sg_of "$B")" 94040000000000002000000000000000 \
     | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["status"], r["sense"][24:28])')
sg_reset_wp --zone=8192 "$(sg_of "$B")" > /dev/null 2>&1; zr_tool=$?
trace_off
echo "read-only zone reset: $zr (sg_reset_wp exit $zr_tool)"
check "readonly=1: RESET WRITE POINTER gets DATA PROTECT, WRITE PROTECTED (27/00)" [ "$zr" = "2 2700" ]
check "  sg_reset_wp fails too" [ "$zr_tool" -ne 0 ]
check "  neither reached the drive, whose zone stays full" \
    bash -c "! grep -q 'raw=94 ' $T/trace && sg_rep_zones --start=8192 --num=1 ${DISKS[1]} | grep -q 'Zone condition: Full'"
check "  REPORT ZONES still works through tcmu-sg" [ "$(rep "${DISKS[1]}")" = "$(rep "$B")" ]
remove_paths z0

# --- 4Kn and 512e -----------------------------------------------------------
# For each: READ CAPACITY(16) identical on the three paths; a 1 MiB
# WRITE(10) through tcmu-sg (max_xfer_kb=64) reaches the backing device as
# 64 KiB chunks and lands intact; a medium error (scsi_debug opts=2, reads
# of LBA 0x1234 on) gives identical sense on READ(16) through all three;
# a 1 MiB READ(10) over it stops at the failing chunk, with the residual
# of what was not transferred.
blocks_case() { # NAME BLOCK_SIZE SCSI_DEBUG_OPTIONS...
    local name=$1 bs=$2; shift 2
    SDOPTS=("$@" dev_size_mb=64 max_luns=3)
    three_paths "$name" "max_xfer_kb=64"
    local asg bsg csg
    asg=$(sg_of "$A"); bsg=$(sg_of "$B"); csg=$(sg_of "$C")
    cap() { sg_readcap -l "$1" 2>&1; }
    echo "$(cap "$B" | grep -E 'Logical block length|blocks per physical')"
    check "$name: READ CAPACITY(16) identical through tcmu-sg" [ "$(cap "$A")" = "$(cap "$B")" ]
    check "$name:   and through pscsi" [ "$(cap "$A")" = "$(cap "$C")" ]
    local n=$((1048576 / bs)) lba=$((16 * 1048576 / bs))
    dd if=/dev/urandom of=/tmp/mib bs=1M count=1 2>/dev/null
    trace_on
    w=$($SGIO run "$bsg" "$(printf '2a00%08x00%04x00' $lba $n)" --out /tmp/mib)
    trace_off
    local chunk=$((65536 / bs))
    check "$name: a 1 MiB write is 16 chunks of $chunk blocks at the backing device" \
        diff <(writes) <(seq 0 15 | awk -v f=$lba -v c=$chunk '{print f + c * $1, c}')
    check "$name:   GOOD, and the data landed intact" \
        bash -c "grep -q '\"status\": 0,' <<< '$w' && cmp <(dd if=$A bs=1M skip=16 count=1 iflag=direct 2>/dev/null) /tmp/mib"
    echo 2 > $SD/opts
    check "$name: medium error on READ(16): identical sense through tcmu-sg" \
        $SGIO same "$asg" "$bsg" "$(printf '88000000000000001230%08x0000' 16)" --in $((16 * bs)) --status 2 --key 3
    check "$name:   and through pscsi" \
        $SGIO same "$asg" "$csg" "$(printf '88000000000000001230%08x0000' 16)" --in $((16 * bs)) --status 2 --key 3
    # A 1 MiB READ(10) starting three and a half chunks before LBA 0x1234:
    # three chunks come back, the fourth meets the error.
    local start=$((0x1234 - 3 * chunk - chunk / 2)) good=3 r
    r=$($SGIO run "$bsg" "$(printf '2800%08x00%04x00' $start $n)" --in 1048576)
    echo "$name: split READ over the medium error: $r"
    check "$name: split READ stops at the failing chunk: MEDIUM ERROR, residual $((1048576 - good * 65536))" \
        bash -c "grep -q '\"status\": 2,' <<< '$r' && grep -q '\"resid\": $((1048576 - good * 65536)),' <<< '$r'"
    echo 0 > $SD/opts
    remove_paths "$name"
}
blocks_case 4kn 4096 sector_size=4096
blocks_case 512e 512 physblk_exp=3

# --- changers (SMC), from tgt's virtual tape library -------------------------
# Three libraries, each a tgt iSCSI target on 127.0.0.1:3261: LUN 1 a tape
# drive, LUN 2 a changer with the drive at element 1, the picker at 2 and
# four slots (3-6) holding tapes T0000001..T0000004.
modprobe ch 2>/dev/null
modprobe iscsi_tcp
ip link set lo up
mkdir -p /run/lock/iscsi /var/lib/iscsi /etc/iscsi
echo "InitiatorName=iqn.2026-11.org.tcmu-sg:classes" > /etc/iscsi/initiatorname.iscsi
iscsid || bad "iscsid starts"
tgtd -f --iscsi portal=127.0.0.1:3261 > /vm-out/tgtd.log 2>&1 &
TGTD=$!
wait_for 10 tgtadm --lld iscsi --op show --mode target || { bad "tgtd starts"; finish; }
vtl() { # N: library N
    local n=$1 d=/tmp/vtl$1 t
    mkdir -p "$d"
    dd if=/dev/zero of="$d/smc" bs=1k count=1 2>/dev/null
    tgtimg --op new --device-type tape --barcode="" --size=1 --type=clean --file="$d/notape" > /dev/null
    for t in 1 2 3 4; do
        tgtimg --op new --device-type tape --barcode="T000000$t" --size=8 --type=data --file="$d/T000000$t" > /dev/null
    done
    local a=(tgtadm --lld iscsi --mode logicalunit --tid "$n")
    tgtadm --lld iscsi --op new --mode target --tid "$n" -T "iqn.2026-11.org.tcmu-sg:vtl$n"
    "${a[@]}" --op new --lun 1 -b "$d/notape" --device-type=tape
    "${a[@]}" --op update --lun 1 --params online=0
    "${a[@]}" --op new --lun 2 -b "$d/smc" --device-type=changer
    "${a[@]}" --op update --lun 2 --params media_home="$d"
    "${a[@]}" --op update --lun 2 --params element_type=4,start_address=1,quantity=1
    "${a[@]}" --op update --lun 2 --params element_type=4,address=1,tid="$n",lun=1
    "${a[@]}" --op update --lun 2 --params element_type=1,start_address=2,quantity=1
    "${a[@]}" --op update --lun 2 --params element_type=2,start_address=3,quantity=4
    for t in 1 2 3 4; do
        "${a[@]}" --op update --lun 2 --params element_type=2,address=$((t + 2)),barcode=T000000$t,sides=1
    done
    tgtadm --lld iscsi --op bind --mode target --tid "$n" -I ALL
}
for n in 1 2 3; do vtl $n || bad "tgt library $n"; done
iscsiadm -m discovery -t st -p 127.0.0.1:3261 > /dev/null 2>&1
iscsiadm -m node -p 127.0.0.1:3261 --login > /dev/null 2>&1 || { bad "iSCSI login to tgt"; finish; }
# The changers, in library order: H:C:T:L of each library's LUN 2.
changer_of() { # N
    local s h
    for s in /sys/class/iscsi_session/session*; do
        [ "$(cat "$s/targetname")" = "iqn.2026-11.org.tcmu-sg:vtl$1" ] || continue
        h=$(basename "$(dirname "$(readlink -f "$s/device")")")
        lsscsi | awk -v h="${h#host}" '$2 == "mediumx" {
            a = substr($1, 2, length($1) - 2); split(a, p, ":"); if (p[1] == h) print a }'
    done
}
wait_for 20 bash -c "[ \$(lsscsi | grep -c mediumx) -ge 3 ]" || { bad "three changers (lsscsi: $(lsscsi | tr '\n' ';'))"; finish; }
CA=$(sg_at "$(changer_of 1)"); CB_BACK=$(sg_at "$(changer_of 2)"); CC_ADDR=$(changer_of 3)
echo "changers: direct $CA, tcmu-sg over $CB_BACK, pscsi over $CC_ADDR"
CB=$(timeout 90 "$BIN" export --name ch0 "$CB_BACK") || { bad "export ch0"; finish; }
CC=$("$LIO" pscsi pch "$CC_ADDR" naa.5001405cccccccc2) || { bad "pscsi over the third changer"; finish; }
echo "initiator: tcmu-sg LUN $CB, pscsi LUN $CC"
check "export of a changer: cmd_time_out for its 3600 s operations" \
    [ "$(cat /sys/kernel/config/target/core/user_1/ch0/attrib/cmd_time_out)" -ge 3600 ]
mtx_seq() { # DEV: the same library operations, output with the device name out
    local d=$1
    for _ in 1 2 3; do sg_turs "$d" > /dev/null 2>&1 && break; done
    mtx -f "$d" inquiry 2>&1
    mtx -f "$d" status 2>&1
    mtx -f "$d" load 3 0 2>&1; echo "load 3: $?"
    mtx -f "$d" status 2>&1
    mtx -f "$d" load 4 0 2>&1; echo "load 4 into a full drive: $?"
    mtx -f "$d" transfer 4 3 2>&1; echo "transfer 4 to 3: $?"
    mtx -f "$d" transfer 1 2 2>&1; echo "transfer 1 to full 2: $?"
    mtx -f "$d" unload 4 0 2>&1; echo "unload to 4: $?"
    mtx -f "$d" status 2>&1
}
for p in direct:$CA tcmu-sg:$CB pscsi:$CC; do
    mtx_seq "${p#*:}" | sed "s#${p#*:}#DEV#g" > "/vm-out/mtx-${p%%:*}.txt"
done
echo "--- mtx through tcmu-sg:"; cat /vm-out/mtx-tcmu-sg.txt
check "mtx: tcmu-sg's transcript is the library's" diff /vm-out/mtx-direct.txt /vm-out/mtx-tcmu-sg.txt
check "  and pscsi's" diff /vm-out/mtx-direct.txt /vm-out/mtx-pscsi.txt
check "  the moves happened: slots 3 and 4 swapped their tapes through the drive" \
    bash -c "grep -q '^load 3: 0' /vm-out/mtx-tcmu-sg.txt && grep -q '^transfer 4 to 3: 0' /vm-out/mtx-tcmu-sg.txt \
             && grep -q '^unload to 4: 0' /vm-out/mtx-tcmu-sg.txt \
             && tail -4 /vm-out/mtx-tcmu-sg.txt | grep -q 'Storage Element 3:Full :VolumeTag=T0000004' \
             && tail -4 /vm-out/mtx-tcmu-sg.txt | grep -q 'Storage Element 4:Full :VolumeTag=T0000003'"
check "  and the refused moves were refused" \
    bash -c "grep -q '^load 4 into a full drive: [1-9]' /vm-out/mtx-tcmu-sg.txt && grep -q '^transfer 1 to full 2: [1-9]' /vm-out/mtx-tcmu-sg.txt"
"$BIN" unexport --name ch0 || bad "unexport ch0"
"$LIO" remove-pscsi pch naa.5001405cccccccc2 || true
iscsiadm -m node -p 127.0.0.1:3261 --logout > /dev/null 2>&1
kill $TGTD

kill -TERM $DAEMON; wait $DAEMON
check "daemon exits cleanly on SIGTERM" [ $? -eq 0 ]

# The command policy and read-only mode, in this boot (its own daemon and
# disks; tests/vm/e2e-policy.sh).
bash "$HERE/e2e-policy.sh" "$BIN" "$LIO" > /vm-out/e2e-policy.txt 2>&1
rc=$?
sed 's/^/  policy: /' /vm-out/e2e-policy.txt
check "the command policy and read-only suite passes (e2e-policy.sh)" [ $rc -eq 0 ]
finish
