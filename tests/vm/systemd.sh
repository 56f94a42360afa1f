#!/usr/bin/env bash
# The package under systemd as PID 1, from boot to shutdown and across
# reboots (tests/vm/e2e-systemd.sh): three boots of this machine's root
# whose overlay upper layer is one ext4 image, so that each boot finds what
# the ones before installed, enabled and saved, as a rebooted gateway would.
#   1. tcmu-runner enabled: install, enable, create and save the LUNs
#   2. tcmu-runner enabled: rebooted, the LUNs restored and served
#   3. tcmu-runner masked: rebooted again, the same without it (nothing
#      loads target_core_user but tcmu-sg's unit)
#
#   systemd.sh DEB
set -euo pipefail
DEB=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/tcmu-sg-systemd.XXXXXX)
img=$work/upper.img
truncate -s 2G "$img"
mkfs.ext4 -q -F "$img"
t0=$SECONDS
for boot in first:runner reboot:runner reboot:none; do
    phase=${boot%:*} variant=${boot#*:}
    mask=""
    [ "$variant" = none ] && mask=tcmu-runner.service
    out=$work/$phase-$variant
    echo "== [$((SECONDS - t0)) s] systemd suite: $phase boot, tcmu-runner $([ "$variant" = none ] && echo masked || echo enabled) (logs in $out)"
    if ! TCMU_SG_VM_OUT=$out TCMU_SG_VM_DISK=$img TCMU_SG_VM_INIT=systemd \
            TCMU_SG_VM_MASK=$mask TCMU_SG_VM_TIMEOUT=900 \
            bash "$here/run-vm.sh" "$here/e2e-systemd.sh" "$phase" "$variant" "$DEB"; then
        tail -60 "$out/journal-$phase.txt" 2>/dev/null || true
        echo "systemd suite: failed in the $phase boot ($variant) after $((SECONDS - t0)) s"
        exit 1
    fi
done
echo "systemd suite: three boots passed in $((SECONDS - t0)) s"
