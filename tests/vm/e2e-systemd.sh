#!/usr/bin/env bash
# The package on a host booted with systemd as PID 1 (run by
# tests/vm/systemd.sh: this machine's root, systemd 252, the overlay's upper
# layer on a disk that survives reboots; the first boot with tcmu-runner
# enabled, then a reboot with it, then one with it masked). Nothing here starts the daemon
# by hand: systemd starts the installed unit, and rtslib-fb-targetctl
# restores LIO's saved configuration at boot, as on a gateway.
#
#   first boot:  dpkg -i; the unit enabled and started; a user:sg LUN over a
#                scsi_debug disk (by its /dev/disk/by-id link), exported
#                through tcm_loop, written, saved with targetcli; journal,
#                reload, security; then the host powers off
#   second boot: the unit up before the restore, the LUN restored and served
#                with no administrator action, the data read back, I/O;
#                `systemctl stop` drains under fio; a disk that appears late
#
#   e2e-systemd.sh first|reboot runner|none DEB
set -uo pipefail
PHASE=${1:?}; VARIANT=${2:?}; DEB=${3:?}
HERE=$(cd "$(dirname "$0")" && pwd)
LOG=/vm-out/journal-$PHASE.txt
SUITE="systemd ($VARIANT, $PHASE boot)"
SGIO="python3 $HERE/sgio.py"
. "$HERE/lib.sh"
FINISH_HOOK=save_journal
save_journal() { journalctl -b --no-pager -o short-monotonic > "$LOG" 2>&1; }

echo "PID 1: $(cat /proc/1/comm); tcmu-runner: $(systemctl is-enabled tcmu-runner 2>&1)"
check "systemd is PID 1" [ "$(cat /proc/1/comm)" = systemd ]
if [ "$VARIANT" = runner ]; then
    check "tcmu-runner is enabled and running beside tcmu-sg" systemctl is-active -q tcmu-runner
else
    check "tcmu-runner is not running" bash -c "! systemctl is-active -q tcmu-runner"
fi
# The initiator's view of the tcm_loop LUN: the disk on tcm_loop's host.
lun_of() {
    local h
    for h in /sys/class/scsi_host/host*; do
        [ "$(cat "$h/proc_name" 2>/dev/null)" = tcm_loopback ] || continue
        lsscsi | awk -v p="[${h##*host}:" 'index($1, p) == 1 && $NF ~ /^\/dev\// {print $NF; exit}'
    done
}
so_dir() { ls -d /sys/kernel/config/target/core/user_*/"$1" 2>/dev/null | head -1; }
# The first scsi_debug disk's /dev/disk/by-id link (it names the unit, not
# the order disks were found in).
by_id() {
    local d l
    d=$(lsscsi | awk '/scsi_debug/ {print $NF; exit}')
    [ -n "$d" ] || return 1
    for l in /dev/disk/by-id/wwn-*; do
        [ "$(readlink -f "$l")" = "$d" ] && { echo "$l"; return 0; }
    done
    return 1
}
# The late LUN: a LIO ramdisk with a fixed unit serial behind its own
# tcm_loop target (late_up), and its removal (late_down).
LATE_WWN=naa.5001405000000777
late_up() {
    targetcli /backstores/ramdisk create name=tcmu-sg-late size=16M wwn=5e5e5e5e-0000-4000-8000-000000000777 \
        > /dev/null 2>&1
    targetcli /loopback create $LATE_WWN > /dev/null 2>&1
    targetcli /loopback/$LATE_WWN/luns create /backstores/ramdisk/tcmu-sg-late > /dev/null 2>&1
    udevadm settle
}
late_down() {
    targetcli /loopback delete $LATE_WWN > /dev/null 2>&1
    targetcli /backstores/ramdisk delete tcmu-sg-late > /dev/null 2>&1
}
# Its by-id link: LIO's NAA follows the unit serial given above.
LATE_LINK=/dev/disk/by-id/wwn-0x60014055e5e5e5e00004000800000000
late_link() { wait_for 20 test -b "$LATE_LINK" && echo "$LATE_LINK"; }
# The initiator's disk once udev has it (within SECONDS), and a 1 MiB
# pattern written to it.
await_lun() { udevadm settle; wait_for "$1" test -n "$(lun_of)"; lun_of; }
write_pattern() { pattern | dd of="$1" bs=1M count=1 iflag=fullblock oflag=direct status=none 2>/dev/null; }
pattern() { python3 -c "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4096)"; }

