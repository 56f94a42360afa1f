#!/usr/bin/env bash
# Fetches and unpacks a Debian kernel for the VM harness, and prints its
# directory (boot/vmlinuz-VERSION and lib/modules/VERSION, modules
# uncompressed, modules.dep made). Idempotent: a second run only prints.
#
#   kernel.sh [bookworm|bullseye|trixie|trixie-backports]   (default bookworm)
#
#   bookworm          6.1, from this machine's own apt sources
#   bullseye          5.10 (with bullseye-security)
#   trixie            6.12
#   trixie-backports  the newest backported kernel (7.x today)
#
# Kernels other than bookworm's come from Debian's archive through a
# private apt list and state under the cache; the machine's apt
# configuration is never changed. From 6.12 the packages are usr-merged
# and their modules xz-compressed; 7.x splits the kernel into
# linux-binary-* (vmlinuz under usr/lib/modules/VERSION/) and
# linux-modules-*. busybox's insmod in the initramfs wants plain .ko files,
# so every module is decompressed and modules.dep is made again.
#
#   TCMU_SG_VM_CACHE  where kernels are unpacked (default /var/cache/tcmu-sg)
set -euo pipefail
suite=${1:-bookworm}
cache=${TCMU_SG_VM_CACHE:-/var/cache/tcmu-sg}
case "$suite" in
    bookworm) dir=$cache/kernel ;;
    bullseye|trixie|trixie-backports) dir=$cache/kernel-$suite ;;
    *) echo "kernel.sh: unknown kernel '$suite' (bookworm, bullseye, trixie, trixie-backports)" >&2; exit 2 ;;
esac
if ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1; then
    echo "$dir"
    exit 0
fi
mkdir -p "$cache"
work=$cache/fetch-$suite
rm -rf "$work" "$dir.tmp"
mkdir -p "$work/debs" "$dir.tmp"
if [ "$suite" = bookworm ]; then
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6\.1/{print $2; exit}')
    [ -n "$pkg" ] || { echo "kernel.sh: no linux-image-6.1 package found" >&2; exit 1; }
    pkgs=("$pkg")
    (cd "$work/debs" && apt-get download "$pkg" >/dev/null 2>&1)
else
    # A private apt: its own sources list, package lists and cache.
    key=/usr/share/keyrings/debian-archive-keyring.gpg
    deb() { echo "deb [signed-by=$key] http://deb.debian.org/$1 $2 main"; }
    case "$suite" in
        bullseye) { deb debian bullseye; deb debian-security bullseye-security; } ;;
        trixie) { deb debian trixie; deb debian-security trixie-security; } ;;
        trixie-backports) { deb debian trixie; deb debian trixie-backports; } ;;
    esac > "$work/sources.list"
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/dev/null
              -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
              -o Dir::State::status=/dev/null -o APT::Get::List-Cleanup=0)
    apt-get "${apt_opts[@]}" update >/dev/null 2>&1 \
        || { echo "kernel.sh: apt-get update for $suite failed" >&2; exit 1; }
    # The metapackage's newest version (from backports for trixie-backports).
    ver=$(apt-cache "${apt_opts[@]}" madison linux-image-amd64 | awk '{print $3}' |
          { if [ "$suite" = trixie-backports ]; then grep bpo; else grep -v bpo; fi; } |
          sort -V | tail -1)
    [ -n "$ver" ] || { echo "kernel.sh: no linux-image-amd64 in $suite" >&2; exit 1; }
    pkg=$(apt-cache "${apt_opts[@]}" depends "linux-image-amd64=$ver" |
          awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$pkg" ] || { echo "kernel.sh: linux-image-amd64 $ver names no kernel" >&2; exit 1; }
    # 7.x: the image is a metapackage of linux-binary-*, linux-modules-* and
    # linux-base-* (modules.builtin and the config).
    mapfile -t pkgs < <({ echo "$pkg"; apt-cache "${apt_opts[@]}" depends "$pkg" |
          awk '/Depends: linux-(base|binary|modules)-[0-9]/{print $2}'; } | sort -u)
    echo "kernel.sh: fetching ${pkgs[*]} ($suite, linux-image-amd64 $ver)" >&2
    (cd "$work/debs" && apt-get "${apt_opts[@]}" download "${pkgs[@]}" >/dev/null 2>&1) \
        || { echo "kernel.sh: apt-get download ${pkgs[*]} failed" >&2; exit 1; }
fi
[ "$suite" = bookworm ] && echo "kernel.sh: fetching ${pkgs[*]}" >&2
for d in "$work"/debs/*.deb; do dpkg -x "$d" "$dir.tmp"; done
# Usr-merged packages: modules under usr/lib/modules.
if [ -d "$dir.tmp/usr/lib/modules" ]; then
    mkdir -p "$dir.tmp/lib"
    mv "$dir.tmp/usr/lib/modules" "$dir.tmp/lib/modules"
fi
kver=$(ls "$dir.tmp/lib/modules" | head -1)
[ -n "$kver" ] || { echo "kernel.sh: no modules in ${pkgs[*]}" >&2; exit 1; }
mkdir -p "$dir.tmp/boot"
if [ ! -e "$dir.tmp/boot/vmlinuz-$kver" ]; then
    # 7.x: the kernel image beside its modules.
    mv "$dir.tmp/lib/modules/$kver/vmlinuz" "$dir.tmp/boot/vmlinuz-$kver" \
        || { echo "kernel.sh: no vmlinuz for $kver" >&2; exit 1; }
fi
find "$dir.tmp/lib/modules/$kver" -name '*.ko.xz' -print0 | xargs -0 -r -P 2 -n 64 xz -d
find "$dir.tmp/lib/modules/$kver" -name '*.ko.zst' -print0 | xargs -0 -r -P 2 -n 64 zstd -q -d --rm
depmod -b "$dir.tmp" "$kver"
rm -rf "$dir" "$work"
mv "$dir.tmp" "$dir"
echo "$dir"
