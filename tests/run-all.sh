#!/usr/bin/env bash
# The test command: installs what it needs, then runs formatting and lint
# checks, the unit and mock-kernel tests, and the end-to-end tests on
# Debian's kernels in the VM (6.1 for every suite, 5.10, 6.12 and 7.x for
# the handler's).
#
# A failing section does not stop the run: every section runs (those that
# need the release build only if it built), and the run ends with one
# summary of every section's result and time. The exit status is non-zero
# when any section failed or could not run.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tests/vm/setup-host.sh >/dev/null || { echo "run-all: tests/vm/setup-host.sh failed" >&2; exit 1; }
command -v cargo >/dev/null || { echo "run-all: cargo not found" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true

T0=$SECONDS
RESULTS=()   # "STATUS<TAB>SECONDS<TAB>NAME"
FAILED=0
BUILT=1      # the release build succeeded (the VM sections need it)

# section NAME COMMAND...: runs one section; its header carries the
# seconds since the start, so a slow suite shows.
section() {
    local name=$1; shift
    local start=$SECONDS rc
    echo "== [$((SECONDS - T0)) s] $name"
    "$@"; rc=$?
    local took=$((SECONDS - start)) status=passed
    if [ $rc -ne 0 ]; then
        status="FAILED (exit $rc)"; FAILED=1
        echo "== [$((SECONDS - T0)) s] $name: FAILED (exit $rc), going on with the next section"
    fi
    RESULTS+=("$status"$'\t'"$took"$'\t'"$name")
    return $rc
}
# vm_section NAME COMMAND...: a section that needs the release build.
vm_section() {
    if [ $BUILT -eq 0 ]; then
        echo "== [$((SECONDS - T0)) s] $1: not run (the release build failed)"
        RESULTS+=("NOT RUN"$'\t'"0"$'\t'"$1"); FAILED=1
        return
    fi
    section "$@"
}

cargo_test() {
    cargo test --workspace > /tmp/tcmu-sg-cargo-test.log 2>&1; local rc=$?
    grep -E '^(test result|running|error)|FAILED|panicked' /tmp/tcmu-sg-cargo-test.log
    [ $rc -eq 0 ] && ! grep -q 'FAILED\|error\[' /tmp/tcmu-sg-cargo-test.log
}
release_build() {
    cargo build --release --quiet && cargo build --release --quiet -p tcmu-sg-configfs --example lio
}
BIN=$PWD/target/release/tcmu-sg
LIO=$PWD/target/release/examples/lio
vm() { bash tests/vm/run-vm.sh "$@"; }
vm_on() { local k=$1; shift; TCMU_SG_VM_KERNEL=$k bash tests/vm/run-vm.sh "$@"; }
DEB=""
build_deb() {
    local deb
    deb=$(bash packaging/build-deb.sh) || return 1
    DEB=$PWD/$deb
}
need_deb() { [ -n "$DEB" ] || { echo "the package did not build"; return 1; }; }
ops() { need_deb && bash tests/vm/run-vm.sh tests/vm/e2e-ops.sh "$DEB"; }
systemd_suite() { need_deb && bash tests/vm/systemd.sh "$DEB"; }

section "cargo fmt --check" cargo fmt --all -- --check
section "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
section "cargo test" cargo_test
section "fuzz targets, 30 s each" bash tests/fuzz.sh
# (its own result, not the binaries' presence: in a used checkout a failed
# build leaves the previous ones)
section "release build" release_build || BUILT=0
vm_section "VM end-to-end tests: the handler" vm tests/vm/e2e.sh "$BIN"
# The handler suite on Debian's other kernels: 5.10, 6.12 and the newest
# backport (7.x); the full suites run on 6.1.
for k in bullseye trixie trixie-backports; do
    vm_section "VM end-to-end tests: the handler on $k's kernel" vm_on $k tests/vm/e2e.sh "$BIN"
done
vm_section "VM end-to-end tests: zoned, 4Kn and 512e disks and changers, directly, through tcmu-sg and through pscsi; the command policy and read-only mode" \
    vm tests/vm/e2e-classes.sh "$BIN" "$LIO"
vm_section "VM end-to-end tests: tapes, directly, through tcmu-sg and through pscsi (7.x)" \
    vm_on trixie-backports tests/vm/e2e-tape.sh "$BIN" "$LIO"
vm_section "VM end-to-end tests: targetcli, iSCSI, reservations, tcmu-runner" \
    vm tests/vm/e2e-users.sh "$BIN" "$LIO"
vm_section "VM end-to-end tests: reliability (restart under load, lost and hung disks, TMR)" \
    vm tests/vm/e2e-reliability.sh "$BIN" "$LIO"
# A multipathed SAN unit as the backing device, on 6.1 (dm told with
# fail_path) and on 7.x (DM_MPATH_PROBE_PATHS).
for k in bookworm trixie-backports; do
    vm_section "VM end-to-end tests: a dm-multipath map as the backing device ($k's kernel)" \
        vm_on $k tests/vm/e2e-mpath.sh "$BIN"
done
vm_section "VM end-to-end tests: a JBOD of 64 LUNs on one daemon" vm tests/vm/e2e-jbod.sh "$BIN"
vm_section "VM end-to-end tests: gateways in pairs (two gateway VMs, dm-multipath on a third)" \
    bash tests/vm/gateways.sh "$BIN"
vm_section "VM end-to-end tests: a QEMU guest doing passthrough on tcmu-sg LUNs over iSCSI" \
    bash tests/vm/guest-passthrough.sh "$BIN" "$LIO"
vm_section "Debian package (cargo-deb, lintian, systemd-analyze security)" build_deb
vm_section "VM end-to-end tests: operations (the installed package, status, reload)" ops
vm_section "VM end-to-end tests: the package under systemd as PID 1, across a reboot, with and without tcmu-runner" \
    systemd_suite

echo
echo "== [$((SECONDS - T0)) s] summary"
for r in "${RESULTS[@]}"; do
    IFS=$'\t' read -r status took name <<< "$r"
    printf '%-18s %5s s  %s\n' "$status" "$took" "$name"
done
if [ $FAILED -ne 0 ]; then
    echo "run-all: some sections failed or did not run (above)"
    exit 1
fi
echo "all passed"