if [ "$PHASE" = first ]; then
    # --- the package ---------------------------------------------------------
    dpkg -i "$DEB" > /vm-out/dpkg.txt 2>&1
    check "dpkg -i installs the package" bash -c "dpkg-query -W -f='\${Status}' tcmu-sg | grep -q 'install ok installed'"
    check "  and enables the unit" bash -c "[ \"\$(systemctl is-enabled tcmu-sg)\" = enabled ]"
    check "  and the drop-in that prepares LIO's restore" \
        bash -c "systemctl cat rtslib-fb-targetctl | grep -q 'tcmu-sg prepare-restore'"
    check "systemctl start tcmu-sg: active" systemctl start tcmu-sg
    check "  Type=notify: STATUS= from the daemon" \
        bash -c "systemctl show -p StatusText tcmu-sg | grep -q 'serving 0 devices'"
    sec=$(systemd-analyze security tcmu-sg 2>/dev/null | tail -1)
    echo "systemd-analyze security: $sec"
    check "systemd-analyze security: exposure 3.0 or less (2.8 offline at build)" \
        python3 -c "import re,sys; sys.exit(float(re.search(r'level for \S+: ([0-9.]+)', '''$sec''').group(1)) > 3.0)"
    # --- the backing disk, loaded at every boot ---------------------------------
    # (vpd_use_hostno=0: the disk's NAA, hence its by-id link, does not
    # follow the SCSI host number, which differs from boot to boot)
    echo scsi_debug > /etc/modules-load.d/tcmu-sg-test.conf
    echo "options scsi_debug dev_size_mb=64 max_luns=1 vpd_use_hostno=0" > /etc/modprobe.d/tcmu-sg-test.conf
    modprobe scsi_debug
    udevadm settle
    BACK=$(by_id) || bad "the scsi_debug disk's /dev/disk/by-id link"
    echo "backing disk: $BACK -> $(readlink -f "$BACK")"
    # --- a LUN as the users' guide creates it ------------------------------------
    ctl=""
    [ "$VARIANT" = runner ] && ctl=" control=nl_reply_supported=-1"
    targetcli /backstores/user:sg create name=d0 size=64M cfgstring="$BACK"$ctl > /vm-out/targetcli.txt 2>&1
    check "targetcli creates the user:sg backstore$ctl" test -n "$(so_dir d0)" \
        || cat /vm-out/targetcli.txt
    targetcli /loopback create > /dev/null 2>&1
    targetcli "/loopback/$(ls /sys/kernel/config/target/loopback | grep naa | head -1)/luns" \
        create /backstores/user:sg/d0 >> /vm-out/targetcli.txt 2>&1
    LUN=$(await_lun 20)
    echo "initiator disk: $LUN"
    check "the initiator sees the LUN" test -b "$LUN"
    write_pattern "$LUN"
    check "  a pattern written through it reaches the disk" \
        cmp -n 1048576 <(pattern) <(dd if="$(readlink -f "$BACK")" bs=1M count=1 iflag=direct status=none)
    # --- a SAN LUN that logs in late ------------------------------------------------
    # A LIO ramdisk seen through its own tcm_loop nexus stands for it: d1 is
    # created over its by-id link (its NAA follows the unit serial given
    # here), then the LUN goes; the next boot restores d1 without it, and
    # the LUN comes back only once the host is up.
    late_up
    LATE=$(late_link) || bad "the late LUN's /dev/disk/by-id link"
    echo "late LUN: $LATE -> $(readlink -f "$LATE")"
    targetcli /backstores/user:sg create name=d1 size=16M cfgstring="$LATE"$ctl >> /vm-out/targetcli.txt 2>&1
    check "a second backstore over the late LUN" \
        wait_for 20 bash -c "journalctl -b -u tcmu-sg -o cat | grep -q 'user_[0-9]*/d1 .* serving'"
    check "  STATUS= follows the device count (systemctl status: serving 2 devices)" \
        wait_for 10 bash -c "systemctl show -p StatusText tcmu-sg | grep -q 'serving 2 devices'"
    late_down
    targetcli saveconfig > /dev/null 2>&1
    check "targetcli saveconfig saves the LUNs" \
        bash -c "[ \$(grep -c '\"config\": \"sg/' /etc/rtslib-fb-target/saveconfig.json) -eq 2 ]"
    check "  and not the late one's storage" bash -c "! grep -q tcmu-sg-late /etc/rtslib-fb-target/saveconfig.json"
    # --- the journal and a reload --------------------------------------------------
    check "journalctl -u tcmu-sg: the daemon's lines, info ones at priority 6" \
        bash -c "journalctl -b -u tcmu-sg -p info..info -o cat | grep -q 'serving '"
    check "  with no priority prefix left in the text" \
        bash -c "! journalctl -b -u tcmu-sg -o cat | grep -q '^<[0-7]>'"
    sed -i 's/^level = "info"/level = "debug"/' /etc/tcmu-sg/tcmu-sg.toml
    check "systemctl reload rereads the settings" systemctl reload tcmu-sg
    check "  the daemon says the new level" \
        wait_for 10 bash -c "journalctl -b -u tcmu-sg -o cat | grep -q 'settings reloaded: log level DEBUG'"
    sed -i 's/^level = "debug"/level = "info"/' /etc/tcmu-sg/tcmu-sg.toml
    systemctl reload tcmu-sg
    save_journal
    finish
