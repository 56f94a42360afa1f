#!/usr/bin/env bash
# A gateway VM of tests/vm/gateways.sh. It boots as a gateway host would,
# running the services' commands in their systemd order: iscsid and
# open-iscsi (log in to the shared storage), tcmu-sg (its unit's
# ExecStart), rtslib-fb-targetctl (LIO's saved configuration, after a
# reboot: it sets attributes of user backstores that the kernel refuses
# unless a handler listens).
# The first boot creates the export and saves what survives a reboot
# (/etc/iscsi/nodes, /etc/rtslib-fb-target) in the shared directory; a
# reboot restores it from there. Then it carries out the initiator's
# requests for its daemon (stop, cont, kill9, start) until told it is done.
#
#   gw-gateway.sh TCMU_SG_BINARY NAME first|reboot BASE_PORT
set -uo pipefail
BIN=$1; NAME=$2; MODE=$3; BASE=$4
HERE=$(cd "$(dirname "$0")" && pwd)
S=/vm-share
KEEP=$S/$NAME                       # what survives this gateway's reboots
LOG=/vm-out/$NAME-tcmu-sg.log
SUITE=$NAME-$MODE
STORAGE=iqn.2026-11.org.tcmu-sg:storage
INITIATOR=iqn.2026-11.org.tcmu-sg:initiator
. "$HERE/lib.sh"
mkdir -p "$KEEP"

for m in sd_mod sg target_core_mod target_core_user iscsi_target_mod iscsi_tcp; do modprobe $m; done
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
/lib/systemd/systemd-udevd --daemon 2>/dev/null
# targetcli wants a system bus (it asks D-Bus for user: backstores).
mkdir -p /run/dbus && dbus-daemon --system --fork
mkdir -p /run/lock/iscsi /var/lib/iscsi /etc/iscsi /etc/rtslib-fb-target
echo "InitiatorName=iqn.2026-11.org.tcmu-sg:$NAME" > /etc/iscsi/initiatorname.iscsi
if [ "$MODE" = reboot ]; then
    cp -a "$KEEP/nodes" /etc/iscsi/
    cp "$KEEP/saveconfig.json" /etc/rtslib-fb-target/
fi
# iscsid.service, open-iscsi.service
iscsid || bad "iscsid starts"
if [ "$MODE" = first ]; then
    iscsiadm -m node -T $STORAGE -p 10.0.2.2:$BASE -o new > /dev/null
    iscsiadm -m node -T $STORAGE -p 10.0.2.2:$BASE -o update -n node.startup -v automatic
    # A lost storage session holds the gateway's commands in its queue
    # until it recovers or this runs out; tcmu-sg counts it into every
    # command's time (iscsid's default, 120 s, leaves none under a
    # cmd_time_out a gateway can use).
    iscsiadm -m node -T $STORAGE -p 10.0.2.2:$BASE -o update \
        -n node.session.timeo.replacement_timeout -v 5
fi
iscsiadm -m node --loginall=automatic > /dev/null 2>&1 || bad "log in to the storage"
udevadm trigger; udevadm settle
BACK=$(ls /dev/disk/by-id/wwn-0x* 2>/dev/null | grep -v -- '-part' | head -1)
[ -n "$BACK" ] || { bad "the storage LUN's /dev/disk/by-id link"; finish; }
echo "$NAME ($MODE): storage LUN $BACK -> $(readlink -f "$BACK")"
# tcmu-sg.service
start_daemon() { "$BIN" run --no-dbus --log-level info >> "$LOG" 2>&1 & DAEMON=$!; }
start_daemon
wait_for 10 grep -q "listening to TCM-USER netlink events" "$LOG"
# rtslib-fb-targetctl.service
if [ "$MODE" = reboot ]; then
    targetctl restore > /vm-out/$NAME-restore.txt 2>&1 || bad "targetctl restore"
    check "LIO's saved configuration restored whole" bash -c "! grep -qi 'skipped\|could not' /vm-out/$NAME-restore.txt"
fi
if [ "$MODE" = first ]; then
    # cmd_time_out 18 s and SG_IO timeouts of 3 s (7 s through the block
    # node, 12 s with the storage session's 5 s recovery): a stalled or
    # dead daemon's commands fail back in 18 s, before the initiator's
    # 30 s SCSI timeout, and the stale-command window is 3 s.
    IQN=$(timeout 90 "$BIN" export --name "$NAME" --fabric iscsi --portal 0.0.0.0:3260 \
        --initiator $INITIATOR --attrib pgr_support=0 --attrib alua_support=0 \
        --attrib cmd_time_out=18 --options timeout_s=3 "$BACK") || { bad "export $NAME"; finish; }
    echo "$NAME: exports $IQN"
    targetcli saveconfig > /dev/null 2>&1 || bad "targetcli saveconfig"
    cp -a /etc/iscsi/nodes "$KEEP/"
    cp /etc/rtslib-fb-target/saveconfig.json "$KEEP/"
    echo "$IQN" > "$S/$NAME-iqn"
fi
check "$NAME serves the shared LUN ($MODE boot)" \
    wait_for 20 grep -q "serving .*$(readlink -f "$BACK" | sed 's#/dev/##')" "$LOG"
touch "$S/$NAME-ready-$MODE"

# The initiator's requests: files $S/$NAME-do-<what>, acknowledged by
# $S/$NAME-done-<what>.
while [ ! -e $S/done ]; do
    for f in "$S/$NAME"-do-*; do
        [ -e "$f" ] || continue
        what=${f##*-do-}
        case $what in
            stop) kill -STOP $DAEMON ;;
            cont) kill -CONT $DAEMON ;;
            kill9) kill -9 $DAEMON; wait $DAEMON 2>/dev/null ;;
            start) start_daemon ;;
        esac
        echo "$NAME: $what at $(date +%T.%N | cut -c1-12)"
        rm "$f"
        touch "$S/$NAME-done-$what"
    done
    sleep 0.2
done
kill -CONT $DAEMON 2>/dev/null; kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null
finish
