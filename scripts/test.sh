#!/usr/bin/env bash
# Runs every test of the workspace, as CI does (`.ci/run` calls this script).
#
#   scripts/test.sh        (as root)
#
# On a fresh Debian 12 machine it first installs what the tests need with
# apt-get (FUSE, attr tools, the benchmark's comparison tools), and Rust
# through rustup if cargo is missing. It must run as root: the tests keep
# file ownership, set security.capability and mount file systems.
#
# Steps (one shared debug build, so the whole run stays well under 30 min on
# two cores):
#   1. format and lint checks (cargo fmt --check, clippy -D warnings), for
#      the workspace and for the Rumk guest (rumk/, its own workspace and
#      flags), the guest's host unit tests, then its release build
#      (scripts/build-rumk.sh)
#   2. cargo test --workspace (unit, property and end-to-end tests; the
#      end-to-end tests fetch real Debian packages with apt-get download)
#   3. the benchmark scripts' smoke runs (shellcheck, then bench/ingest.sh,
#      bench/mount.sh, bench/programs.sh, bench/images.sh, bench/virtiofs.sh
#      and bench/remote.sh --smoke on a tiny corpus, with the debug builds)
# SeaweedFS (the remote tests' S3 server) runs from step 2 to the end.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/setup.sh
. "$root/scripts/setup.sh"

log() { printf '\n== %s\n' "$*"; }

need_root
install_packages
ensure_rust
ensure_cargo_deb
ensure_remote_servers

log "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The guest reads its flags from rumk/.cargo/config.toml: run from there,
# with its own target directory.
(cd rumk && cargo fmt -- --check &&
    CARGO_TARGET_DIR="$root/rumk/target" cargo clippy --all-targets --release --locked -- -D warnings &&
    CARGO_TARGET_DIR="$root/rumk/target" cargo test --lib --release --locked)
scripts/build-rumk.sh

log "tests"
# One S3 server (SeaweedFS) for the remote tests and benchmark, stopped on
# exit.
start_seaweedfs
stop_seaweedfs() { if [[ -n ${NEXUS_WEED_PID:-} ]]; then kill "$NEXUS_WEED_PID" 2>/dev/null || true; fi; }
trap stop_seaweedfs EXIT
# `cargo test` alone does not build the binaries the end-to-end tests drive.
cargo build --workspace --locked
cargo test --workspace --locked

log "benchmark smoke run"
shellcheck -x bench/*.sh scripts/*.sh .ci/run
NIP="$root/target/debug/nip" bench/ingest.sh --smoke
NIP="$root/target/debug/nip" NEXUS="$root/target/debug/nexus" bench/mount.sh --smoke
NIP="$root/target/debug/nip" NEXUS="$root/target/debug/nexus" bench/programs.sh --smoke --kernel-metadata
NIP="$root/target/debug/nip" NEXUS="$root/target/debug/nexus" bench/images.sh --smoke --switches 6
NIP="$root/target/debug/nip" NEXUS="$root/target/debug/nexus" bench/virtiofs.sh --smoke
NIP="$root/target/debug/nip" NEXUS="$root/target/debug/nexus" bench/remote.sh --smoke

log "all tests passed"
