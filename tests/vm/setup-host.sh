#!/usr/bin/env bash
# Installs everything the VM harness needs on a Debian 12 host and unpacks the
# guest kernel; prints the kernel's directory. Idempotent: a second run only
# checks.
#
#   TCMU_SG_VM_CACHE   where the kernel package is unpacked (default /var/cache/tcmu-sg)
#   TCMU_SG_VM_KERNEL  bookworm (6.1, the default), bullseye (5.10), trixie
#                      (6.12) or trixie-backports (7.x): see kernel.sh
set -euo pipefail
pkgs=(qemu-system-x86 busybox-static kmod cpio sg3-utils lsscsi fio targetcli-fb
      python3-rtslib-fb open-iscsi libiscsi-bin dbus tcmu-runner linux-perf dmsetup
      xz-utils zstd mt-st tgt mtx multipath-tools)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup-host: installing ${missing[*]}" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
# qemu-img (for the benchmark's qcow2 image) comes in a second step: a
# newer qemu-utils preinstalled on the machine conflicts with Debian's
# qemu-system-x86 and is replaced by the matching one.
if ! command -v qemu-img >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-utils >/dev/null
fi
# The guest kernel: TCMU_SG_VM_KERNEL picks a Debian suite's (kernel.sh).
bash "$(dirname "$0")/kernel.sh" "${TCMU_SG_VM_KERNEL:-bookworm}"
