#!/usr/bin/env bash
# The guest VM of tests/vm/guest-passthrough.sh: two tcmu-sg LUNs attached
# by QEMU as scsi-block over virtio-scsi (the libiscsi driver underneath).
# Every answer is compared with the backing device's own, which the target
# VM left in /vm-share.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SGIO="python3 $HERE/sgio.py"
LOG=/dev/null
SUITE=gp-guest
S=/vm-share
. "$HERE/lib.sh"
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }
jfield() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$@"; }

modprobe virtio_scsi; modprobe sd_mod; modprobe sg
wait_for 60 bash -c "[ \$(lsscsi | grep -c disk) -ge 2 ]"
lsscsi
dev_at() { lsscsi | awk -v a="[$1]" '$1 == a {print $NF}'; }
G0=$(dev_at 0:0:0:0); G1=$(dev_at 0:0:1:0)
G0SG=$(sg_of "$G0"); G1SG=$(sg_of "$G1")
echo "guest sees g0 as $G0 ($G0SG), g1 as $G1 ($G1SG)"
[ -b "$G0" ] && [ -b "$G1" ] || { bad "two scsi-block disks in the guest"; finish; }
same_data() { # REF CDB IN: GOOD, and the bytes the backing device sent are
    # the guest's. QEMU's libiscsi driver reports every residual as 0 (its
    # SG_IO sets resid = 0), so the guest's buffer is compared over the
    # backing device's transfer length, and must be zero beyond it.
    local r base=${1%.json} n
    r=$($SGIO run "$G0SG" "$2" --in "$3" --save "/vm-out/guest-$base.bin")
    n=$(( $3 - $(field "$S/$1" resid) ))
    echo "  backing sent $n bytes (resid $(field "$S/$1" resid)); the guest got resid $(jfield "$r" resid)"
    [ "$(jfield "$r" status)" = 0 ] && cmp -n "$n" "$S/$base.bin" "/vm-out/guest-$base.bin" &&
        python3 -c "import sys; d = open(sys.argv[1], 'rb').read(); sys.exit(any(d[int(sys.argv[2]):]))" \
            "/vm-out/guest-$base.bin" "$n"
}
same_sense() { # REF CDB IN: CHECK CONDITION with byte-identical sense
    local r; r=$($SGIO run "$G0SG" "$2" --in "$3")
    echo "  guest: $r"; echo "  backing: $(cat "$S/$1")"
    [ "$(jfield "$r" status)" = 2 ] && [ "$(jfield "$r" sense)" = "$(field "$S/$1" sense)" ]
}

# --- identity ------------------------------------------------------------------
check "INQUIRY: the backing device's, byte for byte" same_data ref-inquiry.json 12000000ff00 255
check "device identification VPD page: identical" same_data ref-vpd83.json 120183010000 256
check "READ CAPACITY(16): identical" same_data ref-rc16.json 9e100000000000000000000000200000 32

# --- errors ----------------------------------------------------------------------
check "READ(10) on a medium error: the backing device's sense, information field included" \
    same_sense ref-read10-err.json 28000000123000000800 4096
check "READ(16) on a medium error: identical sense" \
    same_sense ref-read16-err.json 88000000000000001230000000080000 4096
touch $S/want-wp; await wp-on
head -c 4096 /dev/zero > /tmp/zero4k
r=$($SGIO run "$G0SG" 2a000000200000000800 --out /tmp/zero4k)
touch $S/done-wp
echo "  guest: $r"; echo "  backing: $(cat $S/ref-write-err.json)"
check "WRITE(10) on a write-protected backing device: identical status and sense" \
    bash -c "[ '$(jfield "$r" status)' = 2 ] && [ '$(jfield "$r" sense)' = '$(field $S/ref-write-err.json sense)' ]"
check "a 1 MiB READ that tcmu-sg splits (max_xfer_kb=64), error in its third chunk: the backing device's sense" \
    same_sense ref-split-err.json 28000000110000080000 1048576
