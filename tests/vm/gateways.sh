#!/usr/bin/env bash
# Gateways in pairs: two tcmu-sg gateways on separate VMs over one shared
# LUN, behind dm-multipath on a third.
#
#   initiator VM (tests/vm/gw-initiator.sh): holds the shared storage too,
#     a LIO ramdisk with real persistent reservations exported over iSCSI
#     (forwarded to this machine's 127.0.0.1:$BASE), one ACL per gateway so
#     each has its own I_T nexus, and seen through tcm_loop as a host
#     outside the map; then open-iscsi logs in to both gateways and
#     multipath-tools makes one map of them
#   gateway VMs gw1, gw2 (tests/vm/gw-gateway.sh): open-iscsi logs in to
#     the storage; tcmu-sg serves it (pgr_support=0, alua_support=0) and
#     LIO exports it over iSCSI on 127.0.0.1:$BASE+1 and $BASE+2
#
# VMs reach each other only through this machine's loopback (QEMU user
# networking: a guest sees it as 10.0.2.2). They step through phases by
# files in a shared directory; the initiator asks this script to power a
# gateway off (its QEMU is killed) and to boot it again (a new VM that
# restores what survives a reboot: iSCSI node records and LIO's saved
# configuration, and starts the services in their systemd order).
#
#   gateways.sh TCMU_SG_BINARY
set -euo pipefail
BIN=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
BASE=${TCMU_SG_GW_PORT:-13270}
share=$(mktemp -d /tmp/tcmu-sg-gw-share.XXXXXX)
outs=$(mktemp -d /tmp/tcmu-sg-gw.XXXXXX)
t0=$(date +%s)
log() { echo "gateways: [$(( $(date +%s) - t0 )) s] $*"; }

gateway() { # NAME N MODE: start gateway NAME on port BASE+N in the background
    mkdir -p "$outs/$1"
    TCMU_SG_VM_OUT=$outs/$1 TCMU_SG_VM_SHARE=$share TCMU_SG_VM_MEM=2G TCMU_SG_VM_SMP=1 \
        TCMU_SG_VM_NET="hostfwd=tcp:127.0.0.1:$((BASE + $2))-:3260" TCMU_SG_VM_TIMEOUT=2400 \
        bash "$here/run-vm.sh" "$here/gw-gateway.sh" "$BIN" "$1" "$3" "$BASE" \
        > "$outs/$1/run-$3.log" 2>&1 &
    echo $! > "$outs/$1.pid"
}
power_off() { # NAME: pull the plug (the VM's QEMU dies at once)
    pkill -9 -f -- "file:$outs/$1/console.log" || true
    wait "$(cat "$outs/$1.pid")" 2>/dev/null || true
}

mkdir -p "$outs/initiator"
TCMU_SG_VM_OUT=$outs/initiator TCMU_SG_VM_SHARE=$share TCMU_SG_VM_MEM=3G \
    TCMU_SG_VM_NET="hostfwd=tcp:127.0.0.1:$BASE-:3260" TCMU_SG_VM_TIMEOUT=2400 \
    bash "$here/run-vm.sh" "$here/gw-initiator.sh" "$BIN" "$BASE" > "$outs/initiator/run.log" 2>&1 &
initiator=$!
# The gateways once the storage is there; then the initiator's requests.
while kill -0 $initiator 2>/dev/null; do
    if [ -e "$share/storage-ready" ] && [ ! -e "$outs/started" ]; then
        log "storage ready; starting gw1 and gw2"
        gateway gw1 1 first
        gateway gw2 2 first
        touch "$outs/started"
    fi
    for g in gw1 gw2; do
        if [ -e "$share/host-poweroff-$g" ]; then
            rm "$share/host-poweroff-$g"
            power_off $g
            log "$g powered off"
            touch "$share/host-powered-off-$g"
        fi
        if [ -e "$share/host-boot-$g" ]; then
            rm "$share/host-boot-$g"
            gateway $g $([ $g = gw1 ] && echo 1 || echo 2) reboot
            log "$g booting again"
        fi
    done
    sleep 0.5
done
irc=0
wait $initiator || irc=$?
touch "$share/done"
grc=0
for g in gw1 gw2; do
    pid=$(cat "$outs/$g.pid" 2>/dev/null || true)
    [ -n "$pid" ] && { wait "$pid" || grc=$?; }
done
cat "$outs/initiator/run.log"
for g in gw1 gw2; do
    echo "--- $g: $(grep -h 'passed, ' "$outs/$g"/run-*.log 2>/dev/null | tr '\n' ' ')"
    grep -h 'FAIL' "$outs/$g"/run-*.log 2>/dev/null || true
done
echo "--- what the gateways' daemons said of stalls and restarts:"
grep -hE "stalled|first command completed|backing device (lost|back|there)" "$outs"/gw*/gw*-tcmu-sg.log \
    | sed 's/ (the longest.*unrun)//' || true
log "initiator rc $irc, gateways rc $grc (logs in $outs)"
rm -rf "$share"
[ "$irc" -eq 0 ] && [ "$grc" -eq 0 ]
