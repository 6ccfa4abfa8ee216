#!/usr/bin/env bash
# Builds the Rumk guest kernel (rumk/, a freestanding crate outside the
# main workspace) and prints the path of the ELF image QEMU boots with
# -kernel. The recipe's build script (recipes/rumk/build.sh, which `nexus
# build rumk` runs in the build sandbox) and tests/rumk.rs run it.
#
#   scripts/build-rumk.sh            # release build, prints the image path
#
# RUMK_TARGET_DIR overrides the guest's own target directory (default
# rumk/target: never the workspace's, whose flags and profile differ; the
# sandboxed build, whose source tree is read-only, builds in its /tmp).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${RUMK_TARGET_DIR:-$root/rumk/target}
# The guest's flags come from rumk/.cargo/config.toml alone.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET CARGO_BUILD_RUSTFLAGS
cd "$root/rumk"
CARGO_TARGET_DIR=$target_dir cargo build --release --locked --quiet
echo "$target_dir/x86_64-unknown-linux-gnu/release/rumk"
