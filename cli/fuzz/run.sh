#!/usr/bin/env bash
# Runs the configuration file's fuzz target for SECONDS (default 60) and
# prints the executions run and the crashes found.
#
#   cli/fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); `--sanitizer none` lets it
# build on the stable toolchain. Seeds are copied on first use into
# corpus/config: the shipped example (dist/nexus.kdl) as it is and with
# every setting uncommented, as cli/src/config.rs's test reads it; crashes
# land in artifacts/config/. Neither directory is committed.
set -euo pipefail

seconds=${1:-60}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

seed() {
    mkdir -p corpus/config
    cp ../../dist/nexus.kdl corpus/config/example.kdl
    sed -E 's#^// ((store|keys|mount|serve|remote) |    |\}$)#\1#' \
        ../../dist/nexus.kdl > corpus/config/uncommented.kdl
}

[[ -d corpus/config ]] || seed
# shellcheck source=scripts/fuzz-lib.sh
source "$here/../../scripts/fuzz-lib.sh"
fuzz_targets "$seconds" config
