#!/usr/bin/env bash
# Operations on the real 6.1 kernel, inside the VM: the Debian package
# installed with dpkg -i, the daemon started with the installed unit's
# ExecStart line, `tcmu-sg status` (table, JSON, Prometheus) under fio with
# its counts checked against fio's, SIGHUP reloads (good and malformed
# settings), a clean exit at SIGTERM. What systemd itself does with the
# unit (READY=1, STATUS=, reload, stop, a reboot) is tests/vm/systemd.sh's.
#
#   e2e-ops.sh DEB
set -uo pipefail
DEB=${1:?usage: e2e-ops.sh DEB}
HERE=$(cd "$(dirname "$0")" && pwd)
LOG=/vm-out/tcmu-sg-ops.log
SUITE=e2e-ops
. "$HERE/lib.sh"
scsi_debug_luns dev_size_mb=256 max_luns=2 delay=0

# --- the package ---------------------------------------------------------------
dpkg -i "$DEB" > /vm-out/dpkg.txt 2>&1
check "dpkg -i installs the package" bash -c "dpkg-query -W -f='\${Status}' tcmu-sg | grep -q 'install ok installed'"
for f in /usr/bin/tcmu-sg /usr/lib/systemd/system/tcmu-sg.service /etc/tcmu-sg/tcmu-sg.toml \
         /usr/share/dbus-1/system.d/tcmu-sg.conf \
         /usr/share/dbus-1/system-services/org.kernel.TCMUService1.HandlerManager1.sg.service \
         /usr/share/man/man8/tcmu-sg.8.gz /usr/share/man/man8/tcmu-sg-status.8.gz \
         /usr/share/bash-completion/completions/tcmu-sg /usr/share/doc/tcmu-sg/admin-guide.md; do
    check "  installs $f" test -s "$f"
done
check "  the settings file is a conffile" grep -q '^/etc/tcmu-sg/tcmu-sg.toml$' /var/lib/dpkg/info/tcmu-sg.conffiles
check "systemd-analyze verify: the installed unit is clean" \
    bash -c "out=\$(systemd-analyze verify /usr/lib/systemd/system/tcmu-sg.service 2>&1); echo \"\$out\"; [ -z \"\$out\" ]"
check "  the man page renders" bash -c "MANWIDTH=80 man -l /usr/share/man/man8/tcmu-sg.8.gz 2>/dev/null | grep -q 'tcmu-sg'"

# --- the daemon, as the unit starts it ----------------------------------------------
exec_start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/tcmu-sg.service)
echo "unit's ExecStart: $exec_start"
check "the unit runs the installed binary" bash -c "[[ '$exec_start' == /usr/bin/tcmu-sg\ run* ]]"
mkdir -p /run/dbus
$exec_start --no-dbus > "$LOG" 2>&1 &
DAEMON=$!
wait_for 10 grep -q "listening to TCM-USER netlink events" "$LOG" || bad "the daemon listens"
check "the status socket is root-only" bash -c "[ \"\$(stat -c %a /run/tcmu-sg)\" = 700 ] && [ \"\$(stat -c %a /run/tcmu-sg/status.sock)\" = 600 ]"
LUN=$(timeout 90 /usr/bin/tcmu-sg export --name o0 "${DISKS[0]}") || { bad "export o0"; finish; }

# --- status under fio ------------------------------------------------------------
before=$(tcmu-sg status --json)
fio --name=o --filename="$LUN" --rw=randrw --bs=4k --iodepth=8 --ioengine=libaio --direct=1 \
    --size=64M --runtime=8 --time_based --output-format=json --output=/vm-out/ops-fio.json > /dev/null 2>&1 &
