#!/usr/bin/env bash
# The main job on a host without TCMU: installs what is needed, builds
# tcmu-sg, boots the bundled VM and shows a scsi_debug-backed LUN served by
# tcmu-sg.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tests/vm/setup-host.sh >/dev/null
cargo build --release --quiet
bash tests/vm/run-vm.sh tests/vm/demo-guest.sh "$PWD/target/release/tcmu-sg"
