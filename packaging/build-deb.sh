#!/usr/bin/env bash
# Builds the Debian package (target/debian/tcmu-sg_<version>-1_<arch>.deb)
# with cargo-deb: the release binary, the systemd unit, the D-Bus policy
# and activation file, the example settings, man pages generated from the
# clap definitions, bash completion and the docs. Then runs lintian and
# prints the unit's systemd-analyze security exposure (the VM suite
# e2e-ops.sh runs systemd-analyze verify on the installed unit). Installs cargo-deb and lintian if
# missing. Prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
if ! command -v lintian >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q lintian >/dev/null
fi
cargo build --release --quiet
rm -rf target/assets
mkdir -p target/assets/man
target/release/tcmu-sg gen-man target/assets/man
gzip -9n target/assets/man/*.8
target/release/tcmu-sg gen-completions bash > target/assets/tcmu-sg.bash
rm -f target/debian/tcmu-sg_*.deb
cargo deb --no-build --strip --quiet >&2
deb=$(ls target/debian/tcmu-sg_*.deb)
# The one tag overridden is explained in packaging/debian/lintian-overrides.
echo "== lintian $deb" >&2
lintian --fail-on error,warning "$deb" >&2
echo "== systemd-analyze security (offline)" >&2
systemd-analyze security --offline=true packaging/systemd/tcmu-sg.service 2>&1 | tail -1 >&2
echo "$deb"