FIO=$!
# The table while fio runs (fio takes a moment to start under TCG).
row_moves() {
    tcmu-sg status > /vm-out/status-screen.txt
    python3 -c "
import sys
lines = open('/vm-out/status-screen.txt').read().splitlines()
head = lines[1]
# Cells by header position: right-aligned numbers end where their header does.
cell = lambda l, h: l[head.index(h):].split()[0] if h in ('NAME', 'BACKING', 'IDENTITY', 'STATE') \
    else l[:head.index(h) + len(h)].split()[-1]
r = [l for l in lines[2:] if cell(l, 'NAME') == 'user_1/o0']
sys.exit(not (r and cell(r[0], 'STATE') == 'serving' and cell(r[0], 'BACKING').startswith('/dev/')
              and cell(r[0], 'IDENTITY').startswith('naa.') and float(cell(r[0], 'IOPS')) > 0))"
}
wait_for 8 row_moves; moved=$?
tcmu-sg status --prometheus > /vm-out/status.prom
wait $FIO
sleep 1.5
after=$(tcmu-sg status --json)
cat /vm-out/status-screen.txt
check "the table shows the device serving, with IOPS while fio runs" [ "$moved" -eq 0 ]
check "the Prometheus exposition counts the device's commands" \
    grep -q '^tcmu_sg_commands_total{device="user_1/o0",uio="uio[0-9]*",backing="/dev/sd[a-z]*"} [1-9]' /vm-out/status.prom
cmp_counts() {
    python3 - "$before" "$after" <<'PY'
import json, sys
b, a = (json.loads(x) for x in sys.argv[1:3])
dev = lambda r: [d for d in r["devices"] if d["name"] == "user_1/o0"][0]["counters"]
cb, ca = dev(b), dev(a)
f = json.load(open("/vm-out/ops-fio.json"))["jobs"][0]
ios = f["read"]["total_ios"] + f["write"]["total_ios"]
rd = f["read"]["io_bytes"]; wr = f["write"]["io_bytes"]
done = ca["done"] - cb["done"]
print(f"fio: {ios} I/Os, {rd} B read, {wr} B written; daemon: {done} commands, "
      f"{ca['read_bytes'] - cb['read_bytes']} B read, {ca['written_bytes'] - cb['written_bytes']} B written")
ok = abs(done - ios) <= 0.03 * ios and abs((ca["read_bytes"] - cb["read_bytes"]) - rd) <= 0.03 * rd \
    and abs((ca["written_bytes"] - cb["written_bytes"]) - wr) <= 0.03 * wr and ca["good"] > cb["good"]
sys.exit(0 if ok else 1)
PY
}
check "status counts match fio's within 3% (commands, bytes read and written)" cmp_counts
check "--json is the daemon's report" python3 -c "import json,sys; r = json.loads(sys.argv[1]); sys.exit(not r['devices'])" "$after"

# --- SIGHUP ------------------------------------------------------------------------
sed -i 's/^level = "info"/level = "debug"/' /etc/tcmu-sg/tcmu-sg.toml
kill -HUP $DAEMON
check "SIGHUP reloads the settings file" wait_for 5 grep -q 'settings reloaded: log level DEBUG' "$LOG"
printf '[log]\nlevel = "debug"\n[io]\nmax_threads = "many"\n' > /etc/tcmu-sg/tcmu-sg.toml
kill -HUP $DAEMON
check "a malformed file is refused with its line and reason" \
    wait_for 5 grep -q 'settings not reloaded, the running ones stay: /etc/tcmu-sg/tcmu-sg.toml: line 4: ' "$LOG"
check "  and the daemon keeps serving" bash -c "sg_inq $LUN > /dev/null && kill -0 $DAEMON"

# --- stop ----------------------------------------------------------------------------
timeout 60 /usr/bin/tcmu-sg unexport --name o0 || bad "unexport o0"
check "  at the level it had (debug: the removal's netlink event is logged)" \
    wait_for 5 grep -q 'netlink event 2 for' "$LOG"
kill -TERM $DAEMON
wait $DAEMON
check "SIGTERM: a clean exit" [ $? -eq 0 ]
check "  and the status socket removed" test ! -e /run/tcmu-sg/status.sock
finish
