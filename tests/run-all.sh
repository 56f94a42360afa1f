#!/usr/bin/env bash
# The test command: installs what it needs, then runs formatting and lint
# checks, the unit and mock-kernel tests, and the end-to-end tests on
# Debian's kernels in the VM (6.1 for every suite, 5.10, 6.12 and 7.x for
# the handler's).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/vm/setup-host.sh >/dev/null
command -v cargo >/dev/null || { echo "run-all: cargo not found" >&2; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Section headers carry the seconds since the start, so a slow suite shows.
T0=$SECONDS
section() { echo "== [$((SECONDS - T0)) s] $*"; }

section "cargo fmt --check"
cargo fmt --all -- --check
section "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
section "cargo test"
cargo test --workspace 2>&1 | tee /tmp/tcmu-sg-cargo-test.log | grep -E '^(test result|running|error)|FAILED|panicked'
grep -q 'FAILED\|error\[' /tmp/tcmu-sg-cargo-test.log && exit 1
section "fuzz targets, 30 s each"
bash tests/fuzz.sh
cargo build --release --quiet
cargo build --release --quiet -p tcmu-sg-configfs --example lio
section "VM end-to-end tests: the handler"
bash tests/vm/run-vm.sh tests/vm/e2e.sh "$PWD/target/release/tcmu-sg"
# The handler suite on Debian's other kernels: 5.10, 6.12 and the newest
# backport (7.x); the full suites run on 6.1.
for k in bullseye trixie trixie-backports; do
    section "VM end-to-end tests: the handler on $k's kernel"
    TCMU_SG_VM_KERNEL=$k bash tests/vm/run-vm.sh tests/vm/e2e.sh "$PWD/target/release/tcmu-sg"
done
section "VM end-to-end tests: zoned, 4Kn and 512e disks and changers, directly, through tcmu-sg and through pscsi; the command policy and read-only mode"
bash tests/vm/run-vm.sh tests/vm/e2e-classes.sh "$PWD/target/release/tcmu-sg" "$PWD/target/release/examples/lio"
section "VM end-to-end tests: tapes, directly, through tcmu-sg and through pscsi (7.x)"
TCMU_SG_VM_KERNEL=trixie-backports bash tests/vm/run-vm.sh tests/vm/e2e-tape.sh \
    "$PWD/target/release/tcmu-sg" "$PWD/target/release/examples/lio"
section "VM end-to-end tests: targetcli, iSCSI, reservations, tcmu-runner"
bash tests/vm/run-vm.sh tests/vm/e2e-users.sh "$PWD/target/release/tcmu-sg" "$PWD/target/release/examples/lio"
section "VM end-to-end tests: reliability (restart under load, lost and hung disks, TMR)"
bash tests/vm/run-vm.sh tests/vm/e2e-reliability.sh "$PWD/target/release/tcmu-sg" "$PWD/target/release/examples/lio"
# A multipathed SAN unit as the backing device, on 6.1 (dm told with
# fail_path) and on 7.x (DM_MPATH_PROBE_PATHS).
for k in bookworm trixie-backports; do
    section "VM end-to-end tests: a dm-multipath map as the backing device ($k's kernel)"
    TCMU_SG_VM_KERNEL=$k bash tests/vm/run-vm.sh tests/vm/e2e-mpath.sh "$PWD/target/release/tcmu-sg"
done
section "VM end-to-end tests: a JBOD of 64 LUNs on one daemon"
bash tests/vm/run-vm.sh tests/vm/e2e-jbod.sh "$PWD/target/release/tcmu-sg"
section "VM end-to-end tests: gateways in pairs (two gateway VMs, dm-multipath on a third)"
bash tests/vm/gateways.sh "$PWD/target/release/tcmu-sg"
section "VM end-to-end tests: a QEMU guest doing passthrough on tcmu-sg LUNs over iSCSI"
bash tests/vm/guest-passthrough.sh "$PWD/target/release/tcmu-sg" "$PWD/target/release/examples/lio"
section "Debian package (cargo-deb, lintian, systemd-analyze security)"
deb=$(bash packaging/build-deb.sh)
section "VM end-to-end tests: operations (the installed package, status, reload)"
bash tests/vm/run-vm.sh tests/vm/e2e-ops.sh "$PWD/$deb"
section "all passed"