echo "guest max_sectors_kb: $(cat /sys/block/${G0#/dev/}/queue/max_sectors_kb), max_hw_sectors_kb: $(cat /sys/block/${G0#/dev/}/queue/max_hw_sectors_kb)"
check "8 MiB read through the guest's block layer (split by the guest, by QEMU and by tcmu-sg): the backing device's bytes" \
    bash -c "[ \"\$(dd if=$G0 bs=8M skip=2 count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)\" = \"\$(cat $S/ref-8m.sha256)\" ]"

# --- data ------------------------------------------------------------------------
fio --name=g --filename="$G0" --rw=randwrite --bs=64k --offset=128M --size=64M --direct=1 \
    --ioengine=libaio --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --output=/vm-out/gp-fio.txt > /dev/null 2>&1
check "fio writes 64 MiB from the guest and verifies them" grep -q 'err= 0' /vm-out/gp-fio.txt
dd if="$G0" bs=1M skip=128 count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1 > /tmp/guest.sha
touch $S/fio-done; await region-done
check "  and the backing device holds the same bytes" cmp -s /tmp/guest.sha $S/backing-region.sha256

# --- reservations (g1: a LIO ramdisk with real SPC-3 reservations) ------------------
touch $S/want-pr-held; await pr-held
w=$($SGIO run "$G1SG" 2a000000001000000100 --out <(head -c 512 /dev/zero))
check "another initiator holds WRITE EXCLUSIVE: the guest's WRITE gets RESERVATION CONFLICT (0x18)" \
    [ "$(jfield "$w" status)" = 24 ]
r=$($SGIO run "$G1SG" 28000000001000000100 --in 512)
check "  and its READ succeeds" [ "$(jfield "$r" status)" = 0 ]
sg_persist --out --register --param-sark=0x1234 "$G1" > /dev/null 2>&1
keys=$(sg_persist --in --read-keys "$G1" 2>&1); echo "$keys"
check "  the guest registers a key and reads both keys back" \
    bash -c "grep -q 0x1234 <<< '$keys' && grep -q 0xabc <<< '$keys'"
res=$(sg_persist --in --read-reservation "$G1" 2>&1); echo "$res"
check "  and reads the reservation: the other's key, Write Exclusive" \
    bash -c "grep -q 'Key=0xabc' <<< '$res' && grep -qi 'Write Exclusive' <<< '$res'"
touch $S/want-pr-released; await pr-released
w=$($SGIO run "$G1SG" 2a000000001000000100 --out <(head -c 512 /dev/zero))
check "  after the release the guest's WRITE succeeds" [ "$(jfield "$w" status)" = 0 ]
sg_persist --out --reserve --param-rk=0x1234 --prout-type=1 "$G1" > /dev/null 2>&1
res=$(sg_persist --in --read-reservation "$G1" 2>&1)
check "the guest reserves (Write Exclusive)" grep -q 'Key=0x1234' <<< "$res"
touch $S/want-other-write; await other-write-done
check "  and the other initiator's WRITE is refused with RESERVATION CONFLICT" \
    [ "$(field $S/other-write.json status)" = 24 ]
sg_persist --out --release --param-rk=0x1234 --prout-type=1 "$G1" > /dev/null 2>&1
sg_persist --out --register --param-rk=0x1234 --param-sark=0 "$G1" > /dev/null 2>&1

# --- a LUN reset from the guest -----------------------------------------------------
fio --name=rs --filename="$G0" --rw=randread --bs=4k --iodepth=8 --ioengine=libaio --direct=1 \
    --offset=128M --size=32M --runtime=6 --time_based --output=/vm-out/gp-reset-fio.txt > /dev/null 2>&1 &
F=$!
sleep 2
sg_reset -d "$G0"; rrc=$?
wait $F; frc=$?
check "sg_reset -d from the guest completes" [ "$rrc" -eq 0 ]
check "  and the guest's I/O carries on" bash -c "[ $frc -eq 0 ] && grep -q 'err= 0' /vm-out/gp-reset-fio.txt"
finish
