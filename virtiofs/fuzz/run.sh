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
# shellcheck source=scripts/fuzz-lib.sh
source "$here/../../scripts/fuzz-lib.sh"
fuzz_targets "$seconds" requests
