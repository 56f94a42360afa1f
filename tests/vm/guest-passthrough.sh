#!/usr/bin/env bash
# A real QEMU guest doing SCSI passthrough on tcmu-sg LUNs, on this machine:
#
#   target VM: scsi_debug disk and a LIO ramdisk (real persistent
#     reservations, seen over two tcm_loop nexuses) -> tcmu-sg
#     (pgr_support=0) -> LIO iSCSI on 0.0.0.0:3260, forwarded to this
#     machine's 127.0.0.1:$PORT
#   guest VM: QEMU's libiscsi driver on 127.0.0.1:$PORT -> virtio-scsi ->
#     scsi-block, one per LUN; the same Debian kernel and busybox harness,
#     with sg3-utils inside, runs the checks (tests/vm/gp-guest.sh)
#
# The two VMs run at once and step through phases by files in a directory
# both share (/vm-share): the target changes the backing devices (a write
# protect, another initiator's reservation) when the guest asks, and keeps
# every reference answer of the backing devices there for the guest to
# compare with. Exit code: 0 when both sides passed.
#
#   guest-passthrough.sh TCMU_SG_BINARY LIO_HELPER
set -euo pipefail
BIN=$1
LIO=$2
here=$(cd "$(dirname "$0")" && pwd)
PORT=${TCMU_SG_GP_PORT:-13260}
GUEST_IQN=iqn.2026-11.org.tcmu-sg:guest
share=$(mktemp -d /tmp/tcmu-sg-gp-share.XXXXXX)
out_t=$(mktemp -d /tmp/tcmu-sg-gp-target.XXXXXX)
out_g=$(mktemp -d /tmp/tcmu-sg-gp-guest.XXXXXX)
t0=$(date +%s)
TCMU_SG_VM_OUT=$out_t TCMU_SG_VM_SHARE=$share TCMU_SG_VM_NET="hostfwd=tcp:127.0.0.1:$PORT-:3260" \
    TCMU_SG_VM_TIMEOUT=1500 bash "$here/run-vm.sh" "$here/gp-target.sh" "$BIN" "$LIO" "$GUEST_IQN" \
    > "$out_t/run.log" 2>&1 &
target=$!
for _ in $(seq 1200); do
    [ -s "$share/ready" ] && break
    kill -0 $target 2>/dev/null || break
    sleep 0.5
done
if [ ! -s "$share/ready" ]; then
    echo "guest-passthrough: the target VM did not get ready" >&2
    cat "$out_t/run.log" >&2
    exit 1
fi
read -r iqn0 iqn1 < "$share/ready"
echo "guest-passthrough: target ready after $(( $(date +%s) - t0 )) s: $iqn0 $iqn1"
grc=0
TCMU_SG_VM_OUT=$out_g TCMU_SG_VM_SHARE=$share TCMU_SG_VM_MEM=1G TCMU_SG_VM_TIMEOUT=1200 \
    TCMU_SG_VM_EXTRA="-iscsi initiator-name=$GUEST_IQN -device virtio-scsi-pci,id=scsi0
        -drive file=iscsi://127.0.0.1:$PORT/$iqn0/0,if=none,id=g0,format=raw,cache=none
        -device scsi-block,drive=g0,bus=scsi0.0,channel=0,scsi-id=0,lun=0
        -drive file=iscsi://127.0.0.1:$PORT/$iqn1/0,if=none,id=g1,format=raw,cache=none
        -device scsi-block,drive=g1,bus=scsi0.0,channel=0,scsi-id=1,lun=0" \
    bash "$here/run-vm.sh" "$here/gp-guest.sh" || grc=$?
# The guest is done (or failed): let the target finish its own checks.
touch "$share/guest-done"
trc=0
wait $target || trc=$?
cat "$out_t/run.log"
echo "guest-passthrough: guest rc $grc, target rc $trc, $(( $(date +%s) - t0 )) s in all"
rm -rf "$share"
[ "$grc" -eq 0 ] && [ "$trc" -eq 0 ]
