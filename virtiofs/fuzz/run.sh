#!/usr/bin/env bash
# Runs the virtio-fs request fuzz target for SECONDS (default 60) and prints
# the executions run and the crashes found.
#
#   virtiofs/fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); `--sanitizer none` lets it
# build on the stable toolchain. The corpus (corpus/requests) starts empty
# and grows from coverage; crashes land in artifacts/requests/. Neither
# directory is committed.
set -euo pipefail

seconds=${1:-60}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
t=requests
mkdir -p "corpus/$t" "artifacts/$t"
cargo fuzz build --sanitizer none -O "$t"
log=$(mktemp)
set +e
cargo fuzz run --sanitizer none -O "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1
status=$?
set -e
runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' | tail -n1 || true)
[[ -n $runs ]] || runs=$(grep -o '^#[0-9]*' "$log" | tr -d '#' | tail -n1 || true)
cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 || true)
crashes=$(find "artifacts/$t" -type f | wc -l)
if [[ $status -ne 0 ]]; then tail -n 40 "$log"; fi
rm -f "$log"
echo "$t: ${runs:-?} executions in ${seconds} s (${cov:-cov: ?}), exit $status, ${crashes} crash/timeout artifacts"
