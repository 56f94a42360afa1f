# Shared by the VM test scripts: pass/fail accounting and the closing line
# (the caller sets LOG, the daemon's log, and SUITE, a name), and the
# set-up of the benchmark-style scripts.
pass=0
fail=0
ok() { echo "PASS: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
# check NAME COMMAND...: the command's exit status decides.
check() {
    local name=$1; shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
# Prints the tail of the daemon log and the counts; exits 1 on any failure.
finish() {
    [ -n "${FINISH_HOOK:-}" ] && $FINISH_HOOK
    echo "--- daemon log (tail) ---"
    tail -n 40 "$LOG" 2>/dev/null
    echo "$SUITE: $pass passed, $fail failed"
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    exit $?
}
# wait_for SECONDS COMMAND...: until the command succeeds.
wait_for() {
    local t=$1; shift
    for _ in $(seq $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
# sg_of /dev/sdX: the disk's sg node.
sg_of() { echo "/dev/$(ls /sys/class/block/"${1#/dev/}"/device/scsi_generic/)"; }
# await NAME: until the other VM of tests/vm/guest-passthrough.sh has made
# /vm-share/NAME (the two step through phases by files there).
await() { wait_for 600 test -e "/vm-share/$1"; }
# fio_rate FILE: "IOPS COMMANDS" (reads and writes together) of the first
# job of fio's JSON output in FILE; fio may print notes before the JSON,
# which go to stderr.
fio_rate() {
    python3 - "$1" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
if '{' not in t:
    sys.exit(f"fio_rate: no JSON from fio in {sys.argv[1]}: {t[:400]}")
if t.index('{'):
    print('fio said:', t[:t.index('{')].strip(), file=sys.stderr)
j = json.loads(t[t.index('{'):])['jobs'][0]
print(round(j['read']['iops'] + j['write']['iops']), j['read']['total_ios'] + j['write']['total_ios'])
PY
}
# scsi_debug_luns SCSI_DEBUG_OPTION...: loads the target modules and
# scsi_debug with these options, mounts configfs, and sets DISKS (the /dev
# nodes) and ADDRS (H:C:T:L) of the scsi_debug LUNs, in LUN order.
scsi_debug_luns() {
    local m
    for m in sd_mod sg target_core_mod target_core_user target_core_pscsi tcm_loop; do modprobe "$m"; done
    modprobe scsi_debug "$@"
    mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
    sleep 1
    mapfile -t DISKS < <(lsscsi | awk '/scsi_debug/{print $1" "$NF}' | tr -d '[]' | sort -t: -k4 -n | awk '{print $2}')
    mapfile -t ADDRS < <(lsscsi | awk '/scsi_debug/{print $1}' | tr -d '[]' | sort -t: -k4 -n)
}
# start_tcmu_runner ROOT: a system bus with tcmu-sg's D-Bus policy (from
# the checkout at ROOT), and tcmu-runner on it (its log in
# /vm-out/tcmu-runner.log); returns once it owns org.kernel.TCMUService1,
# or after 10 s.
start_tcmu_runner() {
    mkdir -p /run/dbus /etc/dbus-1/system.d /var/log
    cp "$1/packaging/dbus/tcmu-sg.conf" /etc/dbus-1/system.d/
    dbus-daemon --system --fork
    tcmu-runner > /vm-out/tcmu-runner.log 2>&1 &
    for _ in $(seq 100); do
        dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetNameOwner \
            string:org.kernel.TCMUService1 >/dev/null 2>&1 && break
        sleep 0.1
    done
}
# qcow_lun DISK: tcmu-runner's user:qcow LUN q0 over a 256 MiB qcow2 image
# on DISK, exported through tcm_loop; prints its /dev node. The image's
# metadata is preallocated (writes allocate nothing), and
# hw_max_sectors=2048 lets tcmu-runner take 1 MiB commands like the
# others (its default, 128 sectors, makes the initiator split at 64 KiB).
qcow_lun() {
    local a
    qemu-img create -q -f qcow2 -o preallocation=metadata "$1" 256M
    targetcli /backstores/user:qcow create name=q0 size=256M cfgstring="$1" \
        hw_max_sectors=2048 2>&1 | grep -v Warning | grep -v 'warn(' >&2 || true
    targetcli /loopback create naa.5001405eeeeeeee1 >/dev/null 2>&1
    targetcli /loopback/naa.5001405eeeeeeee1/luns create /backstores/user:qcow/q0 >/dev/null 2>&1
    a=$(cat /sys/kernel/config/target/loopback/naa.5001405eeeeeeee1/tpgt_1/address)
    for _ in $(seq 100); do ls /sys/class/scsi_device/$a:0/device/block/ >/dev/null 2>&1 && break; sleep 0.1; done
    echo "/dev/$(ls /sys/class/scsi_device/$a:0/device/block/)"
}
