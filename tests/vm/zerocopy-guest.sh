#!/usr/bin/env bash
# Shows whether SG_IO from tcmu-sg maps the data area (zero-copy) or copies
# it: counts, with the ftrace function tracer, the block layer's
# blk_rq_map_user_iov calls and how many went to bio_map_user_iov (the
# page-pinning path; the other, bio_copy_user_iov, is static and cannot be
# traced, so the counts are compared). Run:
#   tests/vm/run-vm.sh tests/vm/zerocopy-guest.sh "$PWD/target/release/tcmu-sg"
set -uo pipefail
B=$1
for m in sd_mod sg target_core_user tcm_loop; do modprobe $m; done
modprobe scsi_debug dev_size_mb=256 delay=0
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
mount -t tracefs none /sys/kernel/tracing
$B run --no-dbus > /tmp/d.log 2>&1 &
sleep 0.5
L=$($B export --name z /dev/sda)
T=/sys/kernel/tracing
grep -E '^(bio_copy_user_iov|bio_map_user_iov|blk_rq_map_user_iov|bio_copy_kern|blk_rq_map_user_io)( |$)' $T/available_filter_functions
for f in bio_copy_user_iov bio_map_user_iov blk_rq_map_user_iov; do echo $f >> $T/set_ftrace_filter 2>/dev/null; done
echo "filter: $(cat $T/set_ftrace_filter | tr '\n' ' ')"
echo function > $T/current_tracer
echo > $T/trace
echo 1 > $T/tracing_on
dd if=$L of=/dev/null bs=1M count=16 iflag=direct 2>/dev/null
dd if=/dev/zero of=$L bs=1M count=16 oflag=direct 2>/dev/null
echo 0 > $T/tracing_on
echo "calls by function (comm):"
grep -v '^#' $T/trace | awk '{for(i=1;i<=NF;i++) if ($i ~ /^<-/) print $1, $(i-1)}' | sed 's/-[0-9]* / /' | sort | uniq -c
m=$(grep -c 'bio_map_user_iov <-' $T/trace)
r=$(grep -c 'blk_rq_map_user_iov <-' $T/trace)
echo "requests mapped: $r, of which through bio_map_user_iov (zero-copy): $m"
