#!/usr/bin/env bash
# The soak, inside the VM (see tests/vm/soak).
#   soak-guest.sh TCMU_SG_BINARY
set -uo pipefail
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
LOG=/vm-out/tcmu-sg-soak.log
SUITE=soak
. "$HERE/lib.sh"
[ -f /vm-out/soak.env ] && . /vm-out/soak.env
SECS=${SOAK_SECONDS:-600}
# SOAK_EVENTS=0: no kill and no lost disk, for a memory series of one
# daemon's whole life. Devices 4-7 run in bursts (a pause of 15 s after
# every few thousand commands), so that crews grow, go idle, retire their
# threads and grow again all along.
EVENTS=${SOAK_EVENTS:-1}
# 8 LUNs of one 512 MiB store: each device verifies its own 32 MiB.
scsi_debug_luns dev_size_mb=512 max_luns=8 delay=0
start_daemon() { "$BIN" run --no-dbus >> "$LOG" 2>&1 & DAEMON=$!; }
start_daemon
LUNS=()
for i in $(seq 0 7); do
    LUNS+=("$(timeout 90 "$BIN" export --name k$i "${DISKS[$i]}")") || { bad "export k$i"; finish; }
done
echo "devices: ${LUNS[*]}"
pids=()
for i in $(seq 0 7); do
    fio --name=s$i --filename="${LUNS[$i]}" --rw=randrw --bsrange=4k-128k --iodepth=16 \
        --ioengine=libaio --direct=1 --offset=$((32 * i))M --size=32M --time_based --runtime="$SECS" \
        --verify=crc32c --verify_backlog=128 --verify_fatal=1 --randseed=$i \
        $([ $i -eq 7 ] && echo --continue_on_error=all) \
        $([ $i -ge 4 ] && echo --thinktime=15s --thinktime_blocks=3000) \
        --output=/vm-out/soak-fio-$i.txt > /dev/null 2>&1 &
    pids+=($!)
done
LOST=${ADDRS[7]}; LOST_HOST=${LOST%%:*}
t0=$(date +%s); killed=no; deleted=no
echo "t_s rss_kib rss_without_rings_kib fds threads" > /vm-out/soak-series.txt
while [ $(( $(date +%s) - t0 )) -lt "$SECS" ]; do
    t=$(( $(date +%s) - t0 ))
    if [ "$EVENTS" = 1 ] && [ $killed = no ] && [ $t -ge $((SECS / 3)) ]; then
        kill -9 $DAEMON; wait $DAEMON 2>/dev/null; start_daemon; killed=yes
        echo "t=$t s: kill -9, restarted"
    fi
    if [ "$EVENTS" = 1 ] && [ $deleted = no ] && [ $t -ge $((2 * SECS / 3)) ]; then
        echo 1 > "/sys/class/scsi_device/$LOST/device/delete"; deleted=yes
        echo "t=$t s: deleted the backing disk of k7"
        ( sleep 10; echo "- - -" > "/sys/class/scsi_host/host$LOST_HOST/scan"; echo "rescanned" ) &
    fi
    # Both from one pass over the page tables (smaps): VmRSS lags behind
    # them in a process with many threads, and two separate reads can
    # straddle the kernel zapping or faulting ring pages.
    read -r rss rings < <(awk '/^[0-9a-f]+-[0-9a-f]+ /{r = ($6 ~ /^\/dev\/uio/)}
        /^Rss:/{t += $2; if (r) s += $2} END {print t + 0, s + 0}' /proc/$DAEMON/smaps)
    echo "$t $rss $((rss - rings)) $(ls /proc/$DAEMON/fd | wc -l) $(ls /proc/$DAEMON/task | wc -l)" >> /vm-out/soak-series.txt
    sleep 10
done
okc=0
for i in $(seq 0 6); do wait "${pids[$i]}" && okc=$((okc + 1)); done
wait "${pids[7]}"
cat /vm-out/soak-series.txt
check "fio verify on the 7 unaffected devices: no error" [ "$okc" -eq 7 ]
check "  none reports a verify failure" bash -c "! grep -li 'verify.*fail\|bad magic' /vm-out/soak-fio-[0-6].txt"
[ "$EVENTS" = 1 ] && check "k7 served again after its disk came back" grep -q "k7 (uio[0-9]*): backing device back after" "$LOG"
check "the kernel log has no 'ring is broken'" bash -c "! dmesg | grep -q 'ring is broken'"
# Flat: the last third's samples (after both events) stay within 2 MiB
# RSS and 8 fds of their own first.
check "RSS (without rings) and fds are flat after the events" python3 - <<'PY'
rows = [list(map(int, l.split())) for l in open("/vm-out/soak-series.txt").read().splitlines()[1:]]
last = rows[len(rows) * 2 // 3 + 2:]
ok = bool(last) and max(r[2] for r in last) - min(r[2] for r in last) <= 2048 \
    and max(r[3] for r in last) - min(r[3] for r in last) <= 8
raise SystemExit(0 if ok else 1)
PY
# The growth of RSS without rings, KiB per hour, by quarter of the run:
# a leak grows alike in every quarter, a warm-up only in the first.
python3 - <<'PY'
rows = [list(map(int, l.split())) for l in open("/vm-out/soak-series.txt").read().splitlines()[1:]]
q = max(1, len(rows) // 4)
for k in range(4):
    part = rows[k * q:(k + 1) * q + 1]
    if len(part) > 1 and part[-1][0] > part[0][0]:
        slope = (part[-1][2] - part[0][2]) / (part[-1][0] - part[0][0]) * 3600
        print(f"quarter {k + 1} ({part[0][0]}-{part[-1][0]} s): RSS without rings "
              f"{part[0][2]} -> {part[-1][2]} KiB, {slope:+.0f} KiB/h, threads {part[-1][4]}")
PY
awk 'NR > 1 {if (min == "" || $5 < min) min = $5; if ($5 > max) max = $5}
    END {print "threads sampled: " min " to " max}' /vm-out/soak-series.txt
kill -TERM $DAEMON; wait $DAEMON
finish
