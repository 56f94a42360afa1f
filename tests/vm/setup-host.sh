#!/usr/bin/env bash
# Installs everything the VM harness needs on a Debian 12 host and unpacks the
# guest kernel. Idempotent: a second run only checks.
#
#   TCMU_SG_VM_CACHE  where the kernel package is unpacked (default /var/cache/tcmu-sg)
set -euo pipefail
cache=${TCMU_SG_VM_CACHE:-/var/cache/tcmu-sg}
pkgs=(qemu-system-x86 busybox-static kmod cpio sg3-utils lsscsi fio targetcli-fb
      python3-rtslib-fb open-iscsi libiscsi-bin dbus tcmu-runner linux-perf dmsetup)
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
mkdir -p "$cache"
if ! ls "$cache"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6\.1/{print $2; exit}')
    [ -n "$pkg" ] || { echo "setup-host: no linux-image-6.1 package found" >&2; exit 1; }
    echo "setup-host: fetching $pkg" >&2
    (cd "$cache" && rm -f ./*.deb && apt-get download "$pkg" >/dev/null 2>&1)
    rm -rf "$cache/kernel.tmp"
    dpkg -x "$cache"/linux-image-*.deb "$cache/kernel.tmp"
    kver=$(ls "$cache/kernel.tmp/lib/modules")
    depmod -b "$cache/kernel.tmp" "$kver"
    rm -rf "$cache/kernel" && mv "$cache/kernel.tmp" "$cache/kernel"
fi
echo "$cache/kernel"