fi

# --- the second boot: nothing done by hand before these checks -----------------------
wait_for 120 bash -c "systemctl show -p ActiveState rtslib-fb-targetctl | grep -q active" \
    || bad "rtslib-fb-targetctl finished"
ts() { systemctl show -p "$2" --value "$1"; }
ready=$(ts tcmu-sg ActiveEnterTimestampMonotonic)
restore=$(ts rtslib-fb-targetctl ExecMainStartTimestampMonotonic)
mod=$(ts modprobe@target_core_user InactiveExitTimestampMonotonic)
echo "monotonic us: modprobe@target_core_user $mod, tcmu-sg ready $ready, restore started $restore"
check "the unit was ready before LIO's restore started" bash -c "[ $ready -gt 0 ] && [ $ready -le $restore ]"
check "  and target_core_user was loaded for it (modprobe@) before it started" \
    bash -c "[ $mod -gt 0 ] && [ $mod -le $ready ] && lsmod | grep -q '^target_core_user'"
journalctl -b -u rtslib-fb-targetctl -o cat > /vm-out/restore.txt
check "the restore skipped nothing" bash -c "! grep -qi 'skipped\|could not' /vm-out/restore.txt" \
    || cat /vm-out/restore.txt
check "  the backstore came back enabled" grep -q 1 "$(so_dir d0)/enable"
[ "$VARIANT" = runner ] && check "  its control string kept nl_reply_supported=-1 (the drop-in)" \
    grep -q 'nl_reply_supported=-1' /etc/rtslib-fb-target/saveconfig.json
check "  STATUS= counts both restored devices" \
    wait_for 30 bash -c "systemctl show -p StatusText tcmu-sg | grep -q 'serving 2 devices'"
check "the daemon serves it" wait_for 30 bash -c "journalctl -b -u tcmu-sg -o cat | grep -q 'user_[0-9]*/d0 .* serving'"
LUN=$(await_lun 30)
echo "initiator disk after the reboot: $LUN"
check "the initiator sees the LUN again" test -b "$LUN"
# (scsi_debug keeps its data in memory: what the first boot wrote is gone,
# so the pattern is written again)
write_pattern "$LUN"
check "  and I/O runs through it: a pattern written and read back" \
    cmp -n 1048576 <(pattern) <(dd if="$LUN" bs=1M count=1 iflag=direct status=none)
# The SAN LUN that logs in late: restored without it, served once it is there.
check "the backstore over the late LUN came back too, waiting for its disk" \
    bash -c "journalctl -b -u tcmu-sg -o cat | grep -q 'user_[0-9]*/d1 .*not there yet'"
late_up
check "  and is served once the LUN is there" \
    wait_for 30 bash -c "journalctl -b -u tcmu-sg -o cat | grep -q 'user_[0-9]*/d1 .*backing device there after'"
# systemctl stop drains: fio runs, the unit stops (the commands read finish),
# starts again; fio sees no error (what waited in the ring is retried).
fio --name=s --filename="$LUN" --rw=randwrite --bs=4k --iodepth=8 --ioengine=libaio --direct=1 \
    --size=16M --offset=16M --time_based --runtime=12 --verify=crc32c --verify_fatal=1 \
    --output=/vm-out/fio-stop.txt > /dev/null 2>&1 &
FIO=$!
sleep 3
check "systemctl stop under I/O" systemctl stop tcmu-sg
check "  the daemon finished what it had read and stopped cleanly" \
    bash -c "journalctl -b -u tcmu-sg -o cat | grep -q 'stopping: finishing commands in flight' &&
             journalctl -b -u tcmu-sg -o cat | grep -q '^stopped' &&
             [ \"\$(systemctl show -p Result --value tcmu-sg)\" = success ]"
check "systemctl start again" systemctl start tcmu-sg
wait $FIO; rc=$?
check "  fio verify ran through it without an error" bash -c "[ $rc -eq 0 ] && grep -q 'err= 0' /vm-out/fio-stop.txt"
save_journal
finish
