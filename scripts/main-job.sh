#!/usr/bin/env bash
# The main job: a store at the default location with real packages grafted,
# mounted at /Programs.
#
#   scripts/main-job.sh [DEBIAN-PACKAGE...]     (as root; default: hello jq)
#
# On a fresh Debian 12 machine it installs what it needs (apt-get; Rust via
# rustup if cargo is missing), builds nip, creates the store at the embedded
# default location (/var/lib/nexus for root), downloads the given Debian
# packages with `apt-get download` and grafts the .deb files as App/Version,
# verifies the store, mounts it at /Programs (with the kernel view on Linux
# 6.12 and later; the daemon stays running; `nexus umount /Programs` ends
# it), runs hello
# from the mount, and boots a Rumk guest (`nexus build rumk`, `nexus rumk
# run`) that reads hello over virtio-fs and verifies it. Running it again is
# harmless: adding an identical package is a no-op, and an existing
# /Programs mount is replaced.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. "$root/scripts/setup.sh"

need_root
install_packages
ensure_rust

cargo build --release --locked -p nexus-cli
nip="$root/target/release/nip"
nexus="$root/target/release/nexus"

"$nip" init
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
packages=("$@")
[[ ${#packages[@]} -gt 0 ]] || packages=(hello jq)
cd "$work"
# apt-get download drops privileges to _apt: let it write here.
if id _apt >/dev/null 2>&1; then chown _apt "$work"; fi
apt-get download "${packages[@]}"
# Grafted straight from the .deb files (usr/bin/hello becomes
# hello/<version>/bin/hello), in one transaction, one new generation.
"$nip" add ./*.deb
"$nip" list
"$nip" history
"$nip" verify

# A mount left by an earlier run goes first, even one whose daemon died
# (`mountpoint` cannot stat it; /proc/mounts still lists it).
if awk '$2 == "/Programs" { found = 1 } END { exit !found }' /proc/mounts; then
    "$nexus" umount /Programs
fi
mkdir -p /Programs
# The kernel view (programs start without a round trip to the daemon)
# where the kernel has what it needs: file-backed EROFS and overlayfs
# data-only layers, Linux 6.12 and later. Older kernels get the FUSE mount
# alone, which serves the same tree.
kernel_view=()
if [[ $(printf '%s\n' 6.12 "$(uname -r)" | sort -V | head -1) == 6.12 ]]; then
    kernel_view=(--kernel-metadata)
fi
"$nexus" mount /Programs --allow-other "${kernel_view[@]}"
echo
ls -l /Programs /Programs/*/
if [[ -x /Programs/hello/Current/bin/hello ]]; then
    echo
    echo "running /Programs/hello/Current/bin/hello:"
    /Programs/hello/Current/bin/hello
    # A Rumk guest (rumk/, grafted as rumk/VERSION) boots in QEMU, reads
    # hello over virtio-fs and verifies its BLAKE3 against the store's.
    echo
    echo "a Rumk guest verifying hello over virtio-fs:"
    # This job already runs as root from this checkout: vouch for it even
    # when it belongs to the user who ran sudo (nexus build refuses, as
    # root, sources another user owns).
    "$nexus" build rumk --source "$root" --trust-dirs
    "$nexus" rumk run -- hello/Current/bin/hello rumk/Current/boot/rumk
fi
