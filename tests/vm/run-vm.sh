#!/usr/bin/env bash
# Boots a Debian kernel (6.1 unless TCMU_SG_VM_KERNEL says otherwise) under
# QEMU TCG with this machine's root file
# system shared read-only over 9p (plus a tmpfs overlay), and runs one guest
# script as root inside it. The script's exit code becomes ours.
#
#   run-vm.sh GUEST_SCRIPT [ARGS...]
#
#   TCMU_SG_VM_CACHE   kernel and initramfs cache (default /var/cache/tcmu-sg)
#   TCMU_SG_VM_KERNEL  bookworm (6.1, default), bullseye (5.10), trixie (6.12)
#                      or trixie-backports (7.x); see kernel.sh
#   TCMU_SG_VM_MEM     guest memory (default 4G)
#   TCMU_SG_VM_TIMEOUT seconds before the VM is killed (default 1500)
#   TCMU_SG_VM_OUT     directory shared read-write as /vm-out in the guest
#                      (default: a fresh temporary directory)
#   TCMU_SG_VM_SHARE   a directory shared read-write as /vm-share (two VMs
#                      given the same one exchange files through it)
#   TCMU_SG_VM_NET     user-mode networking options for a virtio NIC, e.g.
#                      hostfwd=tcp:127.0.0.1:13260-:3260 (the guest is
#                      10.0.2.15; the host's loopback is 10.0.2.2)
#   TCMU_SG_VM_EXTRA   more QEMU arguments (word-split)
#   TCMU_SG_VM_SMP     vCPUs (default 2)
#   TCMU_SG_VM_DISK    a raw ext4 image: the overlay's upper layer, so that a
#                      later boot of the same image finds what this one wrote
#   TCMU_SG_VM_INIT    "systemd": boot with systemd as PID 1; the script runs
#                      as a unit after multi-user.target, then powers off
#   TCMU_SG_VM_MASK    units to mask in such a boot (comma-separated)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${TCMU_SG_VM_CACHE:-/var/cache/tcmu-sg}
kdir=$(bash "$here/setup-host.sh")
kver=$(ls "$kdir/lib/modules")
script=$(realpath "$1"); shift
out=${TCMU_SG_VM_OUT:-$(mktemp -d /tmp/tcmu-sg-vm.XXXXXX)}
mkdir -p "$out"
: > "$out/console.log"

initrd="$cache/initramfs-$kver.cpio.gz"
if [ ! -s "$initrd" ] || [ "$here/init" -nt "$initrd" ] || [ "$0" -nt "$initrd" ]; then
    stage=$(mktemp -d)
    mkdir -p "$stage"/{bin,proc,sys,dev,host,rw,newroot,out,mods}
    cp /bin/busybox "$stage/bin/busybox"
    for m in virtio_pci 9pnet_virtio 9p overlay virtio_blk ext4; do
        modprobe -d "$kdir" -S "$kver" --show-depends "$m" | awk '/^insmod/{print $2}'
    done | awk '!seen[$0]++' > "$stage/mods/order.full"
    : > "$stage/mods/order"
    while read -r ko; do
        cp "$ko" "$stage/mods/"
        basename "$ko" >> "$stage/mods/order"
    done < "$stage/mods/order.full"
    rm "$stage/mods/order.full"
    cp "$here/init" "$stage/init"
    chmod +x "$stage/init"
    (cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$stage"
fi

# Arguments travel through a file in the shared output directory.
printf '%s\n' "$script" "$@" > "$out/argv"
timeout_s=${TCMU_SG_VM_TIMEOUT:-1500}
extra=()
cmdline_extra=""
if [ -n "${TCMU_SG_VM_SHARE:-}" ]; then
    extra+=(-virtfs "local,path=$TCMU_SG_VM_SHARE,mount_tag=vmshare,security_model=none,multidevs=remap")
fi
if [ -n "${TCMU_SG_VM_NET:-}" ]; then
    extra+=(-netdev "user,id=n0,$TCMU_SG_VM_NET" -device virtio-net-pci,netdev=n0)
    cmdline_extra+=" tcmusg.net=1"
fi
if [ -n "${TCMU_SG_VM_DISK:-}" ]; then
    extra+=(-drive "file=$TCMU_SG_VM_DISK,if=virtio,format=raw,cache=unsafe")
fi
if [ "${TCMU_SG_VM_INIT:-}" = systemd ]; then
    cmdline_extra+=" tcmusg.init=systemd fstab=0 systemd.show_status=0"
    [ -n "${TCMU_SG_VM_MASK:-}" ] && cmdline_extra+=" tcmusg.mask=$TCMU_SG_VM_MASK"
fi
# shellcheck disable=SC2206
extra+=(${TCMU_SG_VM_EXTRA:-})
# tsc=unstable: under TCG the clocksource watchdog finds the TSC skewed a
# minute or so into a boot and marks it unstable, which patches
# sched_clock's static branch at run time; on the 7.x kernel that patch has
# crashed the guest (int3 oops in sched_clock_cpu, panic) under TCG. Deciding
# it at boot leaves nothing to patch later; the guest uses the HPET then, as
# it would after the watchdog.
# A single-VM suite is booted once more, whole, if the guest kernel crashed
# on an int3 it did not place: live code patching (static keys, tracepoints)
# racing another vCPU under multi-threaded TCG, an emulator fault and not a
# test result. It is said loudly; a second crash, or any other, fails.
attempt=1
while :; do
    rm -f "$out/rc"
    set +e
    timeout --foreground -k 10 "$timeout_s" qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -smp "${TCMU_SG_VM_SMP:-2}" -m "${TCMU_SG_VM_MEM:-4G}" \
        -nographic -no-reboot -nodefaults -serial "file:$out/console.log" \
        -kernel "$kdir/boot/vmlinuz-$kver" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 quiet loglevel=4 tsc=unstable tcmusg.kver=$kver tcmusg.kdir=$kdir$cmdline_extra" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$out,mount_tag=vmout,security_model=none,multidevs=remap" \
        -device virtio-rng-pci "${extra[@]}" >/dev/null 2>&1
    qrc=$?
    set -e
    cat "$out/guest.log" >&2 2>/dev/null || true
    if [ -f "$out/rc" ]; then
        rc=$(cat "$out/rc")
        break
    fi
    echo "run-vm: the guest script did not finish (qemu rc $qrc); console tail:" >&2
    tail -40 "$out/console.log" >&2
    rc=99
    if [ "$attempt" -eq 1 ] && [ -z "${TCMU_SG_VM_SHARE:-}" ] && grep -q 'Oops: int3' "$out/console.log"; then
        echo "run-vm: THE GUEST KERNEL CRASHED ON A STRAY int3 (live code patching under TCG);" \
             "booting once more and running the whole script again" >&2
        # Everything the first boot wrote moves aside (only the arguments
        # and settings stay), so that no check reads a line of it.
        mkdir "$out/crashed-boot"
        find "$out" -mindepth 1 -maxdepth 1 ! -name crashed-boot ! -name argv ! -name '*.env' \
            -exec mv -t "$out/crashed-boot" {} +
        : > "$out/console.log"
        attempt=2
        continue
    fi
    break
done
echo "run-vm: guest script exit code $rc (console: $out/console.log)" >&2
exit "$rc"
