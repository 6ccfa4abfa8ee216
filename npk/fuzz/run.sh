#!/usr/bin/env bash
# Runs every fuzz target of nexus-npk for SECONDS each (default 60) and
# prints, per target, the executions run and the crashes found.
#
#   npk/fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); `--sanitizer none` lets it
# build on the stable toolchain. Seeds (a signed and an unsigned .npk of a
# small tree, and the body and trailer cut out of it) are made on first use
# with the nip binary (NIP, default target/debug/nip) into corpus/TARGET;
# crashes land in artifacts/TARGET/. Neither directory is committed.
set -euo pipefail

seconds=${1:-60}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
nip=${NIP:-$here/../../target/debug/nip}
cd "$here"
targets=(body archive)

seed() {
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    mkdir -p "$work/tool/1.0/bin"
    printf '#!/bin/sh\necho hi\n' > "$work/tool/1.0/bin/tool"
    chmod 4755 "$work/tool/1.0/bin/tool"
    ln -s tool "$work/tool/1.0/bin/link"
    ln "$work/tool/1.0/bin/tool" "$work/tool/1.0/bin/hard"
    head -c 300000 /dev/urandom > "$work/tool/1.0/data"
    "$nip" --store "$work/s" init >/dev/null
    "$nip" --store "$work/s" add "$work/tool/1.0" >/dev/null
    "$nip" --store "$work/s" key generate fuzz >/dev/null
    "$nip" --store "$work/s" pack tool/1.0 --key fuzz -o "$work/signed.npk" >/dev/null
    "$nip" --store "$work/s" pack tool/1.0 --unsigned -o "$work/unsigned.npk" >/dev/null
    for t in "${targets[@]}"; do mkdir -p "corpus/$t"; done
    cp "$work/signed.npk" "$work/unsigned.npk" corpus/archive/
    # The body frame and the trailer, located through the manifest.
    python3 - "$work/signed.npk" corpus/body <<'PY'
import struct, sys
data = open(sys.argv[1], 'rb').read()
m = len(data) - 264
off, ln = struct.unpack('<QQ', data[m + 64:m + 80])
open(sys.argv[2] + '/body.zst', 'wb').write(data[off:off + ln])
open(sys.argv[2] + '/trailer', 'wb').write(data[m:])
PY
    if command -v zstd >/dev/null; then
        zstd -q -d -c corpus/body/body.zst > corpus/body/body.raw
    fi
}

[[ -d corpus/body ]] || seed
# shellcheck source=scripts/fuzz-lib.sh
source "$here/../../scripts/fuzz-lib.sh"
fuzz_targets "$seconds" "${targets[@]}"
