#!/usr/bin/env bash
# Runs every cargo fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each
# (default 30) from its committed seed corpus (fuzz/corpus/<target>, copied,
# so the checkout stays clean), on the nightly toolchain; fails on a crash
# or a broken property. Installs cargo-fuzz from crates.io if missing.
#   FUZZ_RUNS=N instead runs each target for N executions.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
secs=${FUZZ_SECONDS:-30}
for t in ring cdb config sense policy; do
    work=$(mktemp -d /tmp/tcmu-sg-fuzz-$t.XXXXXX)
    cp -r "fuzz/corpus/$t/." "$work/"
    if [ -n "${FUZZ_RUNS:-}" ]; then limit=(-runs="$FUZZ_RUNS"); else limit=(-max_total_time="$secs"); fi
    echo "== fuzz $t (${FUZZ_RUNS:-$secs s})"
    log=$work.log
    if ! cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$work" -- "${limit[@]}" \
            -print_final_stats=1 > "$log" 2>&1; then
        tail -40 "$log" >&2
        echo "fuzz $t: failed (the input is in fuzz/artifacts/$t)" >&2
        exit 1
    fi
    grep -E 'stat::number_of_executed_units|stat::new_units_added' "$log" | tr '\n' ' '
    echo
    rm -rf "$work" "$log"
done
