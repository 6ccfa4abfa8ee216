#!/usr/bin/env bash
# Runs every fuzz target of nexus-remote for SECONDS each (default 60) and
# prints, per target, the executions run and the crashes found.
#
#   remote/fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); `--sanitizer none` lets it
# build on the stable toolchain. Seeds (well-formed and cut requests for
# fetcher_request; manifest and meta start empty) are written on first use
# into corpus/TARGET; crashes land in artifacts/TARGET/. Neither directory is committed.
set -euo pipefail

seconds=${1:-60}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
targets=(fetcher_request manifest meta)

seed() {
    for t in "${targets[@]}"; do mkdir -p "corpus/$t"; done
    python3 - corpus/fetcher_request <<'PY'
import struct, sys
name = b'0123456789abcdef0123456789abcdef.pack'
def req(remote, start, length, n):
    return struct.pack('<qQIB', remote, start, length, len(n)) + n
d = sys.argv[1]
open(d + '/one', 'wb').write(req(1, 0, 4096, name))
open(d + '/two', 'wb').write(req(1, 0, 4096, name) + req(2, 1 << 40, 1 << 26, b'../catalog.db'))
open(d + '/cut', 'wb').write(req(1, 0, 4096, name)[:30])
PY
}

[[ -d corpus/fetcher_request ]] || seed
# shellcheck source=scripts/fuzz-lib.sh
source "$here/../../scripts/fuzz-lib.sh"
fuzz_targets "$seconds" "${targets[@]}"
