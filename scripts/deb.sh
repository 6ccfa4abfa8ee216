#!/usr/bin/env bash
# Builds the Debian package `nexus` with cargo-deb and prints its path.
#
#   scripts/deb.sh [--profile release|dev] [--output DIR]
#
# --profile release (the default) builds optimised binaries, as shipped.
# --profile dev packages the debug build (cargo build --workspace), without
# a second build: what tests/packaging.rs checks in CI (cargo-deb warns that
# dev packages are not for release; they are not).
#
# The package holds nip and nexus, their man pages and bash/zsh/fish
# completions (written by the nexus-docs binary from the clap definitions),
# /etc/nexus/nexus.kdl, /etc/profile.d/nexus.sh and
# /etc/ld.so.conf.d/zz-nexus.conf (dist/README.md), the systemd units
# (dist/systemd), the mount helper /usr/sbin/mount.fuse.nexus and the
# vhost-user backend /usr/libexec/nexus-virtiofsd (links to nexus) with its
# QEMU description (dist/qemu). Install it with
# `dpkg -i FILE`, remove it with `dpkg -r nexus` (`dpkg -P nexus` also
# removes /etc/nexus/nexus.kdl). Needs cargo-deb (scripts/setup.sh's
# ensure_cargo_deb installs it).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

profile=release output="$root/target/debian"
while [[ $# -gt 0 ]]; do
    case $1 in
        --profile) profile=$2; shift 2 ;;
        --output) output=$2; shift 2 ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "$0: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $profile in
    release) build=(--release) dir=release ;;
    dev) build=() dir=debug ;;
    *) echo "$0: --profile is release or dev" >&2; exit 2 ;;
esac
if ! cargo deb --version >/dev/null 2>&1; then
    echo "$0: cargo-deb is missing: cargo install cargo-deb --locked (scripts/setup.sh does)" >&2
    exit 1
fi

target=${CARGO_TARGET_DIR:-$root/target}
cargo build --locked -p nexus-cli --bins "${build[@]}" >&2
docs="$target/$dir/docs"
rm -rf "$docs"
"$target/$dir/nexus-docs" "$docs" >/dev/null
# Debian policy wants man pages gzipped; cargo-deb compresses only assets it
# did not find under target/. -n: no name or time stamp, reproducible.
gzip -9n "$docs"/man/man1/*.1
mkdir -p "$output"
# Quiet unless it fails; the last line of its output is the package path.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! cargo deb -p nexus-cli --no-build --profile "$profile" --fast --output "$output" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
tail -n 1 "$log"
