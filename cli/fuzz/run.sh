#!/usr/bin/env bash
# Runs every fuzz target of nexus-cli for SECONDS each (default 60) and
# prints, per target, the executions run and the crashes found.
#
#   cli/fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`); `--sanitizer none` lets it
# build on the stable toolchain. Seeds are written on first use into
# corpus/TARGET: for config, the shipped example (dist/nexus.kdl) as it is
# and with every setting uncommented, as cli/src/config.rs's test reads it;
# for takeover, an offer followed by a state, as a daemon sends them, and a
# refusal. Crashes land in artifacts/TARGET/. Neither directory is
# committed.
set -euo pipefail

seconds=${1:-60}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
targets=(config takeover)

seed_config() {
    mkdir -p corpus/config
    cp ../../dist/nexus.kdl corpus/config/example.kdl
    sed -E 's#^// ((store|keys|mount|serve|remote) |    |\}$)#\1#' \
        ../../dist/nexus.kdl > corpus/config/uncommented.kdl
}

seed_takeover() {
    mkdir -p corpus/takeover
    python3 - corpus/takeover <<'PY'
import json, struct, sys
d = sys.argv[1]
def msg(kind, **fields):
    body = json.dumps(dict(format='nexus-takeover-v1', type=kind, **fields)).encode()
    return struct.pack('>I', len(body)) + body
offer = msg('offer', pid=4242, version='0.1.0', store='/var/lib/nexus',
            mountpoint='/Programs', index='/System/Index', fixed_generation=None,
            shown_generation=12, allow_other=True, suid=False, threads=4,
            cache_bytes=1 << 28, pid_file='/run/nexus.pid', log_file=None,
            kernel_metadata=True)
state = msg('state', shown_generation=12,
            held=[[40, 7, 2, 4, '6c73'], [41, 7, 1, 40, '']],
            index_paths=['', '62696e2f6c73'], fds=['fuse', 'index', 'data'])
open(d + '/offer-state', 'wb').write(offer + state)
open(d + '/refused', 'wb').write(msg('refused', reason='serves an image'))
PY
}

[[ -d corpus/config ]] || seed_config
[[ -d corpus/takeover ]] || seed_takeover
# shellcheck source=scripts/fuzz-lib.sh
source "$here/../../scripts/fuzz-lib.sh"
fuzz_targets "$seconds" "${targets[@]}"
